"""Ditto (Li et al. 2021, "Ditto: Fair and Robust Federated Learning Through Personalization").

Every client keeps a personal model v_k next to the global one. In a round a selected client
(1) trains the global model as in FedAvg, and (2) trains its personal model on the objective

    F_k(v) + (lambda / 2) ||v - w_t||^2,

w_t being the global model it received, by the same local SGD (same learning rate and number of
steps, a separate batch order). Only (1) goes to the server, so the global model follows FedAvg
exactly; lambda interpolates between purely local models (0) and the global model (large).

Personal models are client state (the `personal` entry of the `ClientStateStore`); a client's v_k
starts from the global model of the first round it takes part in (the paper starts all v_k from
w_0; this is the same for clients of the first round and saves storing models for clients never
sampled). Evaluation scores each client's personal model on its own test split (a client not yet
sampled uses the current global model, its would-be starting point); an unseen client runs (2)
from the global model for `finetune_steps` steps.
"""

from __future__ import annotations

from torch import Tensor

from fedtorch.aggregators import Aggregator
from fedtorch.client import ClientUpdate
from fedtorch.client_state import ClientStateStore
from fedtorch.errors import check_number
from fedtorch.runner import ClientContext
from fedtorch.strategies.fedprox import ProximalHooks
from fedtorch.strategies.personalization import PersonalizedStrategy

PERSONAL = "personal"


class Ditto(PersonalizedStrategy):
    """Ditto with FedAvg as the global solver.

    Args:
        lam: lambda, the pull of the personal models towards the global model (the paper tunes it
            in {0.01, 0.1, 1, 2}); local SGD is stable for lam * trainer.lr < 2.
        finetune_steps: an unseen client's personal-model steps.
        server_lr: FedAvg's server step.
        aggregator: reducer of the global-model deltas (robust aggregators compose).
        weighted: sample-weighted (FedAvg) or uniform mean.
    """

    name = "ditto"

    def __init__(
        self,
        lam: float = 0.1,
        finetune_steps: int = 20,
        server_lr: float = 1.0,
        aggregator: Aggregator | None = None,
        weighted: bool = True,
    ) -> None:
        super().__init__(None, finetune_steps, server_lr=server_lr, aggregator=aggregator, weighted=weighted)
        self.lam = check_number("strategy.lam", lam, 0.0)

    # -- client half ------------------------------------------------------------------------------
    def local_update(self, client: ClientContext) -> ClientUpdate:
        # (1) the global model, as in FedAvg: this is what the server receives.
        update = client.train()
        # (2) the personal model, by the same local SGD (same steps, its own batch order) on
        # F_k(v) + lam/2 ||v - w_t||^2. `update.delta` is its own tensor, so the worker model is free.
        w_t = client.start  # unchanged until the round's server step
        v_k = client.state.get(PERSONAL, default=lambda: w_t.clone())
        hooks = ProximalHooks(self.lam, anchor=client.parameter_views(w_t))
        client.train(start=v_k, hooks=hooks, stream="ditto_batches", max_steps=max(update.num_steps, 1))
        client.state.put(PERSONAL, client.trained_weights())  # the trained personal model, exactly
        return update

    # -- personalization ------------------------------------------------------------------------
    def personal_model(self, client: ClientContext) -> Tensor:
        stored = client.state.get(PERSONAL)
        return client.start if stored is None else stored

    def adapt(self, client: ClientContext) -> Tensor:
        hooks = ProximalHooks(self.lam, anchor=client.parameter_views(client.start))
        return client.fine_tune(client.start, self.finetune_steps, hooks=hooks)

    def personal_vector(self, client_id: int, global_vector: Tensor, store: ClientStateStore) -> Tensor:
        """Client's personal model on the device (the global model for a client never sampled)."""
        stored = store.get(client_id, PERSONAL, global_vector.device)
        return global_vector if stored is None else stored
