"""Per-client test splits and unseen clients (`fedtorch.data.splits`): every sample lands exactly
once, in its own client's train or test split, in the counts documented; the split is fixed by the
seed; bad combinations are refused in one line.

Samples are identified by their value (train_x[i] = i), so the checks do not trust any index
bookkeeping of the code under test."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedtorch.data.base import DatasetSplits, Partition
from fedtorch.data.partitions import Natural, iid_partition, shard_partition
from fedtorch.data.splits import ClientSplit
from fedtorch.errors import OptionError


def _data(n: int = 300, test: int = 30, groups: bool = False) -> DatasetSplits:
    rng = np.random.default_rng(1)
    return DatasetSplits(
        "ids",
        torch.arange(n, dtype=torch.float32).unsqueeze(1),
        torch.from_numpy(rng.integers(0, 5, n)),
        -torch.arange(1, test + 1, dtype=torch.float32).unsqueeze(1),
        torch.from_numpy(rng.integers(0, 5, test)),
        num_classes=5,
        train_groups=rng.integers(0, 6, n) if groups else None,
        test_groups=rng.integers(0, 6, test) if groups else None,
    )


def _ids(x: torch.Tensor, ix: torch.Tensor | np.ndarray | None = None) -> set[int]:
    if ix is not None:
        x = x[ix if isinstance(ix, torch.Tensor) else torch.from_numpy(np.array(ix))]
    return {int(v) for v in x.reshape(-1)}


def test_every_sample_lands_once_in_its_own_clients_train_or_test_split():
    data = _data()
    partition = shard_partition(data.train_labels(), 12, 2, np.random.default_rng(0))
    split = ClientSplit(test_fraction=0.25, holdout=0.25)
    result = split(data, partition, np.random.default_rng(7))
    assert len(result.unseen_ids) == 3 and sorted(result.seen_ids + result.unseen_ids) == list(range(12))
    seen_train = [_ids(result.data.train_x, ix) for ix in result.partition.train]
    seen_test = [_ids(result.client_tests.x, ix) for ix in result.client_tests.indices]
    unseen = result.unseen
    unseen_train = [_ids(unseen.train_x, ix) for ix in unseen.client_indices]
    unseen_test = [_ids(unseen.test_x, ix) for ix in unseen.client_test_indices]
    everything = seen_train + seen_test + unseen_train + unseen_test
    assert sum(len(s) for s in everything) == 300 and set().union(*everything) == set(range(300))
    for position, k in enumerate(result.seen_ids):
        own = {int(i) for i in partition.train[k]}
        assert seen_train[position] | seen_test[position] == own
        assert len(seen_test[position]) == round(0.25 * len(own))
    for position, k in enumerate(result.unseen_ids):
        own = {int(i) for i in partition.train[k]}
        assert unseen_train[position] | unseen_test[position] == own
        assert len(unseen_test[position]) == round(0.25 * len(own))
    assert torch.equal(result.data.test_x, data.test_x)  # the central test set is untouched
    assert result.partition.notes["holdout_clients"] == 3 and result.partition.notes["test_fraction"] == 0.25


def test_the_seed_fixes_the_split_and_labels_travel_with_their_samples():
    data = _data()
    partition = iid_partition(300, 10, np.random.default_rng(0))
    split = ClientSplit(test_fraction=0.3, holdout=0.2)
    a, b = split(data, partition, np.random.default_rng(3)), split(data, partition, np.random.default_rng(3))
    c = split(data, partition, np.random.default_rng(4))
    assert a.unseen_ids == b.unseen_ids and all(
        torch.equal(x, y) for x, y in zip(a.client_tests.indices, b.client_tests.indices)
    )
    assert a.unseen_ids != c.unseen_ids or not torch.equal(a.client_tests.x, c.client_tests.x)
    for x, y in (
        (a.data.train_x, a.data.train_y),
        (a.client_tests.x, a.client_tests.y),
        (a.unseen.test_x, a.unseen.test_y),
    ):
        assert torch.equal(y, data.train_y[x.reshape(-1).long()])


def test_a_client_keeps_at_least_one_train_sample_and_zero_is_a_no_op():
    split = ClientSplit(test_fraction=0.9)
    assert split.test_count(1) == 0 and split.test_count(2) == 1 and split.test_count(10) == 9
    assert not ClientSplit().active
    assert ClientSplit(holdout=0.01).holdout_count(10) == 1  # a positive holdout keeps at least one client out


def test_natural_partitions_keep_their_own_test_splits():
    data = _data(groups=True)
    partition = Natural()(data, np.random.default_rng(0))
    with pytest.raises(OptionError, match=r"test_fraction=0.2 is invalid: 0 for this partition"):
        ClientSplit(test_fraction=0.2)(data, partition, np.random.default_rng(0))
    result = ClientSplit(holdout=0.34)(data, partition, np.random.default_rng(0))
    assert result.client_tests is None and len(result.unseen_ids) == 2
    for position, k in enumerate(result.unseen_ids):  # the unseen clients score on their natural tests
        assert _ids(result.unseen.test_x, result.unseen.client_test_indices[position]) == _ids(
            data.test_x, partition.test[k]
        )
    for position, k in enumerate(result.seen_ids):
        assert np.array_equal(result.partition.test[position], partition.test[k])


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"test_fraction": 1.0}, "test_fraction"),
        ({"holdout": -0.1}, "holdout"),
        ({"test_fraction": "a"}, "test_fraction"),
    ],
)
def test_bad_options_name_their_key(kwargs, key):
    with pytest.raises(OptionError, match=rf"^{key}="):
        ClientSplit(**kwargs)


def test_holdout_needs_test_splits_and_a_training_client():
    data = _data()
    partition = Partition(np.array_split(np.arange(300), 3), 300)
    with pytest.raises(OptionError, match="unseen clients need test splits"):
        ClientSplit(holdout=0.3)(data, partition, np.random.default_rng(0))
    with pytest.raises(OptionError, match="leaves some of the 3 clients training"):
        ClientSplit(test_fraction=0.1, holdout=0.9)(data, partition, np.random.default_rng(0))
