"""SCAFFOLD (Karimireddy et al. 2020, "SCAFFOLD: Stochastic Controlled Averaging for Federated
Learning"), with the paper's option II control-variate update.

Client i keeps a control variate c_i (an estimate of its own gradient), the server keeps c (an
estimate of the global gradient). Local steps use the corrected gradient g_i(y) - c_i + c, which
removes the client drift that makes FedAvg with many local steps converge to a biased point on
heterogeneous data. After K local steps with learning rate eta_l (option II):

    c_i+ = c_i - c + (x - y_i) / (K * eta_l)
    server: x += eta_g * mean_i (y_i - x);   c += sum_{i in S} q_i (c_i+ - c_i)

where q_i is client i's share of the *whole* federation (n_i / n, or 1/N with `weighted=false`),
so that c stays the q-weighted mean of all c_i; the fixed point is then the minimizer of
sum_i q_i f_i. The c_i live on the CPU between the client's turns (`ClientStateStore`); K is the
client's actual number of steps (stragglers take fewer). The correction assumes the local
optimizer is plain SGD at learning rate eta_l (trainer.lr unless `local_lr` is given).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import Tensor

from fedtorch.aggregators import Aggregator, WeightedSum
from fedtorch.client import ClientHooks, ClientUpdate
from fedtorch.strategies.base import Strategy
from fedtorch.strategies.client_state import ClientStateStore

if TYPE_CHECKING:
    from fedtorch.simulation import Simulation


class _ScaffoldHooks(ClientHooks):
    """One client's turn: corrected gradients, then the option-II control-variate update."""

    def __init__(self, strategy: Scaffold, client_id: int, c_i: Tensor) -> None:
        self.strategy = strategy
        self.client_id = client_id
        self.c_i = c_i
        self.correction = strategy.c - c_i  # c - c_i, constant over the client's local steps
        self.correction_views: Sequence[Tensor] = ()

    def on_train_start(self, params: list[Tensor], global_params: list[Tensor]) -> None:
        offsets = self.strategy.layout.offsets
        self.correction_views = [self.correction[o : o + p.numel()].view_as(p) for o, p in zip(offsets, params)]

    def after_backward(self, params: list[Tensor], grads: list[Tensor], global_params: list[Tensor]) -> None:
        live = [(g, c) for g, c in zip(grads, self.correction_views) if g is not None]
        if live:
            gs, cs = (list(t) for t in zip(*live))
            torch._foreach_add_(gs, cs)

    def on_train_end(self, update: ClientUpdate) -> None:
        strategy = self.strategy
        steps = max(update.num_steps, 1)
        drift = update.delta[: strategy.layout.num_params].to(self.c_i.dtype)  # y_i - x
        # c_i+ = c_i - c + (x - y_i) / (K eta_l)
        c_new = self.c_i - strategy.c - drift / (steps * strategy.local_lr)
        update.extra["control_variate_delta"] = c_new - self.c_i
        strategy.client_c.put(self.client_id, c_new)


class Scaffold(Strategy):
    """SCAFFOLD, option II.

    Args:
        server_lr: eta_g (1.0 in the paper's experiments).
        local_lr: eta_l of the option-II update; None uses the trainer's learning rate.
        aggregator: reducer of the model deltas (default the weighted mean).
        weighted: weight clients by their sample counts (n_i / n) or equally (1 / N).
    """

    name = "scaffold"

    def __init__(
        self,
        server_lr: float = 1.0,
        local_lr: float | None = None,
        aggregator: Aggregator | None = None,
        weighted: bool = True,
    ) -> None:
        super().__init__(torch.optim.SGD, server_lr=server_lr, aggregator=aggregator, weighted=weighted)
        self.local_lr = local_lr
        self.client_c = ClientStateStore()
        self._c_delta = WeightedSum()

    def setup(self, global_vector: Tensor, layout: Any, num_clients: int) -> None:
        super().setup(global_vector, layout, num_clients)
        self.c = torch.zeros_like(global_vector[: layout.num_params])
        self.total_weight = float(num_clients)

    def attach(self, sim: Simulation) -> None:
        if self.local_lr is None:
            self.local_lr = float(sim.trainer.lr)
        if self.weighted:
            self.total_weight = float(sim.federation.client_sizes().sum())

    def begin_round(self, round_idx: int, client_ids: Sequence[int]) -> None:
        super().begin_round(round_idx, client_ids)
        self._c_delta.reset(like=self.c)

    def client_hooks(self, round_idx: int, client_id: int) -> ClientHooks:
        c_i = self.client_c.get(client_id, self.c.device, default=lambda: torch.zeros_like(self.c))
        return _ScaffoldHooks(self, client_id, c_i)

    def on_update(self, round_idx: int, update: ClientUpdate) -> None:
        share = self.client_weight(update) / self.total_weight
        self._c_delta.add(update.extra["control_variate_delta"], share)

    def merge(self, group: dist.ProcessGroup | None = None) -> None:
        super().merge(group)
        self.client_c.sync(group)  # a client may train on another process next time
        self._c_delta.merge(group)

    def finish_round(self, round_idx: int) -> dict[str, float]:
        # The clients that reported have already replaced their c_i, so c moves even in a round
        # whose model step is skipped: c stays the weighted mean of all c_i.
        if self._c_delta.count:
            self.c += self._c_delta.result().to(self.c.dtype)
        metrics = super().finish_round(round_idx)
        metrics["control_variate_norm"] = float(self.c.norm())
        return metrics

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "c": self.c.detach().cpu().clone(), "client_c": self.client_c.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.c = state["c"].to(self.global_vector.device)
        self.client_c.load_state_dict(state["client_c"])
