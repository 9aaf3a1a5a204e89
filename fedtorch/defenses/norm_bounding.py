"""Norm bounding (Sun, Kairouz, Suresh and McMahan, 2019, "Can You Really Backdoor Federated
Learning?").

Every update is clipped to norm at most M before the weighted mean,

    x_i <- x_i * min(1, M / ||x_i||),

so a boosted (model-replacement) backdoor update counts no more than an honest update of norm M.
The paper shows that this alone, with M near the honest updates' norms, stops most backdoors at
a small cost in accuracy; its "weak DP" adds Gaussian noise after it, which is fedtorch's
central DP (`privacy=central_fixed`, clip + noise, with an accountant).

It streams: each update is clipped on arrival and added to the running weighted sum, so memory is
O(model) like FedAvg's, and the result is independent of arrival order up to float64 rounding.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from fedtorch.aggregators import WeightedMean
from fedtorch.errors import check_number


class NormBounding(WeightedMean):
    """The weighted mean of the updates clipped to norm `max_norm`.

    It reads every update (to clip it), so it cannot follow secure aggregation; clients that clip
    their own updates before masking are DP-FedAvg's clipping (`privacy=central_fixed`).

    Args:
        max_norm: M, the largest update norm that counts in full.
    """

    reads_individual_updates = True

    def __init__(self, max_norm: float = 1.0) -> None:
        self.max_norm = check_number("strategy.aggregator.max_norm", max_norm, 0.0, low_open=True)
        super().__init__()

    def reset(self, like: Tensor | None = None) -> None:
        super().reset(like)
        self._clipped: Tensor | float = 0.0

    def add(self, delta: Tensor, weight: float, client_id: int | None = None) -> None:
        x = delta.to(torch.float64)
        norm = torch.linalg.vector_norm(x)
        # min(1, M / ||x||) as a tensor: no host sync per update.
        scale = (self.max_norm / norm.clamp(min=1e-300)).clamp(max=1.0)
        self._clipped = self._clipped + (norm > self.max_norm).double()
        super().add(x * scale, weight, client_id)

    def merge(self, group: dist.ProcessGroup | None = None) -> None:
        super().merge(group)
        assert self._sum is not None
        clipped = torch.as_tensor(self._clipped, dtype=torch.float64, device=self._sum.device).reshape(1)
        dist.all_reduce(clipped, group=group)
        self._clipped = clipped[0]

    def step_metrics(self) -> dict[str, float]:
        return {"defense/clipped": float(self._clipped)}
