"""Bucketing (Karimireddy, He and Jaggi, ICLR 2022, "Byzantine-Robust Learning on Heterogeneous
Datasets via Bucketing", Algorithm 1).

Before the robust reducer, the round's n updates are put in a random order pi and averaged in
buckets of s,

    y_i = mean(x_pi((i-1)s+1), ..., x_pi(min(is, n))),    i = 1 .. ceil(n / s),

and the reducer sees the ceil(n / s) bucket means. Averaging s honest updates divides their
spread (the heterogeneity the reducer would otherwise mistake for an attack) by about sqrt(s),
while f attackers can spoil at most f buckets: the share of bad inputs grows from f / n to at most
f / ceil(n / s), which the reducer must still tolerate (the paper's condition delta * s <=
delta_max; s = 2 in its experiments). `tolerates(n)` is therefore the inner reducer's tolerance
over ceil(n / s) vectors, and a bucket larger than the cohort (one bucket: the plain mean) is
refused.

The permutation is drawn from the (seed, "bucketing", step) stream over the updates in client-id
order, so it does not depend on arrival order or on the backend. A bucket's weight (used only by
reducers that read weights, the geometric median) is the sum of its members' weights; within a
bucket the updates count equally, as in the paper.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from fedtorch.aggregators import Aggregator
from fedtorch.defenses.pre_aggregation import PreAggregation
from fedtorch.errors import check_int
from fedtorch.seeding import torch_generator


class Bucketing(PreAggregation):
    """Average random buckets of `bucket_size` updates, then `inner`.

    Args:
        inner: the robust reducer of the bucket means.
        bucket_size: s >= 1 (1: the inner reducer on the updates themselves, in a random order).
    """

    def __init__(self, inner: Aggregator, bucket_size: int = 2) -> None:
        self.s = check_int("strategy.aggregator.bucket_size", bucket_size, 1)
        super().__init__(inner)

    @property
    def bucket_size(self) -> int:  # type: ignore[override]
        return self.s * self.inner.bucket_size

    @property
    def min_updates(self) -> int:
        # Enough updates for the inner reducer's fewest inputs: ceil(n / s) >= inner.min_updates.
        return (self.inner.min_updates - 1) * self.s + 1

    def tolerates(self, n: int) -> int | None:
        return self.inner.tolerates(math.ceil(n / self.s))

    def permutation(self, n: int) -> Tensor:
        """The step's random order of the n updates (positions in the client-id sorted stack)."""
        return torch.randperm(n, generator=torch_generator(self.seed, "bucketing", self.step))

    def mix(self, stack: Tensor, weights: Tensor) -> tuple[Tensor, Tensor]:
        n = stack.shape[0]
        order = self.permutation(n).to(stack.device)
        buckets = [order[i : i + self.s] for i in range(0, n, self.s)]
        means = torch.stack([stack[b].mean(dim=0) for b in buckets])
        bucket_weights = torch.stack([weights[b].sum() for b in buckets])
        return means, bucket_weights
