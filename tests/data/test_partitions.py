"""Partitioners: every split is disjoint, covers all samples, is seed-deterministic, and skews as documented."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from fedtorch.data.base import DatasetSplits
from fedtorch.data.partitions import (
    IID,
    Dirichlet,
    Natural,
    QuantitySkew,
    Shards,
    dirichlet_partition,
    label_count_matrix,
    natural_partition,
    partition_stats,
    quantity_skew_sizes,
    shard_partition,
)
from tests.conftest import shared_data_dir

MNIST_RAW = shared_data_dir() / "MNIST" / "raw"


def make_splits(labels: np.ndarray, groups: np.ndarray | None = None, num_classes: int = 10) -> DatasetSplits:
    n = len(labels)
    return DatasetSplits(
        name="toy",
        train_x=torch.zeros(n, 1),
        train_y=torch.as_tensor(labels, dtype=torch.int64),
        test_x=torch.zeros(1, 1),
        test_y=torch.zeros(1, dtype=torch.int64),
        num_classes=num_classes,
        train_groups=groups,
    )


@pytest.fixture(scope="module")
def toy() -> DatasetSplits:
    rng = np.random.default_rng(123)
    labels = rng.integers(0, 10, size=6000)
    groups = rng.integers(0, 37, size=6000)
    return make_splits(labels, groups)


@pytest.fixture(scope="module")
def mnist_labels() -> np.ndarray:
    if not (MNIST_RAW / "train-labels-idx1-ubyte").is_file():
        pytest.skip(f"real MNIST not found in {MNIST_RAW} (set FEDTORCH_DATA to the shared data folder)")
    from fedtorch.data.mnist import read_idx

    return read_idx(MNIST_RAW / "train-labels-idx1-ubyte").astype(np.int64)


PARTITIONERS = {
    "iid": IID(num_clients=50),
    "dirichlet": Dirichlet(num_clients=50, alpha=0.3, min_size=5),
    "shards": Shards(num_clients=50, shards_per_client=2),
    "lognormal": QuantitySkew(num_clients=50, distribution="lognormal", sigma=1.5, min_size=5),
    "powerlaw": QuantitySkew(num_clients=50, distribution="powerlaw", alpha=1.2, min_size=5),
    "dirichlet_sizes": QuantitySkew(num_clients=50, distribution="dirichlet", beta=0.3, min_size=5),
    "natural": Natural(),
}


def assert_exact_cover(parts: list[np.ndarray], n: int) -> None:
    joined = np.concatenate(parts)
    assert len(joined) == n, "samples lost or duplicated"
    assert np.array_equal(np.sort(joined), np.arange(n)), "partition is not a disjoint cover of 0..n-1"
    assert all(p.dtype.kind == "i" for p in parts)


@pytest.mark.parametrize("name", PARTITIONERS)
def test_disjoint_cover_and_deterministic(name: str, toy: DatasetSplits) -> None:
    partitioner = PARTITIONERS[name]
    parts = partitioner(toy, np.random.default_rng(7))
    assert_exact_cover(parts, len(toy.train_y))
    again = partitioner(toy, np.random.default_rng(7))
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True)), "same seed, different split"
    if name != "natural":
        other = partitioner(toy, np.random.default_rng(8))
        assert any(not np.array_equal(a, b) for a, b in zip(parts, other, strict=True)), "seed has no effect"


def test_natural_partition_alignment() -> None:
    groups = np.array([2, 0, 2, 3, 0])
    assert [p.tolist() for p in natural_partition(groups)] == [[1, 4], [0, 2], [3]]
    aligned = natural_partition(groups, num_groups=5)
    assert [p.tolist() for p in aligned] == [[1, 4], [], [0, 2], [3], []]  # client k is group k
    assert natural_partition(np.array([], dtype=np.int64)) == []
    with pytest.raises(ValueError, match="num_groups=3"):
        natural_partition(groups, num_groups=3)


def test_natural_requires_groups() -> None:
    with pytest.raises(ValueError, match="partition=natural"):
        Natural()(make_splits(np.zeros(10, dtype=np.int64)), np.random.default_rng(0))


def test_shards_single_label_when_shards_align() -> None:
    # 10 classes x 600 samples, 200 shards of 30: no shard straddles a label boundary, so every
    # client holds exactly shards_per_client shards and at most that many labels.
    labels = np.random.default_rng(0).permutation(np.repeat(np.arange(10), 600))
    parts = shard_partition(labels, num_clients=100, shards_per_client=2, rng=np.random.default_rng(1))
    assert_exact_cover(parts, len(labels))
    counts = label_count_matrix(parts, labels, 10)
    assert (counts.sum(axis=1) == 60).all()
    assert ((counts > 0).sum(axis=1) <= 2).all()
    assert (counts[counts > 0] % 30 == 0).all(), "a client holds part of a shard"


def test_shards_mcmahan_mnist(mnist_labels: np.ndarray) -> None:
    """100 clients x 2 shards on MNIST: 200 shards of exactly 300 digits (McMahan et al. 2017)."""
    one_shard_each = shard_partition(mnist_labels, 200, 1, np.random.default_rng(0))
    assert [len(p) for p in one_shard_each] == [300] * 200
    labels_per_shard = (label_count_matrix(one_shard_each, mnist_labels, 10) > 0).sum(axis=1)
    # A shard straddles at most one label boundary; there are 9 boundaries among 10 digits.
    assert labels_per_shard.max() <= 2 and (labels_per_shard == 2).sum() <= 9

    parts = Shards(num_clients=100, shards_per_client=2)(make_splits(mnist_labels), np.random.default_rng(0))
    assert_exact_cover(parts, 60000)
    assert all(len(p) == 600 for p in parts)
    stats = partition_stats(label_count_matrix(parts, mnist_labels, 10))
    assert stats["classes_per_client_max"] <= 2 * 2
    labels_per_client = (label_count_matrix(parts, mnist_labels, 10) > 0).sum(axis=1)
    assert (labels_per_client <= 2).sum() >= 100 - 9  # only clients holding a straddling shard exceed 2
    assert stats["tv_mean"] > 0.7  # pathological: far from the global label distribution


def test_dirichlet_skew_grows_as_alpha_falls() -> None:
    labels = np.random.default_rng(0).integers(0, 10, size=20000)
    stats = {
        alpha: partition_stats(
            label_count_matrix(dirichlet_partition(labels, 50, alpha, np.random.default_rng(1), 5), labels, 10)
        )
        for alpha in (100.0, 1.0, 0.1, 0.01)
    }
    tv = [stats[a]["tv_mean"] for a in (100.0, 1.0, 0.1, 0.01)]
    classes = [stats[a]["classes_per_client_mean"] for a in (100.0, 1.0, 0.1, 0.01)]
    assert tv == sorted(tv) and tv[0] < 0.1 and tv[-1] > 0.7, tv
    assert classes == sorted(classes, reverse=True) and classes[0] == 10 and classes[-1] < 3, classes


def test_dirichlet_min_size_small_alpha_terminates_fast() -> None:
    labels = np.random.default_rng(0).integers(0, 10, size=60000)
    start = time.perf_counter()
    parts = Dirichlet(num_clients=100, alpha=0.01, min_size=10)(make_splits(labels), np.random.default_rng(3))
    elapsed = time.perf_counter() - start
    assert_exact_cover(parts, 60000)
    assert min(len(p) for p in parts) >= 10
    assert elapsed < 5.0, f"Dirichlet(alpha=0.01) took {elapsed:.1f}s"
    with pytest.raises(ValueError, match="min_size"):
        dirichlet_partition(labels[:500], 100, 0.5, np.random.default_rng(0), min_size=10)


@pytest.mark.parametrize("distribution", ["lognormal", "powerlaw", "dirichlet"])
def test_quantity_skew_sizes_exact(distribution: str) -> None:
    sizes = quantity_skew_sizes(10007, 97, np.random.default_rng(0), distribution, min_size=20)
    assert sizes.sum() == 10007 and sizes.min() >= 20 and len(sizes) == 97


def test_quantity_skew_shape() -> None:
    labels = np.random.default_rng(0).integers(0, 10, size=30000)
    data = make_splits(labels)

    def stats_for(**kw: object) -> dict[str, float]:
        parts = QuantitySkew(num_clients=100, min_size=10, **kw)(data, np.random.default_rng(5))  # type: ignore[arg-type]
        assert_exact_cover(parts, 30000)
        return partition_stats(label_count_matrix(parts, labels, 10))

    balanced, mild, strong = stats_for(sigma=0.0), stats_for(sigma=0.5), stats_for(sigma=2.0)
    assert balanced["size_max"] - balanced["size_min"] <= 1
    assert balanced["size_cv"] < mild["size_cv"] < strong["size_cv"]
    assert strong["size_min"] >= 10
    # Labels stay IID: far less label skew than a Dirichlet(0.1) split of the same data.
    dirichlet = partition_stats(label_count_matrix(Dirichlet(100, 0.1, 10)(data, np.random.default_rng(5)), labels, 10))
    assert mild["tv_mean"] < 0.15 < dirichlet["tv_mean"]
    with pytest.raises(ValueError, match="distribution"):
        QuantitySkew(distribution="zipf")


def test_partition_stats_by_hand() -> None:
    stats = partition_stats(np.array([[5, 5], [10, 0], [0, 0]]))
    # global distribution (0.75, 0.25); both non-empty clients are 0.25 away in total variation
    assert stats["num_clients"] == 3 and stats["num_samples"] == 20 and stats["empty_clients"] == 1
    assert stats["tv_mean"] == pytest.approx(0.25) and stats["tv_max"] == pytest.approx(0.25)
    assert stats["classes_per_client_mean"] == pytest.approx(1.0)  # 2, 1, 0
    assert stats["size_mean"] == pytest.approx(20 / 3) and stats["size_min"] == 0 and stats["size_max"] == 10
    assert stats["entropy_mean"] == pytest.approx(np.log(2) / 2)
    with pytest.raises(ValueError):
        partition_stats(np.zeros(3))


@pytest.mark.parametrize(
    "partitioner",
    [IID(num_clients=200), Shards(num_clients=100, shards_per_client=3), QuantitySkew(num_clients=100, min_size=3)],
)
def test_too_many_clients_is_a_clear_error(partitioner: object) -> None:
    with pytest.raises(ValueError):
        partitioner(make_splits(np.zeros(150, dtype=np.int64)), np.random.default_rng(0))  # type: ignore[operator]


def test_partition_configs_compose(compose_config) -> None:  # noqa: ANN001 - fixture from tests/conftest.py
    from hydra.utils import instantiate

    for name, cls in (("shards", Shards), ("quantity_skew", QuantitySkew)):
        cfg = compose_config(f"partition={name}")
        partitioner = instantiate(cfg.partition)
        assert isinstance(partitioner, cls) and partitioner.num_clients == 100
