"""FedProx (Li et al. 2020, "Federated Optimization in Heterogeneous Networks").

Each client minimizes its loss plus the proximal term (mu / 2) * ||w - w_t||^2, which keeps the
local model near the global model w_t it started from and so limits client drift under
heterogeneous data and partial work (stragglers). The term's gradient mu * (w - w_t) is added to
the loss gradient before every local step. The server side is FedAvg. With mu = 0 the client
gradient is untouched: FedProx is then FedAvg bit for bit.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from fedtorch.aggregators import Aggregator
from fedtorch.client import ClientHooks, ClientUpdate
from fedtorch.errors import check_number
from fedtorch.runner import ClientContext
from fedtorch.strategies.base import Strategy


class ProximalHooks(ClientHooks):
    """grad += mu * (w - anchor), anchor the global weights (or given views, e.g. Ditto's w_t).

    Args:
        mu: strength of the proximal term.
        anchor: tensors matching the model's parameters; None anchors at the weights the client
            started from (the `global_params` the trainer passes).
    """

    adjusts_gradients = True

    def __init__(self, mu: float, anchor: Sequence[Tensor] | None = None) -> None:
        self.mu = float(mu)
        self.anchor = anchor

    def after_backward(self, params: list[Tensor], grads: list[Tensor], global_params: list[Tensor]) -> None:
        anchor = global_params if self.anchor is None else self.anchor
        with torch.no_grad():  # the weights are leaves that require grad: no graph for the term
            live = [(p, g, a) for p, g, a in zip(params, grads, anchor) if g is not None]
            if not live:
                return
            ps, gs, anchors = (list(t) for t in zip(*live))
            torch._foreach_add_(gs, torch._foreach_sub(ps, anchors), alpha=self.mu)


class FedProx(Strategy):
    """FedAvg whose clients add the proximal term (mu / 2) ||w - w_t||^2 to their loss.

    Args:
        mu: proximal strength (the paper tries 0.001, 0.01, 0.1, 1; 0 is FedAvg).
        server_lr: server step on the weighted mean delta (1.0: the paper's averaging).
    """

    name = "fedprox"

    changes_local_training = True

    def __init__(
        self, mu: float = 0.01, server_lr: float = 1.0, aggregator: Aggregator | None = None, weighted: bool = True
    ) -> None:
        super().__init__(torch.optim.SGD, server_lr=server_lr, aggregator=aggregator, weighted=weighted)
        self.mu = check_number("strategy.mu", mu, 0.0)

    def local_update(self, client: ClientContext) -> ClientUpdate:
        return client.train(hooks=ProximalHooks(self.mu))
