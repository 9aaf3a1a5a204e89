"""The data containers of fedtorch.

`DatasetSplits` is what a dataset loader returns: a centralized train and test set as tensors,
plus the natural client id of every sample where the data has one (a LEAF user, a hospital, a
speaking role). `Partition` is what a partitioner returns: who holds which samples, checked for
exact coverage when it is built. `FederatedDataset` is the data after the partition: the tensors
stay whole (one tensor per field, moved to the device once) and a client is a tensor of sample
indices, so a client batch is an index gather, not a DataLoader.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor


class _TaskShape:
    """What both containers say about the learning task: input shape and task type."""

    train_x: Tensor
    num_classes: int | None

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input sample (without the batch dimension)."""
        return tuple(self.train_x.shape[1:])

    @property
    def is_classification(self) -> bool:
        return self.num_classes is not None


@dataclass
class DatasetSplits(_TaskShape):
    """A centralized dataset: what every loader in `fedtorch.data` returns.

    Attributes:
        name: short name used in logs ("mnist", "fed_heart_disease", ...).
        train_x, train_y: training inputs and targets; dimension 0 indexes samples.
        test_x, test_y: the central held-out test set.
        num_classes: number of classes for classification; None for regression targets.
        train_groups: natural client id (0..K-1) of every training sample, or None.
        test_groups: natural client id of every test sample (per-client test splits), or None.
        group_names: optional human-readable name per natural client (e.g. hospital names).
    """

    name: str
    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    num_classes: int | None
    train_groups: np.ndarray | None = None
    test_groups: np.ndarray | None = None
    group_names: list[str] | None = None

    def __post_init__(self) -> None:
        if len(self.train_x) != len(self.train_y):
            raise ValueError(f"{self.name}: train_x has {len(self.train_x)} rows, train_y {len(self.train_y)}")
        if len(self.test_x) != len(self.test_y):
            raise ValueError(f"{self.name}: test_x has {len(self.test_x)} rows, test_y {len(self.test_y)}")

    def train_labels(self) -> np.ndarray:
        """Train targets as a numpy array, for partitioners (labels for classification)."""
        return self.train_y.detach().cpu().numpy()


def _index_array(indices: Any, what: str) -> np.ndarray:
    """`indices` as a sorted, read-only int64 array (read-only: nobody edits a checked partition)."""
    array = np.asarray(indices)
    if array.ndim != 1 or (array.size and array.dtype.kind not in "iu"):
        raise ValueError(f"{what} must be a 1-D array of integer sample indices, got {array.dtype} {array.shape}")
    array = np.sort(array.astype(np.int64, copy=True))
    array.setflags(write=False)
    return array


@dataclass(frozen=True, eq=False)  # eq=False: comparing lists of arrays with == is ambiguous
class Partition:
    """Who holds which samples: the result of every partitioner.

    Attributes:
        train: client k's train sample indices (sorted int64, indices into the train set).
        num_samples: size of the train set; the constructor checks that `train` covers every index
            in [0, num_samples) exactly once (raises ValueError otherwise).
        test: client k's own test split (indices into the test set), aligned with `train`; None
            when clients have no test split of their own (then only the central test set exists).
        names: client k's name (a hospital, a LEAF user, a speaking role), aligned; None: "0", "1", ...
        notes: what the partitioner wants logged about how it built the split (e.g. how many samples
            the Dirichlet repair moved), as plain floats.
        num_test_samples: size of the test set, when `test` is given; then every test index must lie
            in [0, num_test_samples). Test splits must be disjoint but need not cover the test set.

    A Partition also reads as the sequence of train index arrays (`len(p)`, `p[k]`, `for ix in p`),
    so code written when partitioners returned a plain list keeps working.
    """

    train: list[np.ndarray]
    num_samples: int
    test: list[np.ndarray] | None = None
    names: list[str] | None = None
    notes: dict[str, float] = field(default_factory=dict)
    num_test_samples: int | None = None

    def __post_init__(self) -> None:
        # Frozen: normalize through object.__setattr__, once, before anything can read the fields.
        train = [_index_array(ix, f"client {k}'s train indices") for k, ix in enumerate(self.train)]
        object.__setattr__(self, "train", train)
        object.__setattr__(self, "num_samples", int(self.num_samples))
        _check_exact_cover(train, self.num_samples)
        if self.test is not None:
            test = [_index_array(ix, f"client {k}'s test indices") for k, ix in enumerate(self.test)]
            if len(test) != len(train):
                raise ValueError(f"{len(test)} client test splits for {len(train)} clients: they must be aligned")
            _check_disjoint(test, self.num_test_samples)
            object.__setattr__(self, "test", test)
        if self.names is not None:
            names = [str(name) for name in self.names]
            if len(names) != len(train):
                raise ValueError(f"{len(names)} client names for {len(train)} clients: they must be aligned")
            object.__setattr__(self, "names", names)
        object.__setattr__(self, "notes", {str(k): float(v) for k, v in self.notes.items()})

    @property
    def num_clients(self) -> int:
        return len(self.train)

    def sizes(self) -> np.ndarray:
        """Number of train samples of every client (int64)."""
        return np.array([len(ix) for ix in self.train], dtype=np.int64)

    def test_sizes(self) -> np.ndarray | None:
        """Number of test samples of every client, or None without client test splits."""
        return None if self.test is None else np.array([len(ix) for ix in self.test], dtype=np.int64)

    # The sequence view: the train index arrays, as the old list return type.
    def __len__(self) -> int:
        return len(self.train)

    def __getitem__(self, k: int) -> np.ndarray:
        return self.train[k]

    def __iter__(self) -> Iterator[np.ndarray]:
        return iter(self.train)


