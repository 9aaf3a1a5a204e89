"""FedAvg-FT: FedAvg, then every client fine-tunes the global model on its own data before
predicting. The baseline every personalized-FL table should have (Wang et al. 2019,
"Federated Evaluation of On-device Personalization"; Yu, Bagdasaryan and Shmatikov 2020,
"Salvaging Federated Learning by Local Adaptation"): a pFL method that does not beat it gains
nothing from its machinery.

Training is FedAvg's exactly (plain local training: the vectorized backend runs it). At every
evaluation client k personalizes the current global model w_t with `finetune_steps` local steps of
the trainer's optimizer on its train data, and is scored on its own test split with the result:

    v_k = w_t - eta sum_{s < finetune_steps} grad F_k(v_k^s; batch_s)   (for plain SGD)

A seen and an unseen client personalize the same way; nothing is kept between rounds.
"""

from __future__ import annotations

from torch import Tensor

from fedtorch.aggregators import Aggregator
from fedtorch.runner import ClientContext
from fedtorch.strategies.personalization import PersonalizedStrategy


class FedAvgFT(PersonalizedStrategy):
    """FedAvg with local fine-tuning for evaluation.

    Args:
        finetune_steps: local steps of fine-tuning before a client predicts.
        server_lr, aggregator, weighted: FedAvg's server half.
    """

    name = "fedavg_ft"
    changes_local_training = False  # FedAvg's training; fine-tuning happens only at evaluation
    keeps_client_state = False

    def __init__(
        self,
        finetune_steps: int = 20,
        server_lr: float = 1.0,
        aggregator: Aggregator | None = None,
        weighted: bool = True,
    ) -> None:
        super().__init__(None, finetune_steps, server_lr=server_lr, aggregator=aggregator, weighted=weighted)

    def personal_model(self, client: ClientContext) -> Tensor:
        return client.fine_tune(client.start, self.finetune_steps)

    def adapt(self, client: ClientContext) -> Tensor:
        return self.personal_model(client)
