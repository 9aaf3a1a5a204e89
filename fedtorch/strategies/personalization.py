"""What every personalized strategy shares: which parameters leave a client, and how a client gets
the model it predicts with.

A personalized FL method answers three questions, and this base class gives each one a place:

1. *What is shared?* A `fedtorch.sharing.ParameterSet` (`shared`): FedAvg shares everything, FedPer
   and FedRep the body, LG-FedAvg the head, FedBN everything but the normalization layers. An
   update carries zeros outside the set and the set's mask (`ClientUpdate.sent`), so the byte meter
   counts and a compressor encodes only what is sent, and the server steps only on the set.
2. *What does a client keep?* Its own values of the unshared entries ("local" in the client's
   `ClientStateStore` entries; `with_local` overlays them on the global model), or whatever the
   method keeps (Ditto's and pFedMe's personal models, APFL's model and mixing weight).
3. *Which model does a client predict with?* `personal_model(client)`: for a client that has
   trained, from what it keeps and the current global model (read-only: evaluation never changes a
   client's state); `adapt(client)`: for a client that never trained (an unseen client), the
   method's own personalization step from the global model on the client's train data (fine-tune
   the local part for `finetune_steps` steps by default; Per-FedAvg's one-step adaptation; FedBABU's
   fine-tuning; pFedMe's inner problem; Ditto's proximal training).

Evaluation (`fedtorch.simulation.Simulation.evaluate`) calls both with a `ClientContext` of the
client, so the personalization step uses the same data, batches and local optimizer as training.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from fedtorch.aggregators import Aggregator
from fedtorch.client import ClientUpdate
from fedtorch.client_state import ClientStateStore
from fedtorch.errors import check_int
from fedtorch.runner import ClientContext
from fedtorch.sharing import ParameterSet, SharedParameters, body_set, head_set
from fedtorch.strategies.base import ServerOptimizerFactory, Strategy, StrategyContext

#: The client state entry holding a client's own values of the unshared entries.
LOCAL = "local"


class PersonalizedStrategy(Strategy):
    """Base of the personalized strategies: a shared parameter set, local parts, personal models.

    Args:
        shared: the entries that leave the client (default: all of them).
        finetune_steps: local steps of the personalization step (`adapt`, and the fine-tuning
            methods' `personal_model`).
        server_optimizer, server_lr, aggregator, weighted: the FedOpt server half (`Strategy`).
    """

    personalized = True
    changes_local_training = True
    keeps_client_state = True

    def __init__(
        self,
        shared: ParameterSet | None = None,
        finetune_steps: int = 20,
        server_optimizer: ServerOptimizerFactory | None = None,
        server_lr: float = 1.0,
        aggregator: Aggregator | None = None,
        weighted: bool = True,
    ) -> None:
        super().__init__(
            server_optimizer or torch.optim.SGD, server_lr=server_lr, aggregator=aggregator, weighted=weighted
        )
        self.sharing = shared or ParameterSet()
        self.finetune_steps = check_int("strategy.finetune_steps", finetune_steps, 0)

    def setup(self, context: StrategyContext, global_vector: Tensor) -> None:
        super().setup(context, global_vector)
        self.shared: SharedParameters = self.sharing.resolve(context.layout, context.module_types)
        self.local: SharedParameters = self.shared.complement()
        self.partial = not self.shared.everything
        # One device copy of the mask, referenced by every update (no per-update allocation).
        self.sent_mask = self.shared.mask.to(context.device) if self.partial else None

    # -- helpers of the client half ------------------------------------------------------------
    def with_local(self, client: ClientContext, vector: Tensor) -> Tensor:
        """`vector` with the client's own values of the unshared entries (as is if it has none)."""
        if not self.partial:
            return vector
        local = client.state.get(LOCAL)
        return vector if local is None else self.local.put(vector, local)

    def keep_local(self, client: ClientContext, weights: Tensor) -> None:
        """Store the client's values of the unshared entries of `weights`."""
        if self.partial:
            client.state.put(LOCAL, self.local.take(weights))

    def send(self, update: ClientUpdate) -> ClientUpdate:
        """Only the shared entries leave the client: zero the rest and say so (`update.sent`)."""
        if self.partial:
            self.shared.keep_only(update.delta)
            update.sent = self.sent_mask
        return update

    # -- the server half --------------------------------------------------------------------------
    def apply_aggregate(self, round_idx: int, aggregate: Tensor) -> None:
        # The server holds only the shared entries: nothing else moves (not even DP noise).
        if self.partial:
            self.shared.keep_only(aggregate)
        super().apply_aggregate(round_idx, aggregate)

    # -- personalization ------------------------------------------------------------------------
    def personal_model(self, client: ClientContext) -> Tensor:
        """The model client `client` predicts with: the global model (`client.start`) with its own
        local part. Must not change the client's state."""
        return self.with_local(client, client.start)

    def adapt(self, client: ClientContext) -> Tensor:
        """The personalization step of a client that never trained: `finetune_steps` local steps on
        its unshared entries from the global model (all entries when everything is shared)."""
        trainable = self.local.parameters if self.partial else None
        return client.fine_tune(client.start, self.finetune_steps, trainable=trainable)

    def personal_vector(self, client_id: int, global_vector: Tensor, store: ClientStateStore) -> Tensor:
        """Client `client_id`'s model from the store alone: global model + its local part."""
        if not self.partial:
            return global_vector
        local = store.get(client_id, LOCAL, global_vector.device)
        return global_vector if local is None else self.local.put(global_vector, local)


class PartialSharing(PersonalizedStrategy):
    """FedAvg on the shared entries; every client trains the whole model from the global shared
    entries and its own unshared ones, keeps the latter, and sends the change of the former.

    FedPer (shared body), LG-FedAvg (shared head) and FedBN (all but the norm layers) are this rule
    with different parameter sets. When everything is shared it is FedAvg, bit for bit.
    """

    name = "partial_sharing"

    def local_update(self, client: ClientContext) -> ClientUpdate:
        update = client.train(start=self.with_local(client, client.start))
        # The shared entries of the start were the global ones, so the delta of the shared part is
        # relative to the global model, as the server needs it.
        self.keep_local(client, client.trained_weights())
        return self.send(update)


class HeadBodySplit(PartialSharing):
    """Partial sharing of one side of a head/body split of the model (FedPer shares the body,
    LG-FedAvg the head); `head` names the head by parameter-name prefixes (None: the last module
    with parameters)."""

    shares_head: bool = False

    def __init__(
        self,
        head: Sequence[str] | None = None,
        finetune_steps: int = 20,
        server_lr: float = 1.0,
        aggregator: Aggregator | None = None,
        weighted: bool = True,
    ) -> None:
        shared = head_set(head) if self.shares_head else body_set(head)
        super().__init__(shared, finetune_steps, server_lr=server_lr, aggregator=aggregator, weighted=weighted)
        self.head = None if head is None else [str(h) for h in head]