def _check_exact_cover(parts: Sequence[np.ndarray], num_samples: int) -> None:
    """Every index in [0, num_samples) in exactly one part, nothing else. O(num_samples)."""
    total = sum(len(ix) for ix in parts)
    joined = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    if joined.size and (joined.min() < 0 or joined.max() >= num_samples):
        raise ValueError(f"partition has sample indices outside [0, {num_samples})")
    counts = np.bincount(joined, minlength=num_samples)
    if total != num_samples or not (counts == 1).all():
        missing, repeated = int((counts == 0).sum()), int((counts > 1).sum())
        raise ValueError(
            f"partition does not cover the {num_samples} samples exactly once: the clients hold {total} "
            f"indices, {missing} samples are in no client and {repeated} in more than one"
        )


def _check_disjoint(parts: Sequence[np.ndarray], num_samples: int | None) -> None:
    joined = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    if joined.size and joined.min() < 0:
        raise ValueError("client test splits have negative indices")
    if num_samples is not None and joined.size and joined.max() >= num_samples:
        raise ValueError(f"client test splits have indices outside [0, {num_samples})")
    if len(np.unique(joined)) != len(joined):
        raise ValueError("client test splits overlap: a test sample belongs to more than one client")


@dataclass
class FederatedDataset(_TaskShape):
    """Train data split across clients, plus the central test set.

    `client_indices[k]` holds the indices (into `train_x`/`train_y`) of client k's samples;
    `client_test_indices[k]`, when present, indexes client k's own test split in `test_x`;
    `client_names[k]` names client k; `partition_notes` is what the partitioner recorded about the
    split (`fedtorch.data.partitions.Partition.notes`, e.g. the Dirichlet repair's moved samples).
    """

    name: str
    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    num_classes: int | None
    client_indices: list[Tensor]
    client_test_indices: list[Tensor] | None = None
    client_names: list[str] | None = None
    extra: dict = field(default_factory=dict)
    partition_notes: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_partition(
        cls,
        data: DatasetSplits,
        partition: Partition | Sequence[np.ndarray],
        client_test_partition: Sequence[np.ndarray] | None = None,
        client_names: Sequence[str] | None = None,
    ) -> FederatedDataset:
        """Build a federation from a loader's splits and a partition of its train indices.

        Pass the `Partition` a partitioner returned, alone: its train indices, client test splits and
        names are aligned by construction (and its coverage was checked against the train set's
        size, which is checked here against `data`). A plain list of index arrays (and separate test
        splits and names) is still accepted for hand-built federations, unchecked; test splits or
        names passed beside a `Partition` that has its own must agree with them, so two different
        client orders can never be mixed.
        """
        test = None if client_test_partition is None else [np.asarray(p) for p in client_test_partition]
        names = None if client_names is None else [str(n) for n in client_names]
        notes: dict[str, float] = {}
        if isinstance(partition, Partition):
            if partition.num_samples != len(data.train_y):
                raise ValueError(
                    f"{data.name}: the partition covers {partition.num_samples} train samples, the data has "
                    f"{len(data.train_y)}: it was built for another dataset"
                )
            test = _agree("client test splits", partition.test, test)
            names = _agree("client names", partition.names, names)
            notes = dict(partition.notes)
            partition = partition.train
        if test is not None and len(test) != len(partition):
            raise ValueError(f"{len(test)} client test splits for {len(partition)} clients: they must be aligned")
        if names is not None and len(names) != len(partition):
            raise ValueError(f"{len(names)} client names for {len(partition)} clients: they must be aligned")

        def to_tensor(p: np.ndarray) -> Tensor:
            return torch.tensor(np.asarray(p, dtype=np.int64))  # a copy: a Partition's arrays are read-only

        return cls(
            name=data.name,
            train_x=data.train_x,
            train_y=data.train_y,
            test_x=data.test_x,
            test_y=data.test_y,
            num_classes=data.num_classes,
            client_indices=[to_tensor(p) for p in partition],
            client_test_indices=None if test is None else [to_tensor(p) for p in test],
            client_names=names,
            partition_notes=notes,
        )

    @property
    def num_clients(self) -> int:
        return len(self.client_indices)

    def client_sizes(self) -> np.ndarray:
        """Number of training samples of every client."""
        return np.array([len(ix) for ix in self.client_indices], dtype=np.int64)

    def to(self, device: torch.device | str) -> FederatedDataset:
        """Move every tensor to `device` once; clients then index into device memory."""
        move = lambda t: t.to(device)  # noqa: E731
        return replace(
            self,
            train_x=move(self.train_x),
            train_y=move(self.train_y),
            test_x=move(self.test_x),
            test_y=move(self.test_y),
            client_indices=[move(ix) for ix in self.client_indices],
            client_test_indices=(
                None if self.client_test_indices is None else [move(ix) for ix in self.client_test_indices]
            ),
        )

    def label_counts(self) -> np.ndarray:
        """(num_clients, num_classes) matrix of per-client label counts (classification only)."""
        if self.num_classes is None:
            raise ValueError("label_counts() needs a classification dataset")
        labels = self.train_y.detach().cpu().numpy()
        counts = np.zeros((self.num_clients, self.num_classes), dtype=np.int64)
        for k, ix in enumerate(self.client_indices):
            counts[k] = np.bincount(labels[ix.cpu().numpy()], minlength=self.num_classes)
        return counts


def _agree(what: str, own: list[Any] | None, given: list[Any] | None) -> list[Any] | None:
    """The Partition's own `what` unless it has none; one passed beside it must be the same."""
    if own is None or given is None:
        return own if own is not None else given
    same = len(own) == len(given) and all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(own, given))
    if not same:
        raise ValueError(
            f"the {what} passed to FederatedDataset.from_partition differ from the Partition's own (which "
            "are aligned with its clients): pass the Partition alone"
        )
    return own
