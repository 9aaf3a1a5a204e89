"""FedRep (Collins et al. 2021, "Exploiting Shared Representations for Personalized Federated
Learning", Algorithm 1).

Clients share a representation (the body phi) and keep their own heads h_k. In its turn a client
first fits its head to the current representation, then improves the representation with its head
fixed, and sends only the body:

    client k:  h_k  <- `head_epochs` epochs of SGD on F_k(phi_t, h) over h  (phi_t frozen)
               phi_k <- the trainer's local epochs of SGD on F_k(phi, h_k) over phi  (h_k frozen)
               sends phi_k - phi_t
    server:    phi_{t+1} = phi_t + mean_k (phi_k - phi_t)

The paper uses 10 head epochs and 1 body epoch (`trainer.epochs=1`). Heads are client state (the
`local` entry); a first turn starts from the global head (the initialization: the server never
changes it). Frozen means no gradient, so no optimizer (momentum, weight decay) moves it. With
`head: []` (no personal head, everything shared) and `head_epochs: 0` the body phase is plain
local training of the whole model: FedRep is then FedAvg, bit for bit.

Evaluation: client k predicts with the global body and its own head; an unseen client learns a
head for `finetune_steps` steps on the frozen global body (the paper's new-client protocol).
"""

from __future__ import annotations

from collections.abc import Sequence

from fedtorch.aggregators import Aggregator
from fedtorch.client import ClientUpdate
from fedtorch.errors import check_int
from fedtorch.runner import ClientContext
from fedtorch.sharing import body_set
from fedtorch.strategies.personalization import PersonalizedStrategy


class FedRep(PersonalizedStrategy):
    """Shared body, personal heads, trained in alternation (heads first).

    Args:
        head: parameter-name prefixes of the personal head; None: the last module with parameters;
            [] no head (everything shared).
        head_epochs: epochs of head training per turn (paper: 10); the body gets the trainer's epochs.
        finetune_steps: an unseen client's head-learning steps.
        server_lr, aggregator, weighted: FedAvg's server half on the body.
    """

    name = "fedrep"

    def __init__(
        self,
        head: Sequence[str] | None = None,
        head_epochs: int = 10,
        finetune_steps: int = 20,
        server_lr: float = 1.0,
        aggregator: Aggregator | None = None,
        weighted: bool = True,
    ) -> None:
        super().__init__(body_set(head), finetune_steps, server_lr=server_lr, aggregator=aggregator, weighted=weighted)
        self.head = None if head is None else [str(h) for h in head]
        self.head_epochs = check_int("strategy.head_epochs", head_epochs, 0)

    def local_update(self, client: ClientContext) -> ClientUpdate:
        start = self.with_local(client, client.start)
        if self.head_epochs and self.local.parameters:
            # Phase 1: the head alone, on its own batch stream, body frozen. Only the new head is
            # kept: the body (running statistics included) restarts from the global one, so the
            # update's delta is relative to the global body.
            steps = self.head_epochs * client.epoch_steps
            trained_head = client.fine_tune(start, steps, trainable=self.local.parameters, stream="fedrep_head")
            start = self.local.put(client.start, self.local.take(trained_head))
        # Phase 2: the body alone from the new head.
        update = client.train(start=start, trainable=self.shared.parameters)
        self.keep_local(client, start)  # the head did not move in phase 2
        return self.send(update)
