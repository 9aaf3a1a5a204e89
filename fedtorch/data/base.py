"""The data containers of fedtorch.

`DatasetSplits` is what a dataset loader returns: a centralized train and test set as tensors,
plus the natural client id of every sample where the data has one (a LEAF user, a hospital, a
speaking role). `Partition` is what a partitioner returns: who holds which samples (CSR: one sorted
index array plus offsets, `fedtorch.data.index`), checked for exact coverage when it is built.

`Federation` is what the simulation trains on: clients addressed by id, each materialized when it
is sampled (`client_data(k)`), plus a central test set. Three kinds:

- `FederatedDataset` (here): the data after a partition, in memory. The tensors stay whole (one
  tensor per field, moved to the device once) and the clients are a `ClientIndex` (CSR) into them,
  so a client batch is an index gather, not a DataLoader.
- `fedtorch.data.generated`: generated federations (FedProx Synthetic, linear regression, images
  of MNIST's shape) that draw client k's data from (seed, k) when it is asked for: nothing is
  generated up front, so a million devices cost their sizes only.
- `fedtorch.data.prepared`: a federation written to memory-mapped files by
  `python -m fedtorch.data.prepare`; reading a client touches only its rows.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fedtorch.data.index import ClientIndex, IndexCSR


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


def _check_exact_cover(parts: IndexCSR, num_samples: int) -> None:
    """Every index in [0, num_samples) in exactly one part, nothing else. O(num_samples)."""
    joined = parts.values
    if joined.size and (joined.min() < 0 or joined.max() >= num_samples):
        raise ValueError(f"partition has sample indices outside [0, {num_samples})")
    counts = np.bincount(joined, minlength=num_samples)
    if len(joined) != num_samples or not (counts == 1).all():
        missing, repeated = int((counts == 0).sum()), int((counts > 1).sum())
        raise ValueError(
            f"partition does not cover the {num_samples} samples exactly once: the clients hold {len(joined)} "
            f"indices, {missing} samples are in no client and {repeated} in more than one"
        )


def _check_disjoint(parts: IndexCSR, num_samples: int | None) -> None:
    joined = parts.values
    if joined.size and joined.min() < 0:
        raise ValueError("client test splits have negative indices")
    if num_samples is not None and joined.size and joined.max() >= num_samples:
        raise ValueError(f"client test splits have indices outside [0, {num_samples})")
    if joined.size and (np.bincount(joined) > 1).any():
        raise ValueError("client test splits overlap: a test sample belongs to more than one client")


def _as_csr(parts: Any, what: str) -> IndexCSR:
    return parts if isinstance(parts, IndexCSR) else IndexCSR.from_lists(parts, what)


@dataclass(frozen=True, eq=False)  # eq=False: comparing index arrays with == is ambiguous
class Partition:
    """Who holds which samples: the result of every partitioner.

    Attributes:
        train: client k's train sample indices (`train[k]`: sorted int64, indices into the train
            set), stored as one CSR (`fedtorch.data.index.IndexCSR`); a list of per-client arrays
            is accepted and converted.
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
    so code written when partitioners returned a plain list keeps working. Every check is a
    whole-array operation: O(samples + clients), never a loop over clients.
    """

    train: IndexCSR
    num_samples: int
    test: IndexCSR | None = None
    names: list[str] | None = None
    notes: dict[str, float] = field(default_factory=dict)
    num_test_samples: int | None = None

    def __post_init__(self) -> None:
        # Frozen: normalize through object.__setattr__, once, before anything can read the fields.
        train = _as_csr(self.train, "train")
        object.__setattr__(self, "train", train)
        object.__setattr__(self, "num_samples", int(self.num_samples))
        _check_exact_cover(train, self.num_samples)
        if self.test is not None:
            test = _as_csr(self.test, "test")
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
        return self.train.sizes()

    def test_sizes(self) -> np.ndarray | None:
        """Number of test samples of every client, or None without client test splits."""
        return None if self.test is None else self.test.sizes()

    # The sequence view: the train index arrays, as the old list return type.
    def __len__(self) -> int:
        return len(self.train)

    def __getitem__(self, k: int) -> np.ndarray:
        return self.train[k]

    def __iter__(self) -> Iterator[np.ndarray]:
        return iter(self.train)


class Federation:
    """What the simulation trains on: clients addressed by id, materialized when they are sampled.

    Every kind of federation (in memory, generated, memory-mapped) answers the same questions; the
    client runner, the backends, evaluation and the run folder's summaries ask only these:

    - `num_clients`, `client_sizes()` (int64, one entry per client: the only O(clients) array);
    - `client_data(k)`: (x, y, indices) on the device, client k's samples being `x[indices]`;
    - `gather(ids)`: one (x, y) for a chunk of clients and each one's positions in it (on the CPU,
      where the vectorized backend lays out its batches);
    - `label_counts(clients)`, `partition_sha256()`;
    - the central test set `test_x`, `test_y`, and `client_test_indices` (a `ClientIndex` into it,
      or None) and `client_names` (or None).

    `resident` is True when the whole train set is one tensor per field on the device
    (`FederatedDataset`): client batches then gather from it directly.
    """

    name: str
    num_classes: int | None
    test_x: Tensor
    test_y: Tensor
    client_test_indices: ClientIndex | None
    client_names: Sequence[str] | None
    partition_notes: dict[str, float]
    #: The train set is whole tensors on the device (`train_x`, `train_y`, `client_indices`).
    resident: bool = False

    @property
    def input_shape(self) -> tuple[int, ...]:
        raise NotImplementedError

    @property
    def is_classification(self) -> bool:
        return self.num_classes is not None

    @property
    def num_clients(self) -> int:
        return len(self.client_sizes())

    def client_sizes(self) -> np.ndarray:
        """Number of training samples of every client (int64)."""
        raise NotImplementedError

    def client_tensors(self, client_id: int) -> tuple[Tensor, Tensor]:
        """Client k's train inputs and targets on the CPU (the lazy kinds implement this)."""
        raise NotImplementedError

    def client_data(self, client_id: int) -> tuple[Tensor, Tensor, Tensor]:
        """(x, y, indices) on the federation's device: client k's samples are x[indices], y[indices]."""
        x, y = self.client_tensors(client_id)
        device = self.test_y.device
        return x.to(device), y.to(device), torch.arange(len(y), device=device)

    def gather(self, client_ids: Sequence[int]) -> tuple[Tensor, Tensor, list[Tensor]]:
        """One (x, y) on the device holding the samples of `client_ids`, and each client's positions
        in it as CPU int64 tensors (aligned with `client_ids`)."""
        xs, ys, positions, start = [], [], [], 0
        for k in client_ids:
            x, y = self.client_tensors(int(k))
            xs.append(x)
            ys.append(y)
            positions.append(torch.arange(start, start + len(y)))
            start += len(y)
        device = self.test_y.device
        if not xs:
            return self.test_x[:0], self.test_y[:0], []
        return torch.cat(xs).to(device), torch.cat(ys).to(device), positions

    def label_counts(self, clients: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """(len(clients), num_classes) label counts of `clients` (every client when None)."""
        if self.num_classes is None:
            raise ValueError("label_counts() needs a classification dataset")
        ids = np.arange(self.num_clients) if clients is None else np.asarray(clients, dtype=np.int64)
        counts = np.zeros((len(ids), self.num_classes), dtype=np.int64)
        for row, k in enumerate(ids.tolist()):
            counts[row] = np.bincount(self.client_labels(k), minlength=self.num_classes)
        return counts

    def client_labels(self, client_id: int) -> np.ndarray:
        """Client k's train targets as int64 (a kind that can read them alone overrides this)."""
        return self.client_tensors(client_id)[1].numpy().astype(np.int64, copy=False)

    def partition_sha256(self) -> str:
        """A sha256 that is equal exactly when two runs train on the same split (provenance)."""
        raise NotImplementedError

    def to(self, device: torch.device | str) -> Federation:
        """This federation with its resident tensors on `device` (lazy clients materialize there)."""
        return dataclasses.replace(  # type: ignore[type-var]
            self,
            test_x=self.test_x.to(device),
            test_y=self.test_y.to(device),
            client_test_indices=None if self.client_test_indices is None else self.client_test_indices.to(device),
        )

    def with_test_subset(self, keep: Tensor) -> Federation:
        """This federation with the central test set cut to the (sorted, CPU) positions `keep`; the
        clients' own test splits keep the samples of theirs that remain (renumbered)."""
        total = len(self.test_y)
        client_test = None
        if self.client_test_indices is not None:
            position = np.full(total, -1, dtype=np.int64)  # old test index -> new one (-1: dropped)
            position[keep.numpy()] = np.arange(len(keep))
            csr = self.client_test_indices.numpy()
            moved = position[csr.values]
            kept = moved >= 0
            sizes = np.bincount(csr.owners()[kept], minlength=len(csr))
            offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
            client_test = ClientIndex(torch.from_numpy(moved[kept]).to(self.test_y.device), offsets)
        rows = keep.to(self.test_y.device)
        return dataclasses.replace(  # type: ignore[type-var]
            self, test_x=self.test_x[rows], test_y=self.test_y[rows], client_test_indices=client_test
        )


@dataclass
class FederatedDataset(_TaskShape, Federation):
    """Train data split across clients, in memory, plus the central test set.

    `client_indices[k]` holds the indices (into `train_x`/`train_y`) of client k's samples: a
    `ClientIndex` (CSR; a list of index tensors is accepted and converted, keeping each client's
    order); `client_test_indices[k]`, when present, indexes client k's own test split in `test_x`;
    `client_names[k]` names client k; `partition_notes` is what the partitioner recorded about the
    split (`fedtorch.data.partitions.Partition.notes`, e.g. the Dirichlet repair's moved samples).
    """

    name: str
    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    num_classes: int | None
    client_indices: ClientIndex
    client_test_indices: ClientIndex | None = None
    client_names: list[str] | None = None
    extra: dict = field(default_factory=dict)
    partition_notes: dict[str, float] = field(default_factory=dict)

    resident = True

    def __post_init__(self) -> None:
        self.client_indices = ClientIndex.of(self.client_indices)
        if self.client_test_indices is not None:
            self.client_test_indices = ClientIndex.of(self.client_test_indices)
        self._cpu_index: ClientIndex | None = None

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
        test: Any = None if client_test_partition is None else [np.asarray(p) for p in client_test_partition]
        names = None if client_names is None else [str(n) for n in client_names]
        notes: dict[str, float] = {}
        train: Any = partition
        if isinstance(partition, Partition):
            if partition.num_samples != len(data.train_y):
                raise ValueError(
                    f"{data.name}: the partition covers {partition.num_samples} train samples, the data has "
                    f"{len(data.train_y)}: it was built for another dataset"
                )
            test = _agree("client test splits", partition.test, test)
            names = _agree("client names", partition.names, names)
            notes = dict(partition.notes)
            train = partition.train
        if test is not None and len(test) != len(train):
            raise ValueError(f"{len(test)} client test splits for {len(train)} clients: they must be aligned")
        if names is not None and len(names) != len(train):
            raise ValueError(f"{len(names)} client names for {len(train)} clients: they must be aligned")
        return cls(
            name=data.name,
            train_x=data.train_x,
            train_y=data.train_y,
            test_x=data.test_x,
            test_y=data.test_y,
            num_classes=data.num_classes,
            client_indices=ClientIndex.of(train),
            client_test_indices=None if test is None else ClientIndex.of(test),
            client_names=names,
            partition_notes=notes,
        )

    @property
    def num_clients(self) -> int:
        return len(self.client_indices)

    def client_sizes(self) -> np.ndarray:
        """Number of training samples of every client."""
        return self.client_indices.sizes()

    def client_tensors(self, client_id: int) -> tuple[Tensor, Tensor]:
        ix = self.client_indices[client_id]
        return self.train_x[ix].cpu(), self.train_y[ix].cpu()

    def client_data(self, client_id: int) -> tuple[Tensor, Tensor, Tensor]:
        """The whole (device-resident) train tensors and client k's indices into them."""
        return self.train_x, self.train_y, self.client_indices[client_id]

    def gather(self, client_ids: Sequence[int]) -> tuple[Tensor, Tensor, list[Tensor]]:
        """The whole train tensors, and the clients' indices into them from a CPU copy of the index
        (made once: the vectorized backend lays out batches on the CPU)."""
        if self._cpu_index is None:
            index = self.client_indices
            self._cpu_index = index if index.device.type == "cpu" else index.to("cpu")
        return self.train_x, self.train_y, [self._cpu_index[k] for k in client_ids]

    def to(self, device: torch.device | str) -> FederatedDataset:
        """Move every tensor to `device` once; clients then index into device memory."""
        move = lambda t: t.to(device)  # noqa: E731
        return replace(
            self,
            train_x=move(self.train_x),
            train_y=move(self.train_y),
            test_x=move(self.test_x),
            test_y=move(self.test_y),
            client_indices=self.client_indices.to(device),
            client_test_indices=None if self.client_test_indices is None else self.client_test_indices.to(device),
        )

    def label_counts(self, clients: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """(clients, num_classes) matrix of per-client label counts (classification only), in one
        bincount over the CSR: O(samples + clients)."""
        if self.num_classes is None:
            raise ValueError("label_counts() needs a classification dataset")
        csr = self.client_indices.numpy()
        if clients is not None:
            csr = csr.select(np.asarray(clients, dtype=np.int64))
        labels = self.train_y.detach().cpu().numpy()[csr.values].astype(np.int64)
        flat = csr.owners() * self.num_classes + labels
        counts = np.bincount(flat, minlength=len(csr) * self.num_classes)
        return counts.reshape(len(csr), self.num_classes)

    def partition_sha256(self) -> str:
        return self.client_indices.sha256()


def _agree(what: str, own: Sequence[Any] | None, given: Sequence[Any] | None) -> Any:
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
