"""Centered clipping (Karimireddy, He and Jaggi, ICML 2021, "Learning from History for Byzantine
Robust Optimization", Section 4).

The aggregate is found by clipping every update around a centre v and averaging the clipped
differences, repeated L times:

    v <- v + (1/n) sum_i (x_i - v) * min(1, tau / ||x_i - v||)

The centre is the previous step's aggregate (the "history" of the title; their code keeps it as
the aggregator's momentum), so a Byzantine update can move the aggregate by at most tau / n per
iteration, wherever it is, while honest updates within tau of the centre count in full. With a
radius larger than every ||x_i - v|| it is the plain mean (after one iteration). The paper pairs
it with momentum: each worker sends its momentum m_i = (1 - beta) g_i + beta m_i (Algorithm 2),
which shrinks the honest spread that the radius must cover. In federated rounds the clients'
local steps average gradients in the same way; the server's momentum (strategy=fedavgm, any FedOpt
optimizer) then acts on the clipped aggregate, and client momentum (trainer.optimizer.momentum) on
the local steps: both compose.

The centre is state: it is checkpointed with the pipeline (a resumed run continues with the same
centre) and starts at zero. Updates count equally (sample weights are ignored, as by the other
robust reducers). Every update is kept for the L iterations.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from fedtorch.aggregators import StackedAggregator
from fedtorch.errors import check_int, check_number


class CenteredClipping(StackedAggregator):
    """Clip every update to radius `tau` around the previous aggregate and average, `iterations` times.

    Args:
        tau: the clipping radius (in the norm of an update).
        iterations: L, the clipping iterations per step (the paper's experiments use 1).
    """

    def __init__(self, tau: float = 0.1, iterations: int = 1) -> None:
        self.tau = check_number("strategy.aggregator.tau", tau, 0.0, low_open=True)
        self.iterations = check_int("strategy.aggregator.iterations", iterations, 1)
        self.center: Tensor | None = None
        self._clipped = 0.0
        super().__init__()

    def reduce(self, stack: Tensor, weights: Tensor) -> Tensor:
        x = stack.to(torch.float64)
        v = torch.zeros_like(x[0]) if self.center is None else self.center.to(x)
        clipped = torch.zeros((), dtype=torch.float64)
        for _ in range(self.iterations):
            diff = x - v
            norms = torch.linalg.vector_norm(diff, dim=1, keepdim=True)
            # min(1, tau / ||d||), with a zero difference left as it is.
            scale = torch.where(norms > self.tau, self.tau / norms.clamp(min=1e-300), torch.ones_like(norms))
            v = v + (diff * scale).mean(dim=0)
            clipped = (norms > self.tau).double().mean()
        self.center = v.detach().clone()
        self._clipped = float(clipped)
        return v.to(stack.dtype)

    def step_metrics(self) -> dict[str, float]:
        return {"defense/clipped_fraction": self._clipped}

    def state_dict(self) -> dict[str, Any]:
        return {} if self.center is None else {"center": self.center.detach().cpu().clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        center = state.get("center")
        self.center = None if center is None else center.clone()
