"""Aggregators: how the server reduces the round's client updates to one vector.

An aggregator is a small accumulator: `add(delta, weight)` per client update, `result()` at the
end of the round. The weighted mean streams (it keeps a running weighted sum, so memory is
O(model) however many clients a round has); reducers that need every update at once (median,
Krum) keep the stack. `merge(process_group)` combines the partial state of several processes
(the distributed backend): one `all_reduce` for sums, an `all_gather` for stacks.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


class Aggregator:
    """Base class. Subclasses implement `add`, `result`, `merge` and `reset`."""

    #: True when the reducer needs every update at once (no streaming; gathers across processes).
    needs_all_updates: bool = False

    def reset(self, like: Tensor | None = None) -> None:
        """Start a round; `like` (the global vector) fixes the size, dtype and device."""
        raise NotImplementedError

    def add(self, delta: Tensor, weight: float) -> None:
        raise NotImplementedError

    def result(self) -> Tensor:
        raise NotImplementedError

    def merge(self, group: dist.ProcessGroup | None = None) -> None:
        """Combine the partial state held by every process of `group` (default: the world)."""
        raise NotImplementedError

    @property
    def count(self) -> int:
        """Number of updates added since the last reset (on this process, before a merge)."""
        return self._count


class WeightedMean(Aggregator):
    """sum_k w_k * delta_k / sum_k w_k, accumulated in place (FedAvg's reducer).

    The running sum is kept in float64 so that the result does not depend on the order in which
    updates arrive beyond float64 rounding (the distributed and sequential backends add in
    different orders).
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self, like: Tensor | None = None) -> None:
        self._sum: Tensor | None = None if like is None else torch.zeros_like(like, dtype=torch.float64)
        self._weight = 0.0
        self._count = 0

    def add(self, delta: Tensor, weight: float) -> None:
        if self._sum is None:
            self._sum = torch.zeros_like(delta, dtype=torch.float64)
        self._sum.add_(delta.to(torch.float64), alpha=float(weight))
        self._weight += float(weight)
        self._count += 1

    def result(self) -> Tensor:
        if self._sum is None or self._weight <= 0:
            raise RuntimeError("WeightedMean.result() with no updates of positive weight")
        return self._sum / self._weight

    @property
    def total_weight(self) -> float:
        return self._weight

    def merge(self, group: dist.ProcessGroup | None = None) -> None:
        # One all_reduce carries the sum and the weight: [sum..., weight, count].
        if self._sum is None:
            raise RuntimeError("merge() needs reset(like=global_vector) on processes that trained no client")
        packed = torch.cat([self._sum, self._sum.new_tensor([self._weight, float(self._count)])])
        dist.all_reduce(packed, group=group)
        self._sum = packed[:-2]
        self._weight = float(packed[-2])
        self._count = int(packed[-1])
