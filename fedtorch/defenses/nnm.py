"""Nearest-neighbour mixing, NNM (Allouah, Farhadkhani, Guerraoui, Gupta, Pinot and Stephan,
AISTATS 2023, "Fixing by Mixing: A Recipe for Optimal Byzantine ML under Heterogeneity",
Algorithm 1).

Before the robust reducer, every update is replaced by the mean of its n - f nearest neighbours
(itself included, in Euclidean distance),

    y_i = mean_{j in N_i} x_j,    N_i = the n - f updates closest to x_i,

and the reducer sees y_1 .. y_n. Each y_i averages at least n - 2f honest updates, so the honest
spread shrinks and the f Byzantine vectors are pulled towards honest ones; the paper shows that
NNM followed by Krum, the geometric median, the coordinate-wise median or trimmed mean reaches the
optimal error under heterogeneity. f is the number of Byzantine updates the server assumes
(n > 2f). Ties in distance go to the lower client id (a stable sort of the client-id ordered
stack), so the result does not depend on arrival order.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fedtorch.aggregators import Aggregator, pairwise_sq_distances
from fedtorch.defenses.pre_aggregation import PreAggregation
from fedtorch.errors import check_int


class NearestNeighborMixing(PreAggregation):
    """Replace each update by the mean of its n - f nearest neighbours, then `inner`.

    Args:
        inner: the robust reducer of the mixed updates.
        f: the number of Byzantine updates assumed per round (n > 2f).
    """

    def __init__(self, inner: Aggregator, f: int = 1) -> None:
        self.f = check_int("strategy.aggregator.f", f, 0)
        super().__init__(inner)

    @property
    def min_updates(self) -> int:
        return max(2 * self.f + 1, self.inner.min_updates)

    def tolerates(self, n: int) -> int | None:
        inner = self.inner.tolerates(n)
        return None if inner is None else min(self.f, inner, (n - 1) // 2)

    def mix(self, stack: Tensor, weights: Tensor) -> tuple[Tensor, Tensor]:
        n = stack.shape[0]
        keep = n - self.f
        dist2 = pairwise_sq_distances(stack)
        neighbours = torch.sort(dist2, dim=1, stable=True).indices[:, :keep]
        # y = A x with A[i, j] = 1 / (n - f) for j in N_i: O(n^2 + n d) memory, not O(n^2 d).
        mixing = torch.zeros(n, n, dtype=torch.float64, device=stack.device)
        mixing.scatter_(1, neighbours, 1.0 / keep)
        return (mixing @ stack.to(torch.float64)).to(stack.dtype), weights
