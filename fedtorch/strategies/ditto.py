"""Ditto (Li et al. 2021, "Ditto: Fair and Robust Federated Learning Through Personalization").

Every client keeps a personal model v_k next to the global one. In a round a selected client
(1) trains the global model as in FedAvg, and (2) trains its personal model on the objective

    F_k(v) + (lambda / 2) ||v - w_t||^2,

w_t being the global model it received, by the same local SGD (same learning rate and number of
steps, a separate batch order). Only (1) goes to the server, so the global model follows FedAvg
exactly; lambda interpolates between purely local models (0) and the global model (large).

Personal models live on the CPU between a client's turns; a client's v_k starts from the global
model of the first round it takes part in (the paper starts all v_k from w_0; this is the same
for clients of the first round and saves storing models for clients never sampled). Evaluation
reports each client's personal model on its own test split (a client not yet sampled uses the
current global model, its would-be starting point).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

from fedtorch.aggregators import Aggregator
from fedtorch.client import ClientHooks, ClientUpdate
from fedtorch.seeding import torch_generator
from fedtorch.strategies.base import Strategy
from fedtorch.strategies.client_state import ClientStateStore
from fedtorch.strategies.fedprox import ProximalHooks
from fedtorch.strategies.personalization import evaluate_per_client

if TYPE_CHECKING:
    from fedtorch.simulation import Simulation


class _DittoHooks(ClientHooks):
    """After the client's global-model training, train its personal model (worker model reused)."""

    def __init__(self, strategy: Ditto, round_idx: int, client_id: int) -> None:
        self.strategy = strategy
        self.round_idx = round_idx
        self.client_id = client_id

    def on_train_end(self, update: ClientUpdate) -> None:
        # `update.delta` is already its own tensor, so the worker model is free for the second pass.
        self.strategy.train_personal(self.round_idx, self.client_id, update.num_steps)


class Ditto(Strategy):
    """Ditto with FedAvg as the global solver.

    Args:
        lam: lambda, the pull of the personal models towards the global model (the paper tunes it
            in {0.01, 0.1, 1, 2}); local SGD is stable for lam * trainer.lr < 2.
        server_lr: FedAvg's server step.
        aggregator: reducer of the global-model deltas (robust aggregators compose).
        weighted: sample-weighted (FedAvg) or uniform mean.
    """

    name = "ditto"

    def __init__(
        self, lam: float = 0.1, server_lr: float = 1.0, aggregator: Aggregator | None = None, weighted: bool = True
    ) -> None:
        if lam < 0:
            raise ValueError(f"strategy.lam={lam} must be >= 0")
        super().__init__(torch.optim.SGD, server_lr=server_lr, aggregator=aggregator, weighted=weighted)
        self.lam = float(lam)
        self.personal = ClientStateStore()

    def attach(self, sim: Simulation) -> None:
        self.sim = sim

    def merge(self, group: dist.ProcessGroup | None = None) -> None:
        super().merge(group)
        self.personal.sync(group)  # a client may train on another process next time

    def client_hooks(self, round_idx: int, client_id: int) -> ClientHooks:
        return _DittoHooks(self, round_idx, client_id)

    def train_personal(self, round_idx: int, client_id: int, steps: int) -> None:
        """`steps` local steps on F_k(v) + lam/2 ||v - w_t||^2 from the client's personal model."""
        sim = self.sim
        w_t = sim.global_vector  # unchanged until the round's server step
        v_k = self.personal.get(client_id, w_t.device, default=lambda: w_t.clone())
        anchor = self.layout.split(w_t)[: len(sim.flat.params)]
        fed = sim.federation
        sim.trainer.train(
            sim.flat,
            v_k,
            fed.train_x,
            fed.train_y,
            fed.client_indices[client_id],
            torch_generator(sim.seed, "ditto_batches", round_idx, client_id),
            sim.loss_fn,
            client_id=client_id,
            hooks=ProximalHooks(self.lam, anchor=anchor),
            max_steps=max(steps, 1),
        )
        self.personal.put(client_id, sim.flat.vector)  # the trained personal model, exactly

    def personal_vector(self, client_id: int) -> torch.Tensor:
        """Client's personal model on the device (the global model for a client never sampled)."""
        sim = self.sim
        stored = self.personal.get(client_id, sim.global_vector.device)
        return sim.global_vector if stored is None else stored

    def evaluate(self, sim: Simulation) -> dict[str, float]:
        return evaluate_per_client(sim, self.personal_vector, prefix="personal")

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "personal": self.personal.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.personal.load_state_dict(state["personal"])
