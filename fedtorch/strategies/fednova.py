"""FedNova (Wang et al. 2020, "Tackling the Objective Inconsistency Problem in Heterogeneous
Federated Optimization").

When clients take different numbers of local steps tau_i (different data sizes, stragglers),
FedAvg implicitly weights client i by p_i * tau_i and converges to the optimum of a surrogate
objective, not of sum_i p_i f_i. FedNova normalizes each client's update by the norm of its
local "aggregation vector" a_i and rescales by an effective step count:

    x += server_lr * tau_eff * sum_i p_i Delta_i / ||a_i||_1,   tau_eff = sum_i p_i ||a_i||_1

For local SGD, ||a_i||_1 = tau_i; with heavy-ball momentum rho,
||a_i||_1 = (tau_i - rho (1 - rho^tau_i) / (1 - rho)) / (1 - rho). p_i are the sample-weighted
(or uniform) shares of the round's clients; tau_i is the client's actual step count. Only the
parameters are normalized; floating buffers take the plain mean of their deltas.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
from torch import Tensor

from fedtorch.aggregators import Aggregator
from fedtorch.client import ClientUpdate
from fedtorch.strategies.base import Strategy

if TYPE_CHECKING:
    from fedtorch.simulation import Simulation


def normalizing_factor(steps: int, momentum: float = 0.0) -> float:
    """||a_i||_1 for `steps` local SGD steps with heavy-ball `momentum` (Wang et al., Section 4)."""
    if momentum == 0.0:
        return float(steps)
    rho = momentum
    return (steps - rho * (1 - rho**steps) / (1 - rho)) / (1 - rho)


class FedNova(Strategy):
    """FedNova with vanilla or momentum local SGD.

    Args:
        server_lr: scale of the server step (1.0 in the paper).
        local_momentum: the clients' SGD momentum rho; None reads it from the trainer's optimizer
            (`trainer.optimizer.momentum`, 0 if it has none).
        aggregator: reducer of the normalized deltas (default the weighted mean).
        weighted: p_i proportional to the client's samples (the paper) or uniform.
    """

    name = "fednova"

    def __init__(
        self,
        server_lr: float = 1.0,
        local_momentum: float | None = None,
        aggregator: Aggregator | None = None,
        weighted: bool = True,
    ) -> None:
        super().__init__(torch.optim.SGD, server_lr=server_lr, aggregator=aggregator, weighted=weighted)
        self.local_momentum = local_momentum
        self._weighted_steps = 0.0  # sum_i w_i ||a_i||_1
        self._weight = 0.0  # sum_i w_i

    def attach(self, sim: Simulation) -> None:
        if self.local_momentum is None:
            keywords = getattr(sim.trainer.optimizer, "keywords", {}) or {}
            self.local_momentum = float(keywords.get("momentum", 0.0))
        if not 0.0 <= self.local_momentum < 1.0:
            raise ValueError(f"FedNova local_momentum={self.local_momentum} must be in [0, 1)")

    def begin_round(self, round_idx: int, client_ids: Sequence[int]) -> None:
        super().begin_round(round_idx, client_ids)
        self._weighted_steps = 0.0
        self._weight = 0.0

    def on_update(self, round_idx: int, update: ClientUpdate) -> None:
        norm = normalizing_factor(max(update.num_steps, 1), self.local_momentum or 0.0)
        weight = self.client_weight(update)
        self._weighted_steps += weight * norm
        self._weight += weight
        # The aggregator receives the normalized delta Delta_i / ||a_i||_1 (a new tensor: the
        # client's own delta stays as it was).
        normalized = update.delta.clone()
        normalized[: self.layout.num_params] /= norm
        update.delta = normalized

    def merge(self, group: dist.ProcessGroup | None = None) -> None:
        super().merge(group)
        packed = torch.tensor(
            [self._weighted_steps, self._weight], dtype=torch.float64, device=self.global_vector.device
        )
        dist.all_reduce(packed, group=group)
        self._weighted_steps, self._weight = float(packed[0]), float(packed[1])

    @property
    def tau_eff(self) -> float:
        return self._weighted_steps / self._weight if self._weight > 0 else 0.0

    def apply_aggregate(self, round_idx: int, aggregate: Tensor) -> None:
        scaled = aggregate.clone()
        scaled[: self.layout.num_params] *= self.tau_eff
        super().apply_aggregate(round_idx, scaled)

    def finish_round(self, round_idx: int) -> dict[str, float]:
        metrics = super().finish_round(round_idx)
        metrics["tau_eff"] = self.tau_eff
        return metrics
