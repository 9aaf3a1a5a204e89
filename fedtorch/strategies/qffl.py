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
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
from torch import Tensor

from fedtorch.aggregators import Aggregator
from fedtorch.client import ClientHooks, ClientUpdate
from fedtorch.strategies.base import Strategy
from fedtorch.strategies.personalization import chunked_loss

if TYPE_CHECKING:
    from fedtorch.simulation import Simulation

_MIN_LOSS = 1e-10  # F_k^(q-1) with q < 1 needs F_k > 0


class _QFFLHooks(ClientHooks):
    def __init__(self, strategy: QFFL, client_id: int) -> None:
        self.strategy = strategy
        self.client_id = client_id

    def on_train_start(self, params: list[Tensor], global_params: list[Tensor]) -> None:
        # The worker model holds w_t now: F_k(w_t) over the client's whole training set.
        sim = self.strategy.sim
        indices = sim.federation.client_indices[self.client_id]
        self.loss = chunked_loss(sim.model, sim.federation.train_x, sim.federation.train_y, indices, sim.loss_fn)

    def on_train_end(self, update: ClientUpdate) -> None:
        update.extra["qffl_loss"] = self.loss


class QFFL(Strategy):
    """q-FedAvg.

    Args:
        q: fairness parameter (0 is FedAvg with uniform weights; the paper uses up to 15).
        lipschitz: L; None uses 1 / trainer.lr as the paper does.
        aggregator: reducer of the deltas (default the F^q-weighted mean).
    """

    name = "qffl"

    def __init__(self, q: float = 1.0, lipschitz: float | None = None, aggregator: Aggregator | None = None) -> None:
        if q < 0:
            raise ValueError(f"strategy.q={q} must be >= 0")
        super().__init__(torch.optim.SGD, server_lr=1.0, aggregator=aggregator, weighted=False)
        self.q = float(q)
        self.lipschitz = lipschitz
        self._sum_weight = 0.0  # sum_k F_k^q
        self._sum_h = 0.0  # sum_k h_k

    def attach(self, sim: Simulation) -> None:
        self.sim = sim
        if self.lipschitz is None:
            self.lipschitz = 1.0 / float(sim.trainer.lr)

    def begin_round(self, round_idx: int, client_ids: Sequence[int]) -> None:
        super().begin_round(round_idx, client_ids)
        self._sum_weight = 0.0
        self._sum_h = 0.0

    def client_hooks(self, round_idx: int, client_id: int) -> ClientHooks:
        return _QFFLHooks(self, client_id)

    def on_update(self, round_idx: int, update: ClientUpdate) -> None:
        loss = update.extra["qffl_loss"].double().clamp(min=_MIN_LOSS)
        lip = float(self.lipschitz)
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
        super().merge(group)
        packed = torch.tensor([self._sum_weight, self._sum_h], dtype=torch.float64, device=self.global_vector.device)
        dist.all_reduce(packed, group=group)
        self._sum_weight, self._sum_h = float(packed[0]), float(packed[1])

    @property
    def step_scale(self) -> float:
        """s = L sum_k F_k^q / sum_k h_k (1 when q = 0)."""
        return float(self.lipschitz) * self._sum_weight / self._sum_h if self._sum_h > 0 else 0.0

    def apply_aggregate(self, round_idx: int, aggregate: Tensor) -> None:
        scaled = aggregate.clone()
        scaled[: self.layout.num_params] *= self.step_scale
        super().apply_aggregate(round_idx, scaled)

    def finish_round(self, round_idx: int) -> dict[str, float]:
        metrics = super().finish_round(round_idx)
        metrics["qffl_step_scale"] = self.step_scale
        return metrics
