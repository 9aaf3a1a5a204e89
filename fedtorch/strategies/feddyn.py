"""FedDyn (Acar et al. 2021, "Federated Learning Based on Dynamic Regularization").

Client k minimizes a dynamically regularized loss whose stationary points agree with the global
objective's:

    L_k(w) - <g_k, w> + (alpha / 2) ||w - w_{t-1}||^2,

g_k being the client's running estimate of its gradient at its last local solution (zero at
first). So each local step uses grad L_k(w) - g_k + alpha (w - w_{t-1}), and afterwards

    client:  g_k <- g_k - alpha (w_k - w_{t-1})
    server:  h <- h - alpha * sum_{k in P_t} q_k (w_k - w_{t-1})
             w_t = mean_{k in P_t}(w_k) - h / alpha

with q_k = 1/m over all m clients as in the paper (`weighted=false`, the default) or n_k / n.
At a fixed point every w_k equals w and sum_k q_k grad L_k(w) = 0, even though the local
problems are solved inexactly: FedDyn removes FedAvg's client drift. The g_k are client state
(`ClientStateStore`). The server moves w by `server_lr` times the corrected mean delta
(1.0 is the paper's update).
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


class DynamicRegularizerHooks(ClientHooks):
    """grad += -g_k + alpha (w - w_{t-1}) at every local step."""

    adjusts_gradients = True

    def __init__(self, alpha: float, grad_estimate: Tensor, offsets: Sequence[int]) -> None:
        self.alpha = alpha
        self.grad_estimate = grad_estimate  # g_k, on the device for this turn
        self.offsets = offsets
        self.views: Sequence[Tensor] = ()

    def on_train_start(self, params: list[Tensor], global_params: list[Tensor]) -> None:
        self.views = [self.grad_estimate[o : o + p.numel()].view_as(p) for o, p in zip(self.offsets, params)]

    def after_backward(self, params: list[Tensor], grads: list[Tensor], global_params: list[Tensor]) -> None:
        with torch.no_grad():
            live = [(p, g, w, e) for p, g, w, e in zip(params, grads, global_params, self.views) if g is not None]
            if not live:
                return
            ps, gs, ws, es = (list(t) for t in zip(*live))
            torch._foreach_sub_(gs, es)  # - g_k
            torch._foreach_add_(gs, torch._foreach_sub(ps, ws), alpha=self.alpha)  # + alpha (w - w_{t-1})


class FedDyn(Strategy):
    """FedDyn.

    Args:
        alpha: regularization strength (the paper uses 0.1, 0.01, 0.001).
        server_lr: scale of the server step (1.0: the paper's w_t = mean(w_k) - h / alpha).
        aggregator: reducer of the model deltas (default the mean).
        weighted: q_k = n_k / n and a sample-weighted mean, or (default, as the paper) 1/m and a
            plain mean.
    """

    name = "feddyn"
    reads_updates = True
    changes_local_training = True
    keeps_client_state = True

    def __init__(
        self,
        alpha: float = 0.01,
        server_lr: float = 1.0,
        aggregator: Aggregator | None = None,
        weighted: bool = False,
    ) -> None:
        super().__init__(torch.optim.SGD, server_lr=server_lr, aggregator=aggregator, weighted=weighted)
        self.alpha = check_number("strategy.alpha", alpha, 0.0, low_open=True)
        self._drift = WeightedSum()

    def setup(self, context: StrategyContext, global_vector: Tensor) -> None:
        super().setup(context, global_vector)
        self.h = torch.zeros_like(global_vector[: self.layout.num_params])
        self.total_weight = float(context.client_sizes.sum()) if self.weighted else float(context.num_clients)

    def begin_round(self, round_idx: int, cohort: Sequence[int]) -> None:
        self._drift.reset(like=self.h)

    # -- client half ------------------------------------------------------------------------------
    def local_update(self, client: ClientContext) -> ClientUpdate:
        num_params = client.layout.num_params
        g_k = client.state.get("grad", default=lambda: torch.zeros_like(client.start[:num_params]))
        update = client.train(hooks=DynamicRegularizerHooks(self.alpha, g_k, client.layout.offsets))
        drift = update.delta[:num_params].to(g_k.dtype)
        client.state.put("grad", g_k - self.alpha * drift)  # g_k <- g_k - alpha (w_k - w_{t-1})
        return update

    # -- server half ------------------------------------------------------------------------------
    def on_update(self, update: ClientUpdate) -> None:
        share = self.client_weight(update) / self.total_weight
        self._drift.add(update.delta[: self.layout.num_params], share)

    def merge(self, group: dist.ProcessGroup | None = None) -> None:
        self._drift.merge(group)

    def apply(self, round_idx: int, aggregate: Tensor | None) -> dict[str, float]:
        # The reporting clients have updated their g_k, so h follows even if the step is skipped.
        if self._drift.count:
            self.h -= self.alpha * self._drift.result().to(self.h.dtype)
        metrics = super().apply(round_idx, aggregate)
        metrics["h_norm"] = float(self.h.norm())
        return metrics

    def apply_aggregate(self, round_idx: int, aggregate: Tensor) -> None:
        corrected = aggregate.clone()
        corrected[: self.layout.num_params] -= self.h / self.alpha
        super().apply_aggregate(round_idx, corrected)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "h": self.h.detach().cpu().clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.h = state["h"].to(self.global_vector.device)
