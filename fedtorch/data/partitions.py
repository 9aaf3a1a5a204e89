"""Partitioners: how a centralized train set is split across clients.

A partitioner is a callable `(data: DatasetSplits, rng: np.random.Generator) -> list[np.ndarray]`
returning, for every client, the indices of its training samples. The lists are disjoint and
together cover every sample exactly once (tests check this for every partitioner). Each one is
deterministic for a given `rng` state and runs in bounded time: none retries at random until a
condition happens to hold.

    IID            uniform random, near-equal sizes
    Dirichlet      label skew, class proportions ~ Dir(alpha)        (Hsu et al. 2019)
    Shards         pathological: label-sorted shards, 2 per client    (McMahan et al. 2017)
    QuantitySkew   IID labels, log-normal / power-law / Dirichlet sizes (LEAF; Li et al. 2022)
    Natural        the data's own clients (LEAF users, hospitals, speaking roles)

`partition_stats(label_count_matrix(parts, labels))` summarizes any split (sizes, classes per client,
distance of client label distributions from the global one) for logs and tests.
"""

from __future__ import annotations

import numpy as np

from fedtorch.data.base import DatasetSplits


def iid_partition(num_samples: int, num_clients: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffle the samples and deal them into `num_clients` near-equal parts (sizes differ by <= 1)."""
    if num_clients < 1 or num_clients > num_samples:
        raise ValueError(f"num_clients={num_clients} must be in [1, {num_samples}] (the number of samples)")
    order = rng.permutation(num_samples)
    return [np.sort(part) for part in np.array_split(order, num_clients)]


def dirichlet_partition(
    labels: np.ndarray,
    num_clients: int,
    alpha: float,
    rng: np.random.Generator,
    min_size: int = 1,
) -> list[np.ndarray]:
    """Label-skewed split: each class is spread over clients with proportions ~ Dir(alpha).

    The scheme of Hsu et al. 2019 ("Measuring the effects of non-identical data distribution for
    federated visual classification"), used by most FL benchmarks: small alpha (0.1) gives each
    client few classes, large alpha (100) approaches IID.

    The usual implementation redraws all proportions until every client has `min_size` samples,
    which can loop forever for small alpha. Here a single draw is made and then repaired: clients
    below `min_size` take random samples from the currently largest client. Each move raises a
    deficient client by one and the total is fixed, so the repair ends after at most
    `num_clients * min_size` moves.
    """
    labels = np.asarray(labels)
    n = len(labels)
    if alpha <= 0:
        raise ValueError(f"alpha={alpha} must be > 0")
    if num_clients < 1 or num_clients * min_size > n:
        raise ValueError(f"num_clients={num_clients} with min_size={min_size} needs <= {n} samples in total")
    assignment = [[] for _ in range(num_clients)]
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        proportions = rng.dirichlet(np.full(num_clients, alpha))
        cuts = (np.cumsum(proportions)[:-1] * len(idx)).astype(np.int64)
        for k, part in enumerate(np.split(idx, cuts)):
            assignment[k].extend(part.tolist())
    parts = [rng.permutation(np.asarray(a, dtype=np.int64)) for a in assignment]
    sizes = np.array([len(p) for p in parts])
    for k in range(num_clients):
        while sizes[k] < min_size:
            donor = int(np.argmax(sizes))
            take = int(rng.integers(sizes[donor]))
            parts[k] = np.append(parts[k], parts[donor][take])
            parts[donor] = np.delete(parts[donor], take)
            sizes[k] += 1
            sizes[donor] -= 1
    return [np.sort(p) for p in parts]


def natural_partition(groups: np.ndarray, num_groups: int | None = None) -> list[np.ndarray]:
    """One client per natural group id (LEAF user, hospital, speaking role), in id order.

    Without `num_groups`, client k is the k-th distinct id present in `groups`. With it, client k
    is exactly group id k for k in 0..num_groups-1 (a group with no sample gets an empty array), so
    the train and test partitions of one loader line up client by client even when a group has no
    test sample: `natural_partition(data.test_groups, num_groups=len(data.group_names))`.
    Indices are ascending within each client. O(N log N): one stable argsort, not one scan per group.
    """
    groups = np.asarray(groups)
    if groups.ndim != 1:
        raise ValueError(f"groups must be a 1-D array of client ids, got shape {groups.shape}")
    order = np.argsort(groups, kind="stable")
    sorted_ids = groups[order]
    if num_groups is None:
        ids, starts = np.unique(sorted_ids, return_index=True)
        return [part.astype(np.int64) for part in np.split(order, starts[1:])] if len(ids) else []
    if len(groups) and (not np.issubdtype(groups.dtype, np.integer) or groups.min() < 0 or groups.max() >= num_groups):
        raise ValueError(f"natural_partition(num_groups={num_groups}) needs integer group ids in [0, {num_groups})")
    bounds = np.searchsorted(sorted_ids, np.arange(num_groups + 1))
    return [order[bounds[g] : bounds[g + 1]].astype(np.int64) for g in range(num_groups)]


class IID:
    """Uniform random split into `num_clients` near-equal clients."""

    def __init__(self, num_clients: int = 100) -> None:
        self.num_clients = num_clients

    def __call__(self, data: DatasetSplits, rng: np.random.Generator) -> list[np.ndarray]:
        return iid_partition(len(data.train_y), self.num_clients, rng)


class Dirichlet:
    """Dirichlet label skew with concentration `alpha` (see `dirichlet_partition`)."""

    def __init__(self, num_clients: int = 100, alpha: float = 0.5, min_size: int = 10) -> None:
        self.num_clients = num_clients
        self.alpha = alpha
        self.min_size = min_size

    def __call__(self, data: DatasetSplits, rng: np.random.Generator) -> list[np.ndarray]:
        if not data.is_classification:
            raise ValueError(f"partition=dirichlet needs class labels; dataset {data.name!r} is a regression task")
        return dirichlet_partition(data.train_labels(), self.num_clients, self.alpha, rng, self.min_size)


class Natural:
    """Use the clients the data comes with (`DatasetSplits.train_groups`)."""

    def __call__(self, data: DatasetSplits, rng: np.random.Generator) -> list[np.ndarray]:
        if data.train_groups is None:
            raise ValueError(
                f"partition=natural needs a dataset with client ids; {data.name!r} has none "
                "(use partition=iid or partition=dirichlet)"
            )
        return natural_partition(data.train_groups)


def shard_partition(
    labels: np.ndarray, num_clients: int, shards_per_client: int, rng: np.random.Generator
) -> list[np.ndarray]:
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
    num_shards = num_clients * shards_per_client
    if labels.ndim != 1:
        raise ValueError(f"shard partition needs 1-D targets, got shape {labels.shape}")
    if num_clients < 1 or shards_per_client < 1 or num_shards > len(labels):
        raise ValueError(
            f"num_clients={num_clients} x shards_per_client={shards_per_client} = {num_shards} shards "
            f"must be in [1, {len(labels)}] (the number of samples)"
        )
    shuffled = rng.permutation(len(labels))
    by_label = shuffled[np.argsort(labels[shuffled], kind="stable")]
    shards = np.array_split(by_label, num_shards)
    owner = rng.permutation(num_shards).reshape(num_clients, shards_per_client)
    return [np.sort(np.concatenate([shards[s] for s in owner[k]])) for k in range(num_clients)]


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
    sizes are exact (no rounding drift) and nothing is ever redrawn.
    """
    if num_clients < 1 or num_clients * min_size > num_samples:
        raise ValueError(f"num_clients={num_clients} with min_size={min_size} needs <= {num_samples} samples in total")
    if distribution == "lognormal":
        if sigma < 0:
            raise ValueError(f"sigma={sigma} must be >= 0")
        weights = rng.lognormal(mean=0.0, sigma=sigma, size=num_clients)
    elif distribution == "powerlaw":
        if alpha <= 0:
            raise ValueError(f"alpha={alpha} must be > 0")
        weights = rng.pareto(alpha, size=num_clients) + 1.0  # Pareto(x_m=1, alpha)
    elif distribution == "dirichlet":
        if beta <= 0:
            raise ValueError(f"beta={beta} must be > 0")
        weights = rng.dirichlet(np.full(num_clients, beta))
    else:
        raise ValueError(f"distribution={distribution!r}; allowed: 'lognormal', 'powerlaw', 'dirichlet'")
    rest = num_samples - num_clients * min_size
    share = weights / weights.sum() * rest
    sizes = np.floor(share).astype(np.int64)
    # Largest remainder: hand the leftover samples to the clients whose shares were cut the most.
    leftover = rest - int(sizes.sum())
    sizes[np.argsort(-(share - sizes), kind="stable")[:leftover]] += 1
    return sizes + min_size


def quantity_skew_partition(
    num_samples: int,
    num_clients: int,
    rng: np.random.Generator,
    distribution: str = "lognormal",
    sigma: float = 1.0,
    alpha: float = 1.5,
    beta: float = 0.5,
    min_size: int = 1,
) -> list[np.ndarray]:
    """IID labels, skewed sizes: shuffle, then cut at the sizes from `quantity_skew_sizes`."""
    sizes = quantity_skew_sizes(num_samples, num_clients, rng, distribution, sigma, alpha, beta, min_size)
    order = rng.permutation(num_samples)
    return [np.sort(part) for part in np.split(order, np.cumsum(sizes)[:-1])]


def label_count_matrix(partition: list[np.ndarray], labels: np.ndarray, num_classes: int | None = None) -> np.ndarray:
    """(num_clients, num_classes) matrix: how many samples of each class every client holds."""
    labels = np.asarray(labels)
    num_classes = int(labels.max()) + 1 if num_classes is None else num_classes
    counts = np.zeros((len(partition), num_classes), dtype=np.int64)
    for k, ix in enumerate(partition):
        counts[k] = np.bincount(labels[np.asarray(ix, dtype=np.int64)], minlength=num_classes)
    return counts


def partition_stats(label_counts: np.ndarray) -> dict[str, float]:
    """Size and label-skew statistics of a partition, from its (clients x classes) label counts.

    Returns plain floats (ready for logging as TensorBoard scalars or HParams):
      num_clients, num_samples, empty_clients;
      size_mean, size_std, size_min, size_max, size_cv (std/mean: 0 when balanced);
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


class Shards:
    """McMahan et al. 2017 pathological non-IID shards (see `shard_partition`).

    The usual setting is 100 clients x 2 shards: on MNIST, 200 label-sorted shards of 300 digits.
    """

    def __init__(self, num_clients: int = 100, shards_per_client: int = 2) -> None:
        self.num_clients = num_clients
        self.shards_per_client = shards_per_client

    def __call__(self, data: DatasetSplits, rng: np.random.Generator) -> list[np.ndarray]:
        return shard_partition(data.train_labels(), self.num_clients, self.shards_per_client, rng)


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
        if distribution not in ("lognormal", "powerlaw", "dirichlet"):
            raise ValueError(f"distribution={distribution!r}; allowed: 'lognormal', 'powerlaw', 'dirichlet'")
        self.num_clients = num_clients
        self.distribution = distribution
        self.sigma = sigma
        self.alpha = alpha
        self.beta = beta
        self.min_size = min_size

    def __call__(self, data: DatasetSplits, rng: np.random.Generator) -> list[np.ndarray]:
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
