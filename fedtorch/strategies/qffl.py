"""q-FFL / q-FedAvg (Li et al. 2020, "Fair Resource Allocation in Federated Learning").

q-FFL minimizes sum_k p_k F_k(w)^(q+1) / (q+1): the larger q, the more the clients with a high
loss count, so accuracy spreads less across clients. q-FedAvg (the paper's Algorithm 2) solves it
with FedAvg's local training and a server step scaled by a Lipschitz estimate L = 1 / eta_l:

    client k:  F_k = F_k(w_t) (loss of the global model on its data, before training),
               dw_k = L (w_t - w_k),  D_k = F_k^q dw_k,
               h_k = q F_k^(q-1) ||dw_k||^2 + L F_k^q
    server:    w_{t+1} = w_t - sum_k D_k / sum_k h_k

Written with the streaming aggregator: the server step is s * mean_F(w_k - w_t), where mean_F is
the F_k^q-weighted mean of the deltas and s = L * sum_k F_k^q / sum_k h_k. With q = 0 every
weight is 1 and s = 1: q-FedAvg is FedAvg with uniform weights. The paper's fairness figures
(mean, spread and worst 10% of per-client test accuracy) are the simulation's `eval/clients/...`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import Tensor

from fedtorch.aggregators import Aggregator
from fedtorch.client import ClientUpdate
from fedtorch.errors import check_number
from fedtorch.runner import ClientContext
from fedtorch.strategies.base import Strategy, StrategyContext

_MIN_LOSS = 1e-10  # F_k^(q-1) with q < 1 needs F_k > 0


class QFFL(Strategy):
    """q-FedAvg.

    Args:
        q: fairness parameter (0 is FedAvg with uniform weights; the paper uses up to 15).
        lipschitz: L; None uses 1 / (the local learning rate) as the paper does.
        aggregator: reducer of the deltas (default the F^q-weighted mean).
    """

    name = "qffl"
    reads_updates = True
    changes_local_training = True  # the client also evaluates F_k(w_t) on its data
    sets_weights = True

    def __init__(self, q: float = 1.0, lipschitz: float | None = None, aggregator: Aggregator | None = None) -> None:
        super().__init__(torch.optim.SGD, server_lr=1.0, aggregator=aggregator, weighted=False)
        self.q = check_number("strategy.q", q, 0.0)
        self.lipschitz = check_number("strategy.lipschitz", lipschitz, 0.0, low_open=True, none=True)
        self._sum_weight = 0.0  # sum_k F_k^q
        self._sum_h = 0.0  # sum_k h_k

    def setup(self, context: StrategyContext, global_vector: Tensor) -> None:
        super().setup(context, global_vector)
        self.L = self.lipschitz if self.lipschitz is not None else 1.0 / context.local_optimizer.lr

    def begin_round(self, round_idx: int, cohort: Sequence[int]) -> None:
        self._sum_weight = 0.0
        self._sum_h = 0.0

    # -- client half ------------------------------------------------------------------------------
    def local_update(self, client: ClientContext) -> ClientUpdate:
        loss = client.loss()  # F_k(w_t) over the client's whole training set, before training
        update = client.train()
        update.extra["qffl_loss"] = loss
        return update

    # -- server half ------------------------------------------------------------------------------
    def on_update(self, update: ClientUpdate) -> None:
        loss = update.extra["qffl_loss"].double().clamp(min=_MIN_LOSS)
        lip = float(self.L)
        delta = update.delta[: self.layout.num_params].double()
        fq = loss.pow(self.q)
        h = self.q * loss.pow(self.q - 1) * lip * lip * delta.dot(delta) + lip * fq
        # One host sync per client (not per step): the aggregator takes float weights.
        update.extra["qffl_weight"] = fq
        self._sum_weight += float(fq)
        self._sum_h += float(h)

    def client_weight(self, update: ClientUpdate) -> float:
        return float(update.extra["qffl_weight"])

    def merge(self, group: dist.ProcessGroup | None = None) -> None:
        packed = torch.tensor([self._sum_weight, self._sum_h], dtype=torch.float64, device=self.global_vector.device)
        dist.all_reduce(packed, group=group)
        self._sum_weight, self._sum_h = float(packed[0]), float(packed[1])

    @property
    def step_scale(self) -> float:
        """s = L sum_k F_k^q / sum_k h_k (1 when q = 0)."""
        return float(self.L) * self._sum_weight / self._sum_h if self._sum_h > 0 else 0.0

    def apply_aggregate(self, round_idx: int, aggregate: Tensor) -> None:
        scaled = aggregate.clone()
        scaled[: self.layout.num_params] *= self.step_scale
        super().apply_aggregate(round_idx, scaled)

    def apply(self, round_idx: int, aggregate: Tensor | None) -> dict[str, float]:
        metrics = super().apply(round_idx, aggregate)
        metrics["qffl_step_scale"] = self.step_scale
        return metrics
