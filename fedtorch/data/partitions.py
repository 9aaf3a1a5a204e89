"""Partitioners: how a centralized train set is split across clients.

A partitioner is a callable `(data: DatasetSplits, rng: np.random.Generator) -> Partition`. A
`Partition` holds, for every client, the sorted indices of its training samples, and optionally its
own test split and its name, aligned client by client. Its constructor checks that the train
indices cover every sample exactly once, so a partitioner with a bug (lost, duplicated or
out-of-range samples) fails where it is built instead of training on wrong data. Every partitioner
is deterministic for a given `rng` state and runs in bounded time: none retries at random until a
condition happens to hold. Every partitioner builds its `Partition` as one CSR (an owner per sample,
or a shuffled order cut at the client sizes) with whole-array operations: O(samples + clients),
never a loop over clients (only the Dirichlet `min_size` repair, when it has samples to move, still
walks the clients it repairs).

    IID            uniform random, near-equal sizes
    Dirichlet      label skew, class proportions ~ Dir(alpha)        (Hsu et al. 2019)
    Shards         pathological: label-sorted shards, 2 per client    (McMahan et al. 2017)
    QuantitySkew   IID labels, log-normal / power-law / Dirichlet sizes (LEAF; Li et al. 2022)
    Natural        the data's own clients (LEAF users, hospitals, speaking roles)

A bad option raises `fedtorch.errors.OptionError` with the key a user types (`partition.alpha`),
including values that are only out of range for the data at hand (more clients than samples, a
`min_size` the data cannot give every client). The module-level functions (`iid_partition`, ...)
are the same partitioners for library use and return a `Partition` too.

`partition_stats(label_count_matrix(parts, labels))` summarizes any split (sizes, classes per client,
distance of client label distributions from the global one) for logs and tests.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from numbers import Integral, Real
from typing import Any

import numpy as np

from fedtorch.data.base import DatasetSplits, Partition  # noqa: F401  (Partition: re-exported)
from fedtorch.data.index import IndexCSR
from fedtorch.errors import OptionError

log = logging.getLogger("fedtorch")

#: The Dirichlet `min_size` repair warns when it moves more than this share of the samples: beyond
#: a few percent the label skew is no longer the one Dir(alpha) describes (see `dirichlet_partition`).
REPAIR_WARN_FRACTION = 0.05

DISTRIBUTIONS = ("lognormal", "powerlaw", "dirichlet")


# ----------------------------------------------------------------------------- the result type


# ----------------------------------------------------------------------------- option checks


def _require_int(key: str, value: Any, low: int, high: int | None = None, why: str = "") -> int:
    """`value` as an int in [low, high], else OptionError(key) saying what is allowed."""
    ok = isinstance(value, Integral) and not isinstance(value, bool)
    if ok and low <= int(value) and (high is None or int(value) <= high):
        return int(value)
    bounds = f">= {low}" if high is None else f"in [{low}, {high}]"
    if high is not None and high < low:
        bounds = f">= {low}, but no value fits"
    raise OptionError(key, value, f"an integer {bounds}{why}")


def _require_positive(key: str, value: Any, allow_zero: bool = False) -> float:
    """`value` as a finite float > 0 (>= 0 with allow_zero), else OptionError(key)."""
    ok = isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)
    if ok and (value > 0 or (allow_zero and value == 0)):
        return float(value)
    raise OptionError(key, value, f"a finite number {'>=' if allow_zero else '>'} 0")


def _require_clients(num_clients: Any, num_samples: int) -> int:
    return _require_int("partition.num_clients", num_clients, 1, num_samples, f" (the data has {num_samples} samples)")


def _require_min_size(min_size: Any, num_clients: int, num_samples: int) -> int:
    """min_size >= 0 such that every client can get it: num_clients * min_size <= num_samples."""
    limit = num_samples // num_clients
    why = f" ({num_clients} clients x min_size must fit in the {num_samples} samples)"
    return _require_int("partition.min_size", min_size, 0, limit, why)


def _require_labels(data: DatasetSplits, partition: str) -> np.ndarray:
    if not data.is_classification:
        raise OptionError("partition", partition, f"needs class labels; dataset {data.name!r} is a regression task")
    return data.train_labels()


# ----------------------------------------------------------------------------- IID


def iid_partition(num_samples: int, num_clients: int, rng: np.random.Generator) -> Partition:
    """Shuffle the samples and deal them into `num_clients` near-equal parts (sizes differ by <= 1)."""
    num_clients = _require_clients(num_clients, num_samples)
    order = rng.permutation(num_samples)
    # np.array_split's sizes: the first (n mod K) clients get one sample more.
    sizes = np.full(num_clients, num_samples // num_clients, dtype=np.int64)
    sizes[: num_samples % num_clients] += 1
    return Partition(IndexCSR.from_sizes(order, sizes), num_samples)


class IID:
    """Uniform random split into `num_clients` near-equal clients."""

    def __init__(self, num_clients: int = 100) -> None:
        self.num_clients = _require_int("partition.num_clients", num_clients, 1)

    def __call__(self, data: DatasetSplits, rng: np.random.Generator) -> Partition:
        return iid_partition(len(data.train_y), self.num_clients, rng)


# ----------------------------------------------------------------------------- Dirichlet label skew


def _skew(owner: np.ndarray, labels: np.ndarray, num_clients: int, num_classes: int) -> tuple[float, float, float]:
    """(mean TV distance to the global label distribution, mean classes per client, empty clients)."""
    stats = partition_stats(_owner_label_counts(owner, labels, num_clients, num_classes))
    return stats["tv_mean"], stats["classes_per_client_mean"], stats["empty_clients"]


def dirichlet_partition(
    labels: np.ndarray,
    num_clients: int,
    alpha: float,
    rng: np.random.Generator,
    min_size: int = 1,
) -> Partition:
    """Label-skewed split: each class is spread over clients with proportions ~ Dir(alpha).

    The scheme of Hsu et al. 2019 ("Measuring the effects of non-identical data distribution for
    federated visual classification"), used by most FL benchmarks: small alpha (0.1) gives each
    client few classes, large alpha (100) approaches IID.

    The usual implementation redraws all proportions until every client has `min_size` samples,
    which can loop forever for small alpha. Here a single draw is made and then repaired: clients
    below `min_size` take random samples from the currently largest client. Each move raises a
    deficient client by one and the total is fixed, so the repair ends after at most
    `num_clients * min_size` moves.

    The repair changes the label skew: the moved samples come from the largest client, whatever
    their class, so small clients gain classes they would not have under Dir(alpha) (MNIST, 100
    clients, alpha 0.1, min_size 600 moves 31.8% of the samples and raises the classes per client
    from 5.25 to 8.12). `Partition.notes` records it: `repair_moved_samples` and
    `repair_moved_fraction` (samples whose client differs from the draw's), and the skew of the raw
    draw and of the result (`tv_mean_drawn` / `tv_mean`, `classes_per_client_drawn` /
    `classes_per_client`, `empty_clients_drawn`). Above `REPAIR_WARN_FRACTION` moved, a warning is
    logged: lower `min_size` or raise `alpha` to compare Dirichlet alphas faithfully.
    """
    labels = np.asarray(labels)
    n = len(labels)
    alpha = _require_positive("partition.alpha", alpha)
    num_clients = _require_clients(num_clients, n)
    min_size = _require_min_size(min_size, num_clients, n)
    # One owner per sample, class by class: class c's permuted samples are cut at the cumulative
    # Dir(alpha) proportions (the cut points are monotone and within [0, len(idx)], so the pieces
    # never overlap; the Partition check below would catch it if they did).
    drawn_owner = np.empty(n, dtype=np.int64)
    classes = np.unique(labels)
    pieces: list[tuple[np.ndarray, np.ndarray]] = []  # (samples, their client), in draw order
    for c in classes:
        idx = rng.permutation(np.flatnonzero(labels == c))
        proportions = rng.dirichlet(np.full(num_clients, alpha))
        cuts = (np.cumsum(proportions)[:-1] * len(idx)).astype(np.int64)
        owner_c = np.repeat(np.arange(num_clients, dtype=np.int64), np.diff(np.concatenate([[0], cuts, [len(idx)]])))
        drawn_owner[idx] = owner_c
        pieces.append((idx, owner_c))
    num_classes = int(labels.max()) + 1 if n else 0
    tv_drawn, classes_drawn, empty_drawn = _skew(drawn_owner, labels, num_clients, num_classes)

    owner = drawn_owner
    sizes = np.bincount(drawn_owner, minlength=num_clients)
    if (sizes < min_size).any():
        # The repair, exactly as it always ran: every client's samples in draw order (class by
        # class), shuffled, then moves from the largest client. Only a split that needs it pays
        # its loop over clients; a split without deficient clients skips those shuffles, which
        # cannot change it (a Partition sorts every client's indices).
        samples = np.concatenate([p for p, _ in pieces]) if pieces else np.zeros(0, dtype=np.int64)
        owners = np.concatenate([o for _, o in pieces]) if pieces else np.zeros(0, dtype=np.int64)
        order = np.argsort(owners, kind="stable")
        bounds = np.concatenate([[0], np.cumsum(np.bincount(owners, minlength=num_clients))])
        grouped = samples[order]
        parts = [rng.permutation(grouped[bounds[k] : bounds[k + 1]]) for k in range(num_clients)]
        for k in range(num_clients):
            while sizes[k] < min_size:
                donor = int(np.argmax(sizes))
                take = int(rng.integers(sizes[donor]))
                parts[k] = np.append(parts[k], parts[donor][take])
                parts[donor] = np.delete(parts[donor], take)
                sizes[k] += 1
                sizes[donor] -= 1
        owner = np.empty(n, dtype=np.int64)
        for k, p in enumerate(parts):
            owner[p] = k

    moved = int((owner != drawn_owner).sum())
    tv, classes_per_client, _ = _skew(owner, labels, num_clients, num_classes)
    notes = {
        "repair_moved_samples": moved,
        "repair_moved_fraction": moved / n,
        "tv_mean_drawn": tv_drawn,
        "tv_mean": tv,
        "classes_per_client_drawn": classes_drawn,
        "classes_per_client": classes_per_client,
        "empty_clients_drawn": empty_drawn,
    }
    if moved > REPAIR_WARN_FRACTION * n:
        log.warning(
            "partition=dirichlet: min_size=%d moved %d of %d samples (%.1f%%) between clients; label skew "
            "(mean TV distance) %.3f -> %.3f, classes per client %.2f -> %.2f. The split is less skewed than "
            "Dir(alpha=%g): lower partition.min_size or raise partition.alpha.",
            min_size, moved, n, 100 * moved / n, tv_drawn, tv, classes_drawn, classes_per_client, alpha,
        )  # fmt: skip
    return Partition(IndexCSR.from_owners(owner, num_clients), n, notes=notes)


class Dirichlet:
    """Dirichlet label skew with concentration `alpha` (see `dirichlet_partition`)."""

    def __init__(self, num_clients: int = 100, alpha: float = 0.5, min_size: int = 10) -> None:
        self.num_clients = _require_int("partition.num_clients", num_clients, 1)
        self.alpha = _require_positive("partition.alpha", alpha)
        self.min_size = _require_int("partition.min_size", min_size, 0)

    def __call__(self, data: DatasetSplits, rng: np.random.Generator) -> Partition:
        labels = _require_labels(data, "dirichlet")
        return dirichlet_partition(labels, self.num_clients, self.alpha, rng, self.min_size)


# ----------------------------------------------------------------------------- natural clients


def _group_indices(groups: np.ndarray, num_groups: int) -> IndexCSR:
    """Indices of the samples of group 0..num_groups-1 (ascending; empty for an absent group), as
    one CSR: a stable sort of the group ids, not one scan per group."""
    return IndexCSR.from_owners(np.asarray(groups, dtype=np.int64), num_groups)


def natural_partition(groups: np.ndarray, num_groups: int | None = None) -> Partition:
    """One client per natural group id (LEAF user, hospital, speaking role), in id order.

    Without `num_groups`, client k is the k-th distinct id present in `groups`. With it, client k
    is exactly group id k for k in 0..num_groups-1 (a group with no sample gets an empty array).
    For a dataset's train and test groups together, use `Natural`, which keeps every client's
    train split, test split and name aligned.
    """
    groups = np.asarray(groups)
    if groups.ndim != 1:
        raise ValueError(f"groups must be a 1-D array of client ids, got shape {groups.shape}")
    if num_groups is None:
        ids, position = np.unique(groups, return_inverse=True)
        return Partition(_group_indices(position.reshape(-1), len(ids)), len(groups))
    if len(groups) and (not np.issubdtype(groups.dtype, np.integer) or groups.min() < 0 or groups.max() >= num_groups):
        raise ValueError(f"natural_partition(num_groups={num_groups}) needs integer group ids in [0, {num_groups})")
    return Partition(_group_indices(groups, num_groups), len(groups))


class Natural:
    """Use the clients the data comes with (`DatasetSplits.train_groups`, `test_groups`, `group_names`).

    Client k is one natural group: its train samples, its own test samples (when the data has
    `test_groups`) and its name (`group_names`) always belong to the same group, because all three
    are selected by group id in one step.

    A group with no train sample is dropped, with its test split and its name: such a client could
    never train, and keeping it would give the federation a member that size-weighted aggregation
    and the samplers treat as absent anyway. Its test samples stay in the central test set (they
    are scored by `eval/...`) but in no client's test split (not in `eval/clients/...`). The number
    of dropped groups and of their test samples is in `Partition.notes` (`dropped_groups`,
    `dropped_test_samples`) and a warning names them. Groups with train but no test samples are
    kept, with an empty test split.

    Group ids are 0..len(group_names)-1 when the data has names; without names, any integers
    (client k is then the k-th smallest id present in train or test).
    """

    def __call__(self, data: DatasetSplits, rng: np.random.Generator) -> Partition:
        del rng  # the natural split is fixed by the data
        if data.train_groups is None:
            allowed = f"needs a dataset with client ids; {data.name!r} has none (use iid or dirichlet)"
            raise OptionError("partition", "natural", allowed)
        train_groups = np.asarray(data.train_groups).reshape(-1)
        test_groups = None if data.test_groups is None else np.asarray(data.test_groups).reshape(-1)
        present = train_groups if test_groups is None else np.concatenate([train_groups, test_groups])
        if present.size and not np.issubdtype(present.dtype, np.integer):
            raise ValueError(f"{data.name}: natural client ids must be integers, got {present.dtype}")
        if data.group_names is not None:
            ids = np.arange(len(data.group_names))
            if present.size and (present.min() < 0 or present.max() >= len(ids)):
                raise ValueError(f"{data.name}: client ids must lie in [0, {len(ids)}) (one per group name)")
        else:
            ids = np.unique(present)
        # Map every id to its position in `ids`, then select train, test and name by that position.
        train = _group_indices(np.searchsorted(ids, train_groups), len(ids))
        test = None if test_groups is None else _group_indices(np.searchsorted(ids, test_groups), len(ids))
        names = None if data.group_names is None else [str(name) for name in data.group_names]

        has_train = train.sizes() > 0
        keep, dropped = np.flatnonzero(has_train), np.flatnonzero(~has_train).tolist()
        dropped_test = 0 if test is None else int(test.sizes()[~has_train].sum())
        if dropped:
            label = names if names is not None else [str(i) for i in ids]
            shown = ", ".join(label[g] for g in dropped[:5]) + (", ..." if len(dropped) > 5 else "")
            log.warning(
                "partition=natural: %d of %d groups of %s have no train sample and are not clients (%s); "
                "their %d test samples stay in the central test set only",
                len(dropped), len(ids), data.name, shown, dropped_test,
            )  # fmt: skip
        return Partition(
            train=train.select(keep),
            num_samples=len(train_groups),
            test=None if test is None else test.select(keep),
            names=None if names is None else [names[g] for g in keep.tolist()],
            notes={"dropped_groups": len(dropped), "dropped_test_samples": dropped_test},
            num_test_samples=None if test_groups is None else len(test_groups),
        )


# ----------------------------------------------------------------------------- McMahan's shards


def shard_partition(
    labels: np.ndarray, num_clients: int, shards_per_client: int, rng: np.random.Generator
) -> Partition:
    """McMahan et al.'s pathological non-IID split (sort by label, deal out label-sorted shards).

    From "Communication-Efficient Learning of Deep Networks from Decentralized Data" (McMahan et
    al., AISTATS 2017), section 3: sort the data by label, divide it into `num_clients *
    shards_per_client` shards of equal size and give every client `shards_per_client` shards at
    random. With 60,000 MNIST digits, 100 clients and 2 shards each, every shard has 300 samples and
    most clients see only two digits. A shard that straddles the boundary between two labels holds
    both, so a few clients (at most one per label boundary, i.e. num_classes - 1 shards) see one
    more label than they have shards; that is the paper's scheme, not a bug.

    Samples are shuffled before the stable sort, so which samples of a label land in which shard
    depends on the rng, not on the file order. Shard sizes differ by at most one when the number
    of samples is not a multiple of the number of shards. Works for any 1-D target (regression
    targets are sorted by value).
    """
    labels = np.asarray(labels)
    n = len(labels)
    if labels.ndim != 1:
        raise ValueError(f"shard partition needs 1-D targets, got shape {labels.shape}")
    num_clients = _require_clients(num_clients, n)
    why = f" ({num_clients} clients x shards_per_client shards must fit in the {n} samples)"
    shards_per_client = _require_int("partition.shards_per_client", shards_per_client, 1, n // num_clients, why)
    num_shards = num_clients * shards_per_client
    shuffled = rng.permutation(n)
    by_label = shuffled[np.argsort(labels[shuffled], kind="stable")]
    # np.array_split's shard sizes (the first n mod S shards one longer), as a shard id per position.
    shard_sizes = np.full(num_shards, n // num_shards, dtype=np.int64)
    shard_sizes[: n % num_shards] += 1
    shard_of_position = np.repeat(np.arange(num_shards), shard_sizes)
    owner = rng.permutation(num_shards).reshape(num_clients, shards_per_client)
    client_of_shard = np.empty(num_shards, dtype=np.int64)
    client_of_shard[owner.reshape(-1)] = np.repeat(np.arange(num_clients), shards_per_client)
    sample_owner = np.empty(n, dtype=np.int64)
    sample_owner[by_label] = client_of_shard[shard_of_position]
    return Partition(IndexCSR.from_owners(sample_owner, num_clients), n)


class Shards:
    """McMahan et al. 2017 pathological non-IID shards (see `shard_partition`).

    The usual setting is 100 clients x 2 shards: on MNIST, 200 label-sorted shards of 300 digits.
    """

    def __init__(self, num_clients: int = 100, shards_per_client: int = 2) -> None:
        self.num_clients = _require_int("partition.num_clients", num_clients, 1)
        self.shards_per_client = _require_int("partition.shards_per_client", shards_per_client, 1)

    def __call__(self, data: DatasetSplits, rng: np.random.Generator) -> Partition:
        return shard_partition(data.train_labels(), self.num_clients, self.shards_per_client, rng)


# ----------------------------------------------------------------------------- quantity skew


def _check_quantity_skew_options(distribution: Any, sigma: Any, alpha: Any, beta: Any) -> None:
    # All three shape parameters are checked whatever the distribution: a negative one is a typo
    # in any setting, and a sweep that switches `distribution` should not hit it later.
    if distribution not in DISTRIBUTIONS:
        raise OptionError("partition.distribution", distribution, ", ".join(DISTRIBUTIONS))
    _require_positive("partition.sigma", sigma, allow_zero=True)
    _require_positive("partition.alpha", alpha)
    _require_positive("partition.beta", beta)


def _shares_from_log(log_weights: np.ndarray) -> np.ndarray:
    """exp(log_weights) normalized to sum to 1, computed without overflow (shifted by the max).

    An entry of +inf (a weight too large for a float even as a logarithm) outweighs every finite
    one: the +inf entries share everything equally, the limit of the finite case; -inf entries get
    0, and if every entry is -inf they share equally.
    """
    top = log_weights.max()
    if not np.isfinite(top):
        winners = (log_weights == top).astype(np.float64)
        return winners / winners.sum()
    weights = np.exp(log_weights - top)  # the largest is exp(0) = 1, so the sum is in [1, num_clients]
    return weights / weights.sum()


def _largest_remainder(shares: np.ndarray, total: int) -> np.ndarray:
    """Integer sizes summing to `total` exactly, proportional to `shares` (Hamilton's method).

    Floor every share, then hand the leftover to the clients whose shares were cut the most. With
    shares that sum to 1 up to rounding, the floors sum to total - leftover with 0 <= leftover <
    len(shares); the clamp and the loop only guard against rounding at the edges.
    """
    quota = shares * total
    sizes = np.minimum(np.floor(quota), total).astype(np.int64)
    leftover = total - int(sizes.sum())
    remainder = quota - sizes
    order = np.argsort(-remainder, kind="stable")
    while leftover > 0:
        take = order[: min(leftover, len(order))]
        sizes[take] += 1
        leftover -= len(take)
    while leftover < 0:  # only if the floors overshot through rounding: take back from the smallest remainders
        k = next(int(i) for i in order[::-1] if sizes[i] > 0)
        sizes[k] -= 1
        leftover += 1
    return sizes


def _quantity_skew_sizes(
    num_samples: int,
    num_clients: int,
    rng: np.random.Generator,
    distribution: str,
    sigma: float,
    alpha: float,
    beta: float,
    min_size: int,
) -> tuple[np.ndarray, dict[str, float]]:
    """`quantity_skew_sizes` plus notes (`log_space`: 1 when the direct weights overflowed)."""
    _check_quantity_skew_options(distribution, sigma, alpha, beta)
    num_clients = _require_clients(num_clients, num_samples)
    min_size = _require_min_size(min_size, num_clients, num_samples)
    # The weights are drawn as they always were, so every split that came out right before stays
    # identical. Only when they overflow (a log-normal with sigma ~ 250, a power law with alpha ~
    # 1e-3: weights of e^1000) is the same draw repeated, from the same generator state, in log
    # space, where the shares are exact: exp(log w - max log w) never overflows.
    state = rng.bit_generator.state
    with np.errstate(over="ignore", invalid="ignore"):
        if distribution == "lognormal":
            weights = rng.lognormal(mean=0.0, sigma=sigma, size=num_clients)
        elif distribution == "powerlaw":
            weights = rng.pareto(alpha, size=num_clients) + 1.0  # Pareto(x_m=1, alpha)
        else:
            weights = rng.dirichlet(np.full(num_clients, beta))
        total = weights.sum()
    log_space = not (np.isfinite(weights).all() and np.isfinite(total) and total > 0)
    if not log_space:
        shares = weights / total
    else:
        rng.bit_generator.state = state
        if distribution == "lognormal":
            log_weights = sigma * rng.standard_normal(num_clients)  # lognormal = exp(sigma * N(0, 1))
        elif distribution == "powerlaw":
            log_weights = rng.standard_exponential(num_clients) / alpha  # 1 + Pareto(alpha) = exp(E / alpha)
        else:  # Dir(beta) in log space: log Gamma(beta) draws, normalized like the others
            with np.errstate(divide="ignore"):
                log_weights = np.log(rng.standard_gamma(beta, size=num_clients))
            if np.isneginf(log_weights).all():  # every gamma draw underflowed: no information left, equal shares
                log_weights = np.zeros(num_clients)
        shares = _shares_from_log(log_weights)
    rest = num_samples - num_clients * min_size
    sizes = _largest_remainder(shares, rest) + min_size
    return sizes, {"log_space": float(log_space)}


def quantity_skew_sizes(
    num_samples: int,
    num_clients: int,
    rng: np.random.Generator,
    distribution: str = "lognormal",
    sigma: float = 1.0,
    alpha: float = 1.5,
    beta: float = 0.5,
    min_size: int = 1,
) -> np.ndarray:
    """Client sizes that sum to `num_samples` exactly, each >= `min_size`, with skewed proportions.

    Proportions p_k ~ LogNormal(0, sigma) (the "unbalanced" setting of LEAF and pfl-research; sigma=0
    is balanced), Pareto with tail index `alpha` (power law, like LEAF's user sizes; smaller alpha
    is heavier-tailed), or Dir(beta) (NIID-Bench's quantity skew, Li et al. 2022). Every client first
    gets `min_size`; the rest is shared in proportion to p by the largest-remainder method, so the
    sizes are exact (no rounding drift) and nothing is ever redrawn. Extreme parameters whose weights
    overflow (sigma in the hundreds, alpha near 0) are computed in log space: still exact, with one
    or a few clients holding nearly everything above `min_size`, as the distribution says.
    """
    sizes, _ = _quantity_skew_sizes(num_samples, num_clients, rng, distribution, sigma, alpha, beta, min_size)
    return sizes


def quantity_skew_partition(
    num_samples: int,
    num_clients: int,
    rng: np.random.Generator,
    distribution: str = "lognormal",
    sigma: float = 1.0,
    alpha: float = 1.5,
    beta: float = 0.5,
    min_size: int = 1,
) -> Partition:
    """IID labels, skewed sizes: shuffle, then cut at the sizes from `quantity_skew_sizes`."""
    sizes, notes = _quantity_skew_sizes(num_samples, num_clients, rng, distribution, sigma, alpha, beta, min_size)
    order = rng.permutation(num_samples)
    return Partition(IndexCSR.from_sizes(order, sizes), num_samples, notes=notes)


class QuantitySkew:
    """IID label distribution, log-normal / power-law / Dirichlet client sizes (see `quantity_skew_sizes`)."""

    def __init__(
        self,
        num_clients: int = 100,
        distribution: str = "lognormal",
        sigma: float = 1.0,
        alpha: float = 1.5,
        beta: float = 0.5,
        min_size: int = 10,
    ) -> None:
        _check_quantity_skew_options(distribution, sigma, alpha, beta)
        self.num_clients = _require_int("partition.num_clients", num_clients, 1)
        self.distribution = distribution
        self.sigma = sigma
        self.alpha = alpha
        self.beta = beta
        self.min_size = _require_int("partition.min_size", min_size, 0)

    def __call__(self, data: DatasetSplits, rng: np.random.Generator) -> Partition:
        return quantity_skew_partition(
            len(data.train_y),
            self.num_clients,
            rng,
            distribution=self.distribution,
            sigma=self.sigma,
            alpha=self.alpha,
            beta=self.beta,
            min_size=self.min_size,
        )


# ----------------------------------------------------------------------------- statistics


def label_count_matrix(
    partition: Sequence[np.ndarray], labels: np.ndarray, num_classes: int | None = None
) -> np.ndarray:
    """(num_clients, num_classes) matrix: how many samples of each class every client holds.

    One bincount over the partition's CSR (a list of arrays is converted first): O(samples + clients).
    """
    labels = np.asarray(labels)
    num_classes = int(labels.max()) + 1 if num_classes is None else num_classes
    if isinstance(partition, Partition):
        csr = partition.train
    elif isinstance(partition, IndexCSR):
        csr = partition
    else:
        csr = IndexCSR.from_lists(partition)
    return _owner_label_counts(csr.owners(), labels[csr.values], len(csr), num_classes)


def _owner_label_counts(owner: np.ndarray, labels: np.ndarray, num_clients: int, num_classes: int) -> np.ndarray:
    """counts[k, c] = number of i with owner[i] == k and labels[i] == c (labels in [0, num_classes))."""
    flat = owner.astype(np.int64) * num_classes + np.asarray(labels, dtype=np.int64)
    return np.bincount(flat, minlength=num_clients * num_classes).reshape(num_clients, num_classes)


def partition_stats(label_counts: np.ndarray) -> dict[str, float]:
    """Size and label-skew statistics of a partition, from its (clients x classes) label counts.

    Returns plain floats (ready for logging as TensorBoard scalars or HParams):
      num_clients, num_samples, empty_clients;
      size_mean, size_std, size_min, size_max, size_cv (std/mean: 0 when balanced; population std);
      classes_per_client_mean/min/max (classes with at least one sample; C when IID);
      tv_mean, tv_max: total-variation distance 0.5 * sum_c |p_k(c) - p(c)| between a client's label
        distribution and the global one (0 for IID, near 1 - p(c) for one-class clients), over
        non-empty clients; the mean is the label-skew number to compare Dirichlet alphas with;
      entropy_mean: mean label entropy of the non-empty clients, in nats.
    """
    counts = np.asarray(label_counts, dtype=np.float64)
    if counts.ndim != 2 or counts.shape[0] == 0:
        raise ValueError(f"label_counts must be a non-empty (clients, classes) matrix, got shape {counts.shape}")
    sizes = counts.sum(axis=1)
    nonempty = sizes > 0
    global_dist = counts.sum(axis=0) / max(sizes.sum(), 1.0)
    client_dist = counts[nonempty] / sizes[nonempty, None]
    # Over non-empty clients only: an empty client has no label distribution. NaN if all are empty.
    tv = 0.5 * np.abs(client_dist - global_dist).sum(axis=1) if nonempty.any() else np.array([np.nan])
    safe = np.where(client_dist > 0, client_dist, 1.0)
    entropy = -(client_dist * np.log(safe)).sum(axis=1) if nonempty.any() else np.array([np.nan])
    classes = (counts > 0).sum(axis=1)
    return {
        "num_clients": float(len(sizes)),
        "num_samples": float(sizes.sum()),
        "empty_clients": float((~nonempty).sum()),
        "size_mean": float(sizes.mean()),
        "size_std": float(sizes.std()),
        "size_min": float(sizes.min()),
        "size_max": float(sizes.max()),
        "size_cv": float(sizes.std() / sizes.mean()) if sizes.mean() > 0 else 0.0,
        "classes_per_client_mean": float(classes.mean()),
        "classes_per_client_min": float(classes.min()),
        "classes_per_client_max": float(classes.max()),
        "tv_mean": float(tv.mean()),
        "tv_max": float(tv.max()),
        "entropy_mean": float(entropy.mean()),
    }
