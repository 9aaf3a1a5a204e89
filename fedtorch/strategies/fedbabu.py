"""FedBABU (Oh, Kim and Yun 2022, "FedBABU: Toward Enhanced Representation for Federated Image
Classification", ICLR).

Body Aggregation and Body Update: the head (the last layer) keeps its random initialization and is
frozen for the whole of federated training; clients train and send only the body, and the server
averages bodies:

    client k:  phi_k <- local SGD on F_k(phi, h_0) over phi  (h_0 frozen);   sends phi_k - phi_t
    server:    phi_{t+1} = phi_t + mean_k (phi_k - phi_t)

Training a shared head on heterogeneous clients degrades the representation (the paper's
analysis); a fixed random head keeps the body's features general. Personalization happens only at
evaluation: every client fine-tunes the global model on its own train data for `finetune_steps`
steps, the whole model (`finetune: all`, the paper's protocol) or only the head (`finetune: head`),
and predicts with the result. Nothing is kept between turns, so an unseen client personalizes
exactly as a seen one. With `head: []` (no frozen head) the training is FedAvg's.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from fedtorch.aggregators import Aggregator
from fedtorch.client import ClientUpdate
from fedtorch.errors import check_choice
from fedtorch.runner import ClientContext
from fedtorch.sharing import body_set
from fedtorch.strategies.personalization import PersonalizedStrategy


class FedBABU(PersonalizedStrategy):
    """Body-only FedAvg with a frozen random head; fine-tuning for evaluation.

    Args:
        head: parameter-name prefixes of the frozen head; None: the last module with parameters.
        finetune: what evaluation fine-tunes: `all` (the paper) or `head`.
        finetune_steps: local steps of the evaluation fine-tuning (the paper: a few epochs).
        server_lr, aggregator, weighted: FedAvg's server half on the body.
    """

    name = "fedbabu"
    keeps_client_state = False

    def __init__(
        self,
        head: Sequence[str] | None = None,
        finetune: str = "all",
        finetune_steps: int = 20,
        server_lr: float = 1.0,
        aggregator: Aggregator | None = None,
        weighted: bool = True,
    ) -> None:
        super().__init__(body_set(head), finetune_steps, server_lr=server_lr, aggregator=aggregator, weighted=weighted)
        self.head = None if head is None else [str(h) for h in head]
        self.finetune = check_choice("strategy.finetune", finetune, ("all", "head"))

    def local_update(self, client: ClientContext) -> ClientUpdate:
        return self.send(client.train(trainable=self.shared.parameters))

    def personal_model(self, client: ClientContext) -> Tensor:
        trainable = self.local.parameters if self.finetune == "head" else None
        return client.fine_tune(client.start, self.finetune_steps, trainable=trainable)

    def adapt(self, client: ClientContext) -> Tensor:
        return self.personal_model(client)
