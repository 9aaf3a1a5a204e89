"""The strategy core shared by every algorithm: a server optimizer stepping on pseudo-gradients.

Following Reddi et al. 2021 ("Adaptive Federated Optimization") and FLSim, the server reduces the
client deltas (the update pipeline's aggregator, the data-size-weighted mean by default), treats
the negative aggregate as a gradient, and steps a real `torch.optim` optimizer on the global
weights: SGD(lr=1) is exactly FedAvg (McMahan et al. 2017), SGD with momentum is FedAvgM, Adam is
FedAdam. The optimizer's `state_dict()` checkpoints the server state for free.

A strategy has two halves, written together in one file per algorithm:

- the client half, `local_update(client)`: what a client does in its turn, given only its
  `fedtorch.runner.ClientContext` (its data, what the server sent, its own state). The default
  trains plainly from the downloaded weights.
- the server half: `configure_round` (what a round sends besides the model), `client_weight`
  (how much an update counts), `on_update` (per-update bookkeeping), `apply` (how the reduced
  update moves the global model), and for personalized methods `personal_vector`.

A strategy gets a frozen `StrategyContext` at set-up (the clients' number and sizes, the local
optimizer's settings, the parameter layout) and never the simulation. It declares what it needs
(class attributes below); `fedtorch.compatibility` reads the declarations and refuses, in one
line, what cannot work (secure aggregation under a strategy that reads individual updates, ...).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from fedtorch.aggregators import Aggregator, WeightedMean
from fedtorch.client import ClientUpdate, OptimizerSettings
from fedtorch.client_state import ClientStateStore
from fedtorch.errors import check_number
from fedtorch.params import VectorLayout
from fedtorch.runner import ClientContext

ServerOptimizerFactory = Callable[..., torch.optim.Optimizer]


@dataclass(frozen=True)
class StrategyContext:
    """What a strategy may know about the run, fixed at set-up.

    Attributes:
        num_clients: K, the size of the federation.
        client_sizes: n_k of every client (read-only).
        layout: where each parameter lives in the flat weight vector.
        local_optimizer: the clients' optimizer (lr, momentum, nesterov, ...).
        device: where the global weights live.
        seed: the run's root seed.
        module_types: module name -> class of the model's submodules (`fedtorch.sharing.module_types`),
            for parameter sets chosen by module type (FedBN's normalization layers).
    """

    num_clients: int
    client_sizes: np.ndarray
    layout: VectorLayout
    local_optimizer: OptimizerSettings
    device: torch.device
    seed: int = 0
    module_types: Mapping[str, type] = field(default_factory=dict)


class Strategy:
    """FedOpt: weighted-mean aggregation of client deltas + a server optimizer step.

    Args:
        server_optimizer: factory `f(params, lr=...)` for the server optimizer; default SGD.
        server_lr: the server learning rate (1.0 with SGD is FedAvg).
        aggregator: the reducer of client deltas; default the sample-weighted mean.
        weighted: weight each update by its client's number of samples (FedAvg) or uniformly.

    Declarations (class attributes; `fedtorch.compatibility` checks them):
        reads_updates: the server half keeps state from individual updates (`on_update`).
        changes_local_training: the client half trains differently from plain local SGD.
        keeps_client_state: clients keep state between turns (the `ClientStateStore`).
        needs_fixed_cohort: the algorithm assumes the same number of clients every round.
        cohort_size: the algorithm trains exactly this many clients a round (Cyclic: 1), or None.
        sets_weights: `client_weight` is the algorithm's own, not sample counts or uniform.
        personalized: clients have their own models (`personal_vector`), evaluated as such.
        local_optimizers: the local optimizers the algorithm is derived for (class names, e.g.
            ("SGD",)), or None for any.
    """

    name = "fedopt"
    reads_updates: bool = False
    changes_local_training: bool = False
    keeps_client_state: bool = False
    needs_fixed_cohort: bool = False
    cohort_size: int | None = None
    sets_weights: bool = False
    personalized: bool = False
    local_optimizers: tuple[str, ...] | None = None

    def __init__(
        self,
        server_optimizer: ServerOptimizerFactory | None = None,
        server_lr: float = 1.0,
        aggregator: Aggregator | None = None,
        weighted: bool = True,
    ) -> None:
        self.server_optimizer_factory = server_optimizer or torch.optim.SGD
        self.server_lr = check_number("strategy.server_lr", server_lr, 0.0, low_open=True)
        self.aggregator = aggregator or WeightedMean()
        self.weighted = bool(weighted)
        self.skipped_rounds = 0

    # -- set-up -------------------------------------------------------------------------------
    def setup(self, context: StrategyContext, global_vector: Tensor) -> None:
        """Bind the strategy to the global weights (a flat vector it updates in place)."""
        self.context = context
        self.layout = context.layout
        self.num_clients = context.num_clients
        self.global_vector = global_vector
        # A view of the parameter segment; requires_grad is False, so it is a leaf the
        # optimizer can own, and the optimizer's in-place step updates global_vector.
        self.server_params = global_vector[: self.layout.num_params]
        self.server_optimizer = self.server_optimizer_factory([self.server_params], lr=self.server_lr)

    # -- the round, server side ------------------------------------------------------------------
    def configure_round(self, round_idx: int) -> dict[str, Tensor]:
        """What the server sends each client besides the model (e.g. SCAFFOLD's control variate)."""
        return {}

    def begin_round(self, round_idx: int, cohort: Sequence[int]) -> None:
        """A round (server step) starts: reset per-round accumulators of the server half."""

    # -- the client half ------------------------------------------------------------------------
    def local_update(self, client: ClientContext) -> ClientUpdate:
        """One client's turn: plain local training from the downloaded weights."""
        return client.train()

    # -- the round, server side, per update ------------------------------------------------------
    def client_weight(self, update: ClientUpdate) -> float:
        return float(update.num_samples) if self.weighted else 1.0

    def on_update(self, update: ClientUpdate) -> None:
        """Per-client server-side bookkeeping (SCAFFOLD's control variates, ...); needs `reads_updates`."""

    def merge(self, group: dist.ProcessGroup | None = None) -> None:
        """Combine the server half's per-round accumulators of all processes (distributed backend)."""

    def apply(self, round_idx: int, aggregate: Tensor | None) -> dict[str, float]:
        """Move the global model by the round's aggregate; None means the step is skipped (too few
        updates, or aborted), leaving the model and the server optimizer's state unchanged.
        Returns the server's metrics (logged under `server/`)."""
        if aggregate is None:
            self.skipped_rounds += 1
            return {"update_norm": 0.0, "skipped_rounds": float(self.skipped_rounds)}
        self.apply_aggregate(round_idx, aggregate)
        metrics = {"update_norm": float(aggregate[: self.layout.num_params].norm())}
        if self.skipped_rounds:
            metrics["skipped_rounds"] = float(self.skipped_rounds)
        return metrics

    def apply_aggregate(self, round_idx: int, aggregate: Tensor) -> None:
        """Step the server optimizer with pseudo-gradient -aggregate; buffers take the mean."""
        num_params = self.layout.num_params
        self.server_params.grad = -aggregate[:num_params]
        self.server_optimizer.step()
        self.server_params.grad = None
        if num_params < self.layout.size:
            with torch.no_grad():
                self.global_vector[num_params:] += aggregate[num_params:]

    # -- personalization ------------------------------------------------------------------------
    def personal_vector(self, client_id: int, global_vector: Tensor, store: ClientStateStore) -> Tensor:
        """Client `client_id`'s own model (personalized strategies); by default the global model."""
        return global_vector

    # -- checkpointing ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"server_optimizer": self.server_optimizer.state_dict(), "skipped_rounds": self.skipped_rounds}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.server_optimizer.load_state_dict(state["server_optimizer"])
        self.skipped_rounds = int(state.get("skipped_rounds", 0))
