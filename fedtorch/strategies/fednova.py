"""FedNova (Wang et al. 2020, "Tackling the Objective Inconsistency Problem in Heterogeneous
Federated Optimization").

When clients take different numbers of local steps tau_i (different data sizes, stragglers),
FedAvg implicitly weights client i by p_i * tau_i and converges to the optimum of a surrogate
objective, not of sum_i p_i f_i. FedNova normalizes each client's update by the norm of its
local "aggregation vector" a_i and rescales by an effective step count:

    x += server_lr * tau_eff * sum_i p_i Delta_i / ||a_i||_1,   tau_eff = sum_i p_i ||a_i||_1

a_i says how much each of the tau_i local gradients contributes to the client's total step
Delta_i = -eta sum_s a_i[s] g_s (Wang et al., Section 4). For plain SGD a_i = (1, ..., 1) and
||a_i||_1 = tau_i. With torch's heavy-ball momentum rho (buf = rho buf + g; x -= eta buf) the
gradient of step s contributes (1 - rho^(tau - s)) / (1 - rho), so
||a_i||_1 = (tau - rho (1 - rho^tau) / (1 - rho)) / (1 - rho); with Nesterov momentum (x -= eta
(g + rho buf)) it contributes 1 + rho (1 - rho^(tau - s)) / (1 - rho), so
||a_i||_1 = tau + rho / (1 - rho) * (tau - rho (1 - rho^tau) / (1 - rho)). With dampening the
coefficients have no such short form and are computed by running the optimizer's recursion on a
unit gradient (every coefficient is positive, so the sum is the L1 norm). Weight decay is part of
the gradient and changes nothing here. p_i are the sample-weighted (or uniform) shares of the
round's clients; tau_i is the client's actual step count. Only the parameters are normalized;
floating buffers take the plain mean of their deltas.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import Tensor

from fedtorch.aggregators import Aggregator
from fedtorch.client import ClientUpdate, OptimizerSettings
from fedtorch.errors import check_number
from fedtorch.strategies.base import Strategy, StrategyContext


def normalizing_factor(steps: int, momentum: float = 0.0, nesterov: bool = False, dampening: float = 0.0) -> float:
    """||a_i||_1 for `steps` local steps of torch.optim.SGD with these options (see the module)."""
    rho = momentum
    if rho == 0.0:
        return float(steps)
    if dampening == 0.0:
        heavy_ball = (steps - rho * (1 - rho**steps) / (1 - rho)) / (1 - rho)
        return steps + rho * heavy_ball if nesterov else heavy_ball
    # torch.optim.SGD on a unit gradient: buf_0 = g (no dampening on the first step), then
    # buf = rho buf + (1 - dampening) g; the step is buf (or g + rho buf with Nesterov).
    total, buf = 0.0, 0.0
    for s in range(steps):
        buf = 1.0 if s == 0 else rho * buf + (1 - dampening)
        total += 1.0 + rho * buf if nesterov else buf
    return total


class FedNova(Strategy):
    """FedNova with vanilla, heavy-ball or Nesterov local SGD.

    Args:
        server_lr: scale of the server step (1.0 in the paper).
        local_momentum: the clients' SGD momentum rho; None reads it (and Nesterov and dampening)
            from the local optimizer. A given value assumes heavy-ball momentum without dampening.
        aggregator: reducer of the normalized deltas (default the weighted mean).
        weighted: p_i proportional to the client's samples (the paper) or uniform.
    """

    name = "fednova"
    reads_updates = True
    local_optimizers = ("SGD",)

    def __init__(
        self,
        server_lr: float = 1.0,
        local_momentum: float | None = None,
        aggregator: Aggregator | None = None,
        weighted: bool = True,
    ) -> None:
        super().__init__(torch.optim.SGD, server_lr=server_lr, aggregator=aggregator, weighted=weighted)
        self.local_momentum = check_number(
            "strategy.local_momentum", local_momentum, 0.0, 1.0, high_open=True, none=True
        )
        self._weighted_steps = 0.0  # sum_i w_i ||a_i||_1
        self._weight = 0.0  # sum_i w_i

    def setup(self, context: StrategyContext, global_vector: Tensor) -> None:
        super().setup(context, global_vector)
        local: OptimizerSettings = context.local_optimizer
        if self.local_momentum is None:
            self.momentum, self.nesterov, self.dampening = local.momentum, local.nesterov, local.dampening
        else:
            self.momentum, self.nesterov, self.dampening = self.local_momentum, False, 0.0

    def begin_round(self, round_idx: int, cohort: Sequence[int]) -> None:
        self._weighted_steps = 0.0
        self._weight = 0.0

    def on_update(self, update: ClientUpdate) -> None:
        norm = normalizing_factor(max(update.num_steps, 1), self.momentum, self.nesterov, self.dampening)
        weight = self.client_weight(update)
        self._weighted_steps += weight * norm
        self._weight += weight
        # The aggregator receives the normalized delta Delta_i / ||a_i||_1 (a new tensor: the
        # client's own delta stays as it was).
        normalized = update.delta.clone()
        normalized[: self.layout.num_params] /= norm
        update.delta = normalized

    def merge(self, group: dist.ProcessGroup | None = None) -> None:
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

    def apply(self, round_idx: int, aggregate: Tensor | None) -> dict[str, float]:
        metrics = super().apply(round_idx, aggregate)
        metrics["tau_eff"] = self.tau_eff
        return metrics
