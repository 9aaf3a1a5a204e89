"""Aggregators: how the server reduces the round's client updates to one vector.

An aggregator is a small accumulator: `add(delta, weight)` per client update, `result()` at the
end of the round. The weighted mean streams (it keeps a running weighted sum, so memory is
O(model) however many clients a round has); reducers that need every update at once (median,
Krum) keep the stack. `merge(process_group)` combines the partial state of several processes
(the distributed backend): one `all_reduce` for sums, an `all_gather` for stacks.

    WeightedMean       sum w_k x_k / sum w_k (FedAvg; streaming)
    WeightedSum        sum w_k x_k (server-side state of SCAFFOLD and FedDyn; streaming)
    CoordinateMedian   coordinate-wise median                      (Yin et al. 2018)
    TrimmedMean        coordinate-wise beta-trimmed mean           (Yin et al. 2018)
    Krum, MultiKrum    the update(s) closest to their neighbours   (Blanchard et al. 2017)
    Bulyan             iterated Krum + trimmed median              (El Mhamdi et al. 2018)
    GeometricMedian    smoothed Weiszfeld, RFA                     (Pillutla et al. 2022)

Defenses built on these reducers (bucketing, nearest-neighbour mixing, centered clipping, norm
bounding, FLTrust) live in `fedtorch.defenses`.

Every reducer's result is independent of the order in which updates arrive (backends and
processes deliver them in different orders): the stacked reducers sort the round's updates by
client id before reducing, so ties (Krum's and Bulyan's equal scores) go to the lower client id;
the streaming sums are exact up to float64 rounding in any order.

The robust reducers treat every update alike (a Byzantine client could lie about its sample
count), except GeometricMedian, which uses the weights as RFA does (`weighted=false` turns that off).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from fedtorch.errors import check_int, check_number


class Aggregator:
    """Base class. Subclasses implement `add`, `result`, `merge` and `reset`.

    Declarations (read by `fedtorch.compatibility`): `needs_all_updates`,
    `reads_individual_updates`, `min_updates`, `bucket_size`, `needs_server_update` and
    `tolerates(n)`. The pipeline calls `setup(seed)` once and `begin_step(step)` at every step, so a
    reducer that draws random numbers (bucketing's permutation) derives them from (seed, step); a
    reducer with state between steps (centered clipping's centre) returns it from `state_dict`,
    which the pipeline checkpoints.
    """

    #: True when the reducer needs every update at once (no streaming; gathers across processes).
    needs_all_updates: bool = False
    #: True when the reducer looks at each update on its own (a stack, or a per-update clip), so
    #: it cannot follow secure aggregation, which hands it only masked updates.
    reads_individual_updates: bool = False
    #: The fewest updates the reducer is defined for; a round with fewer skips the server step.
    min_updates: int = 1
    #: Updates averaged into one before the robust rule sees them (bucketing's s); 1 otherwise.
    bucket_size: int = 1
    #: The reducer compares the clients' updates with the server's own update on a root dataset
    #: (FLTrust); the run must provide it (`fedtorch.defenses.fltrust.attach_root_dataset`).
    needs_server_update: bool = False

    def tolerates(self, n: int) -> int | None:
        """The most Byzantine updates among `n` the reducer is designed to withstand (its breakdown
        point), or None where it makes no such claim (the mean; defenses whose guarantee is not a
        count). `fedtorch.compatibility` refuses an attack that puts more attackers in a round."""
        return None

    def setup(self, seed: int) -> None:
        """Called once, before the first step, with the run's root seed."""

    def begin_step(self, step: int) -> None:
        """A server step starts (after `reset`)."""

    def step_metrics(self) -> dict[str, float]:
        """Scalars about the step just reduced (logged with the transforms' metrics)."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """State carried from one step to the next (none for a memoryless reducer)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def reset(self, like: Tensor | None = None) -> None:
        """Start a round; `like` (the global vector) fixes the size, dtype and device."""
        raise NotImplementedError

    def add(self, delta: Tensor, weight: float, client_id: int | None = None) -> None:
        """Add one update with its aggregation weight; `client_id` orders ties (stacked reducers)."""
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


class WeightedSum(Aggregator):
    """sum_k w_k * x_k in float64 (no normalization): server-side state such as SCAFFOLD's
    control-variate change or FedDyn's drift term, which divide by the number of *all* clients."""

    def __init__(self) -> None:
        self.reset()

    def reset(self, like: Tensor | None = None) -> None:
        self._sum: Tensor | None = None if like is None else torch.zeros_like(like, dtype=torch.float64)
        self._weight = 0.0
        self._count = 0

    def add(self, delta: Tensor, weight: float, client_id: int | None = None) -> None:
        if self._sum is None:
            self._sum = torch.zeros_like(delta, dtype=torch.float64)
        # In-place add promotes float32 to float64 exactly, with no temporary copy.
        self._sum.add_(delta, alpha=float(weight))
        self._weight += float(weight)
        self._count += 1

    def result(self) -> Tensor:
        if self._sum is None:
            raise RuntimeError(f"{type(self).__name__}.result() before reset(like=...) or add()")
        return self._sum

    @property
    def total_weight(self) -> float:
        return self._weight

    def merge(self, group: dist.ProcessGroup | None = None) -> None:
        # One all_reduce carries the sum, the weight and the count: [sum..., weight, count].
        if self._sum is None:
            raise RuntimeError("merge() needs reset(like=global_vector) on processes that trained no client")
        packed = torch.cat([self._sum, self._sum.new_tensor([self._weight, float(self._count)])])
        dist.all_reduce(packed, group=group)
        self._sum = packed[:-2]
        self._weight = float(packed[-2])
        self._count = int(packed[-1])


class WeightedMean(WeightedSum):
    """sum_k w_k * delta_k / sum_k w_k, accumulated in place (FedAvg's reducer).

    The running sum is kept in float64 so that the result does not depend on the order in which
    updates arrive beyond float64 rounding (the distributed and sequential backends add in
    different orders).
    """

    def result(self) -> Tensor:
        if self._sum is None or self._weight <= 0:
            raise RuntimeError("WeightedMean.result() with no updates of positive weight")
        return self._sum / self._weight


class StackedAggregator(Aggregator):
    """Base of the robust reducers: keeps every update of the round and reduces the (n, d) stack.

    Robust statistics need all updates at once, so memory is O(clients x model) on the server
    (on the device of the updates). `merge()` all-gathers the stacks of every process (padded to
    the largest, since processes may hold different numbers of updates).

    Subclasses implement `reduce(stack, weights)`; `min_updates` is the fewest updates the
    reducer is defined for (the strategy skips the server step of a round with fewer).
    """

    needs_all_updates = True
    reads_individual_updates = True

    def __init__(self) -> None:
        self.reset()

    @property
    def min_updates(self) -> int:
        return 1

    def reset(self, like: Tensor | None = None) -> None:
        self._updates: list[Tensor] = []
        self._weights: list[float] = []
        self._ids: list[int] = []
        self._like = like
        self._count = 0

    def add(self, delta: Tensor, weight: float, client_id: int | None = None) -> None:
        # A copy: a backend may reuse the buffer an update arrived in for the next client.
        self._updates.append(delta.detach().clone())
        self._weights.append(float(weight))
        # Without an id, the arrival position (offset past any real id) keeps the order stable.
        self._ids.append(int(client_id) if client_id is not None else 2**40 + self._count)
        self._count += 1

    def stack(self) -> tuple[Tensor, Tensor]:
        """The round's updates as an (n, d) tensor, sorted by client id, and their weights as an (n,)
        float64 tensor: the reducers then never depend on the order the updates arrived in."""
        if not self._updates:
            raise RuntimeError(f"{type(self).__name__}.result() with no updates")
        order = sorted(range(len(self._ids)), key=lambda i: self._ids[i])
        stack = torch.stack([self._updates[i] for i in order])
        weights = torch.tensor([self._weights[i] for i in order], dtype=torch.float64, device=stack.device)
        return stack, weights

    def result(self) -> Tensor:
        if self._count < self.min_updates:
            raise RuntimeError(f"{type(self).__name__} needs at least {self.min_updates} updates, got {self._count}")
        stack, weights = self.stack()
        return self.reduce(stack, weights)

    def reduce(self, stack: Tensor, weights: Tensor) -> Tensor:
        raise NotImplementedError

    def merge(self, group: dist.ProcessGroup | None = None) -> None:
        if not self._updates and self._like is None:
            raise RuntimeError("merge() needs reset(like=global_vector) on processes that trained no client")
        self._updates, self._weights, self._ids = all_gather_updates(
            self._updates, self._weights, self._ids, self._like, group
        )
        self._count = len(self._updates)


def all_gather_updates(
    updates: list[Tensor],
    weights: list[float],
    ids: list[int],
    like: Tensor | None,
    group: dist.ProcessGroup | None = None,
) -> tuple[list[Tensor], list[float], list[int]]:
    """Every process's (update, weight, client id) triples, on every process of `group`.

    Processes may hold different numbers of updates (or none: `like` then gives the size, dtype
    and device), so the stacks are padded to the largest before one `all_gather`; each row carries
    the update, its weight and its client id. The result is in rank order (callers sort by id).
    """
    if updates:
        size, device, dtype = updates[0].numel(), updates[0].device, updates[0].dtype
    elif like is not None:
        size, device, dtype = like.numel(), like.device, like.dtype
    else:
        raise RuntimeError("all_gather_updates needs `like` on processes that hold no update")
    world = dist.get_world_size(group)
    count = torch.tensor([len(updates)], device=device, dtype=torch.int64)
    counts = [torch.zeros_like(count) for _ in range(world)]
    dist.all_gather(counts, count, group=group)
    counts_host = [int(c) for c in counts]
    largest = max(counts_host)
    if largest == 0:
        return [], [], []
    # One row per update: the update, its weight and its client id, padded to the largest stack.
    local = torch.zeros(largest, size + 2, device=device, dtype=torch.float64)
    for i, (update, weight, client) in enumerate(zip(updates, weights, ids)):
        local[i, :size] = update
        local[i, size] = weight
        local[i, size + 1] = float(client)  # exact: client ids are far below 2^53
    gathered = [torch.empty_like(local) for _ in range(world)]
    dist.all_gather(gathered, local, group=group)
    rows = torch.cat([g[:n] for g, n in zip(gathered, counts_host)])
    return [row[:size].to(dtype) for row in rows], rows[:, size].tolist(), [int(v) for v in rows[:, size + 1].tolist()]


def _sorted_coordinates(stack: Tensor) -> Tensor:
    return torch.sort(stack, dim=0).values


class CoordinateMedian(StackedAggregator):
    """Coordinate-wise median (Yin et al. 2018, "Byzantine-Robust Distributed Learning: Towards
    Optimal Statistical Rates"). With an even number of updates it is the mean of the two middle
    values (not torch.median's lower one). Ignores the sample weights: every update counts once.
    """

    def reduce(self, stack: Tensor, weights: Tensor) -> Tensor:
        n = stack.shape[0]
        ordered = _sorted_coordinates(stack)
        if n % 2:
            return ordered[n // 2]
        return (ordered[n // 2 - 1] + ordered[n // 2]) / 2

    def tolerates(self, n: int) -> int | None:
        return (n - 1) // 2  # breakdown point 1/2: a strict minority


class TrimmedMean(StackedAggregator):
    """Coordinate-wise beta-trimmed mean (Yin et al. 2018): per coordinate, drop the
    floor(beta * n) largest and the floor(beta * n) smallest values and average the rest.
    beta = 0 is the plain (unweighted) mean. Ignores the sample weights.

    Args:
        beta: fraction trimmed at each end, in [0, 0.5).
    """

    def __init__(self, beta: float = 0.1) -> None:
        self.beta = check_number("strategy.aggregator.beta", beta, 0.0, 0.5, high_open=True)
        super().__init__()

    def reduce(self, stack: Tensor, weights: Tensor) -> Tensor:
        n = stack.shape[0]
        k = int(math.floor(self.beta * n + 1e-9))
        return _sorted_coordinates(stack)[k : n - k].mean(dim=0)

    def tolerates(self, n: int) -> int | None:
        return int(math.floor(self.beta * n + 1e-9))  # as many as it trims at each end


def pairwise_sq_distances(stack: Tensor) -> Tensor:
    """(n, n) squared Euclidean distances in float64, via the Gram matrix of the centred stack
    (centring keeps the |a|^2 + |b|^2 - 2ab cancellation small when updates are close)."""
    x = stack.to(torch.float64)
    x = x - x.mean(dim=0, keepdim=True)
    sq = (x * x).sum(dim=1)
    dist2 = sq[:, None] + sq[None, :] - 2.0 * (x @ x.T)
    # Exactly symmetric (a matmul need not be): mutual nearest neighbours then tie exactly, and
    # ties go to the first update of the (client-id sorted) stack, not to rounding noise.
    dist2 = (dist2 + dist2.T) / 2
    dist2.clamp_(min=0.0).fill_diagonal_(0.0)
    return dist2


def krum_scores(dist2: Tensor, f: int) -> Tensor:
    """Krum's score of every update: the sum of squared distances to its n - f - 2 nearest
    other updates (at least one neighbour, so the score stays defined on small sets)."""
    n = dist2.shape[0]
    k = max(n - f - 2, 1)
    others = dist2 + torch.diag(torch.full((n,), math.inf, dtype=dist2.dtype, device=dist2.device))
    return torch.topk(others, k, dim=1, largest=False).values.sum(dim=1)


class Krum(StackedAggregator):
    """Krum and Multi-Krum (Blanchard et al. 2017, "Machine Learning with Adversaries: Byzantine
    Tolerant Gradient Descent").

    Each update is scored by the sum of squared distances to its n - f - 2 nearest neighbours;
    Krum (m = 1) returns the update with the lowest score, Multi-Krum the plain mean of the m
    lowest-scoring ones (ties go to the lower client id). Tolerates f Byzantine clients when
    n > 2f + 2. Ignores the sample weights.

    Args:
        f: number of Byzantine clients to tolerate.
        m: updates averaged; 1 is Krum, None is n - f (El Mhamdi et al. 2018's Multi-Krum choice).
    """

    def __init__(self, f: int = 1, m: int | None = 1) -> None:
        self.f = check_int("strategy.aggregator.f", f, 0)
        self.m = check_int("strategy.aggregator.m", m, 1, none=True)
        super().__init__()

    @property
    def min_updates(self) -> int:
        return 2 * self.f + 3

    def tolerates(self, n: int) -> int | None:
        return self.f

    def select(self, stack: Tensor) -> Tensor:
        """Indices of the selected updates, best score first."""
        n = stack.shape[0]
        m = n - self.f if self.m is None else min(self.m, n)
        scores = krum_scores(pairwise_sq_distances(stack), self.f)
        # A stable sort on the scores: equal scores keep the stack's order (by client id).
        return torch.sort(scores, stable=True).indices[:m]

    def reduce(self, stack: Tensor, weights: Tensor) -> Tensor:
        return stack[self.select(stack)].mean(dim=0)


class MultiKrum(Krum):
    """Multi-Krum: `Krum` averaging the m best-scoring updates (default m = n - f)."""

    def __init__(self, f: int = 1, m: int | None = None) -> None:
        super().__init__(f=f, m=m)


class Bulyan(StackedAggregator):
    """Bulyan (El Mhamdi et al. 2018, "The Hidden Vulnerability of Distributed Learning in
    Byzantium"): pick theta = n - 2f updates by applying Krum repeatedly (each pick leaves the
    set), then per coordinate average the beta = theta - 2f values closest to the median of the
    picked updates. Needs n >= 4f + 3. Ignores the sample weights.

    Args:
        f: number of Byzantine clients to tolerate.
    """

    def __init__(self, f: int = 1) -> None:
        self.f = check_int("strategy.aggregator.f", f, 0)
        super().__init__()

    @property
    def min_updates(self) -> int:
        return 4 * self.f + 3

    def tolerates(self, n: int) -> int | None:
        return self.f

    def select(self, stack: Tensor) -> list[int]:
        """The theta = n - 2f updates chosen by iterated Krum, in the order they were chosen."""
        n = stack.shape[0]
        dist2 = pairwise_sq_distances(stack)
        remaining = list(range(n))
        chosen: list[int] = []
        while len(chosen) < n - 2 * self.f:
            sub = dist2[remaining][:, remaining]
            best = int(torch.argmin(krum_scores(sub, self.f)))  # argmin: first of equal scores
            chosen.append(remaining.pop(best))
        return chosen

    def reduce(self, stack: Tensor, weights: Tensor) -> Tensor:
        picked = stack[self.select(stack)]
        theta = picked.shape[0]
        beta = theta - 2 * self.f
        median = CoordinateMedian().reduce(picked, weights)
        closest = torch.topk((picked - median).abs(), beta, dim=0, largest=False).indices
        return torch.gather(picked, 0, closest).mean(dim=0)


class GeometricMedian(StackedAggregator):
    """Weighted geometric median by the smoothed Weiszfeld algorithm: RFA (Pillutla et al. 2022,
    "Robust Aggregation for Federated Learning").

    Minimizes sum_k a_k max(nu, ||v - x_k||) with a_k the normalized sample weights (RFA's
    alpha_k = n_k / n), or uniform weights when `weighted` is False. Starts from the weighted
    mean; stops when the objective improves by less than `tol` (relative) or after `max_iter`
    iterations (one host sync each, on the server, not in a training loop).

    Args:
        max_iter: Weiszfeld iterations at most.
        tol: relative objective change that counts as converged.
        nu: smoothing: distances below it count as nu (avoids dividing by zero at a data point).
        weighted: use the sample weights (RFA) or weigh every update equally.
    """

    def __init__(self, max_iter: int = 100, tol: float = 1e-6, nu: float = 1e-6, weighted: bool = True) -> None:
        self.max_iter = check_int("strategy.aggregator.max_iter", max_iter, 1)
        self.tol = check_number("strategy.aggregator.tol", tol, 0.0)
        self.nu = check_number("strategy.aggregator.nu", nu, 0.0, low_open=True)
        self.weighted = weighted
        super().__init__()

    def tolerates(self, n: int) -> int | None:
        return (n - 1) // 2  # breakdown point 1/2 (of the weight, when weighted)

    def reduce(self, stack: Tensor, weights: Tensor) -> Tensor:
        x = stack.to(torch.float64)
        alpha = weights if self.weighted else torch.ones_like(weights)
        alpha = alpha / alpha.sum()
        median = alpha @ x
        distances = torch.linalg.vector_norm(x - median, dim=1).clamp(min=self.nu)
        objective = float(alpha @ distances)
        for _ in range(self.max_iter):
            beta = alpha / distances
            median = (beta @ x) / beta.sum()
            distances = torch.linalg.vector_norm(x - median, dim=1).clamp(min=self.nu)
            new_objective = float(alpha @ distances)
            converged = abs(objective - new_objective) <= self.tol * max(new_objective, 1e-30)
            objective = new_objective
            if converged:
                break
        return median.to(stack.dtype)
