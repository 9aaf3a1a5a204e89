"""SCAFFOLD (Karimireddy et al. 2020, "SCAFFOLD: Stochastic Controlled Averaging for Federated
Learning"), with the paper's option II control-variate update.

Client i keeps a control variate c_i (an estimate of its own gradient), the server keeps c (an
estimate of the global gradient) and sends it with the model. Local steps use the corrected
gradient g_i(y) - c_i + c, which removes the client drift that makes FedAvg with many local steps
converge to a biased point on heterogeneous data. After K local steps with learning rate eta_l
(option II):

    client: c_i+ = c_i - c + (x - y_i) / (K * eta_l);   sends y_i - x and c_i+ - c_i
    server: x += eta_g * mean_i (y_i - x);   c += sum_{i in S} q_i (c_i+ - c_i)

where q_i is client i's share of the *whole* federation (n_i / n, or 1/N with `weighted=false`),
so that c stays the q-weighted mean of all c_i; the fixed point is then the minimizer of
sum_i q_i f_i. The c_i are client state (`ClientStateStore`); K is the client's actual number of
steps (stragglers take fewer). The correction assumes the local optimizer is plain SGD at
learning rate eta_l (the trainer's lr unless `local_lr` is given).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from fedtorch.aggregators import Aggregator, WeightedSum
from fedtorch.client import ClientHooks, ClientUpdate
from fedtorch.errors import check_number
from fedtorch.runner import ClientContext
from fedtorch.strategies.base import Strategy, StrategyContext


class ControlVariateHooks(ClientHooks):
    """grad += c - c_i at every local step (constant over the client's turn)."""

    adjusts_gradients = True

    def __init__(self, correction: Tensor, offsets: Sequence[int]) -> None:
        self.correction = correction  # c - c_i, flat
        self.offsets = offsets
        self.views: Sequence[Tensor] = ()

    def on_train_start(self, params: list[Tensor], global_params: list[Tensor]) -> None:
        self.views = [self.correction[o : o + p.numel()].view_as(p) for o, p in zip(self.offsets, params)]

    def after_backward(self, params: list[Tensor], grads: list[Tensor], global_params: list[Tensor]) -> None:
        live = [(g, c) for g, c in zip(grads, self.views) if g is not None]
        if live:
            gs, cs = (list(t) for t in zip(*live))
            torch._foreach_add_(gs, cs)


class Scaffold(Strategy):
    """SCAFFOLD, option II.

    Args:
        server_lr: eta_g (1.0 in the paper's experiments).
        local_lr: eta_l of the option-II update; None uses the trainer's learning rate.
        aggregator: reducer of the model deltas (default the weighted mean).
        weighted: weight clients by their sample counts (n_i / n) or equally (1 / N).
    """

    name = "scaffold"
    reads_updates = True
    changes_local_training = True
    keeps_client_state = True
    local_optimizers = ("SGD",)

    def __init__(
        self,
        server_lr: float = 1.0,
        local_lr: float | None = None,
        aggregator: Aggregator | None = None,
        weighted: bool = True,
    ) -> None:
        super().__init__(torch.optim.SGD, server_lr=server_lr, aggregator=aggregator, weighted=weighted)
        self.local_lr = check_number("strategy.local_lr", local_lr, 0.0, low_open=True, none=True)
        self._c_delta = WeightedSum()

    def setup(self, context: StrategyContext, global_vector: Tensor) -> None:
        super().setup(context, global_vector)
        self.c = torch.zeros_like(global_vector[: self.layout.num_params])
        self.eta_l = self.local_lr if self.local_lr is not None else context.local_optimizer.lr
        self.total_weight = float(context.client_sizes.sum()) if self.weighted else float(context.num_clients)

    def configure_round(self, round_idx: int) -> dict[str, Tensor]:
        return {"c": self.c}

    def begin_round(self, round_idx: int, cohort: Sequence[int]) -> None:
        self._c_delta.reset(like=self.c)

    # -- client half ------------------------------------------------------------------------------
    def local_update(self, client: ClientContext) -> ClientUpdate:
        c = client.payload["c"]
        c_i = client.state.get("c", default=lambda: torch.zeros_like(c))
        update = client.train(hooks=ControlVariateHooks(c - c_i, client.layout.offsets))
        steps = max(update.num_steps, 1)
        drift = update.delta[: client.layout.num_params].to(c_i.dtype)  # y_i - x
        # c_i+ = c_i - c + (x - y_i) / (K eta_l)
        c_new = c_i - c - drift / (steps * self.eta_l)
        update.extra["control_variate_delta"] = c_new - c_i
        client.state.put("c", c_new)
        return update

    # -- server half ------------------------------------------------------------------------------
    def on_update(self, update: ClientUpdate) -> None:
        share = self.client_weight(update) / self.total_weight
        self._c_delta.add(update.extra["control_variate_delta"], share)

    def merge(self, group: dist.ProcessGroup | None = None) -> None:
        self._c_delta.merge(group)

    def apply(self, round_idx: int, aggregate: Tensor | None) -> dict[str, float]:
        # The clients that reported have already replaced their c_i, so c moves even in a round
        # whose model step is skipped: c stays the weighted mean of all c_i.
        if self._c_delta.count:
            self.c += self._c_delta.result().to(self.c.dtype)
        metrics = super().apply(round_idx, aggregate)
        metrics["control_variate_norm"] = float(self.c.norm())
        return metrics

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "c": self.c.detach().cpu().clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.c = state["c"].to(self.global_vector.device)
