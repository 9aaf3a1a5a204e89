"""Per-client test splits and unseen clients: the evaluation protocol of personalized FL.

Personalized FL is judged client by client, on test data drawn from each client's own
distribution (FedRep, pFedMe, Ditto, PFLlib and FL-bench all split every client's data into its own
train and test parts). Some clients should also never train, so that a method's personalization of
a *new* client can be measured (Yuan et al. 2022, "What Do We Mean by Generalization in Federated
Learning?": participating vs unseen clients). `ClientSplit` does both to any `Partition`, as a
post-processing step, so every partitioner gets them:

- `test_fraction`: client k moves round(test_fraction * n_k) of its n_k train samples, drawn at
  random (so from its own distribution), to a test split of its own (at least one sample stays for
  training). The central test set is left as it is.
- `holdout`: round(holdout * K) of the K clients (at least one when holdout > 0, and never all of
  them), drawn at random, never train: they are *unseen* clients. Their train samples are only
  the data of their personalization step; their test splits score it.

The result (`SplitFederation`) is the federation that trains (the seen clients; the train tensors
hold only their remaining train samples), the seen clients' own test splits (`ClientTests`), and
the unseen clients as a `FederatedDataset` of their own. Both draws come from one generator (the
run's `(seed, "client_split")` stream), so a seed fixes the split. A partition whose clients
already have test splits (`partition=natural` on LEAF data) keeps them: `test_fraction` must then
be 0, and unseen clients use their natural test splits.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import Tensor

from fedtorch.data.base import DatasetSplits, FederatedDataset, Partition
from fedtorch.errors import OptionError, check_number


@dataclass
class ClientTests:
    """Clients' own test splits drawn from their train data: client k's split is x[indices[k]]."""

    x: Tensor
    y: Tensor
    indices: list[Tensor]

    def to(self, device: torch.device | str) -> ClientTests:
        return ClientTests(self.x.to(device), self.y.to(device), [ix.to(device) for ix in self.indices])


@dataclass
class SplitFederation:
    """What `ClientSplit` makes of a partition.

    Attributes:
        data: the loader's splits with only the seen clients' remaining train samples.
        partition: the seen clients' train indices into `data` (and their natural test splits).
        client_tests: the seen clients' test splits moved out of their train data (None when
            `test_fraction` is 0).
        unseen: the clients that never train, their train samples (for personalization) and test
            splits (None when `holdout` is 0).
        seen_ids, unseen_ids: the clients' ids in the original partition.
    """

    data: DatasetSplits
    partition: Partition
    client_tests: ClientTests | None
    unseen: FederatedDataset | None
    seen_ids: list[int]
    unseen_ids: list[int]


def _take(train: np.ndarray, count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(kept, moved): `count` of `train`'s indices drawn at random move, the rest stay (both sorted)."""
    order = rng.permutation(len(train))
    return np.sort(train[order[count:]]), np.sort(train[order[:count]])


def _remap(parts: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
    """The union of `parts` (sorted) and every part as positions in it."""
    union = np.sort(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64)
    return union, [np.searchsorted(union, p) for p in parts]


class ClientSplit:
    """Per-client test splits and unseen clients for any partition (see the module docstring).

    Args:
        test_fraction: share of every client's train samples moved to its own test split, in [0, 1).
        holdout: share of the clients that never train (unseen clients), in [0, 1).
    """

    def __init__(self, test_fraction: float = 0.0, holdout: float = 0.0) -> None:
        self.test_fraction = check_number("test_fraction", test_fraction, 0.0, 1.0, high_open=True)
        self.holdout = check_number("holdout", holdout, 0.0, 1.0, high_open=True)

    @property
    def active(self) -> bool:
        return self.test_fraction > 0 or self.holdout > 0

    def test_count(self, num_samples: int) -> int:
        """How many of a client's `num_samples` train samples move to its test split."""
        return min(int(round(self.test_fraction * num_samples)), max(num_samples - 1, 0))

    def holdout_count(self, num_clients: int) -> int:
        """How many of `num_clients` clients are unseen."""
        if self.holdout == 0:
            return 0
        count = max(1, int(round(self.holdout * num_clients)))
        if count >= num_clients:
            raise OptionError(
                "holdout", self.holdout, f"a share that leaves some of the {num_clients} clients training"
            )
        return count

    def __call__(self, data: DatasetSplits, partition: Partition, rng: np.random.Generator) -> SplitFederation:
        if self.test_fraction > 0 and partition.test is not None:
            raise OptionError(
                "test_fraction",
                self.test_fraction,
                "0 for this partition: its clients already have test splits of their own (the data's)",
            )
        if self.holdout > 0 and self.test_fraction == 0 and partition.test is None:
            raise OptionError(
                "holdout", self.holdout, "unseen clients need test splits: set test_fraction > 0 (or holdout=0)"
            )
        num_clients = partition.num_clients
        unseen_ids = sorted(rng.choice(num_clients, size=self.holdout_count(num_clients), replace=False).tolist())
        unseen_set = set(unseen_ids)
        seen_ids = [k for k in range(num_clients) if k not in unseen_set]
        kept, moved = [], []
        for train in partition.train:
            keep, move = _take(train, self.test_count(len(train)), rng)
            kept.append(keep)
            moved.append(move)

        notes = dict(partition.notes)
        notes.update(
            test_fraction=self.test_fraction,
            holdout_clients=float(len(unseen_ids)),
            moved_test_samples=float(sum(len(m) for m in moved)),
        )
        seen_data, seen_partition = self._clients(data, partition, seen_ids, kept, notes)
        client_tests = None
        if self.test_fraction > 0:
            union, positions = _remap([moved[k] for k in seen_ids])
            client_tests = ClientTests(
                data.train_x[torch.from_numpy(union)],
                data.train_y[torch.from_numpy(union)],
                [torch.from_numpy(p.astype(np.int64)) for p in positions],
            )
        unseen = None
        if unseen_ids:
            unseen_data, unseen_partition = self._clients(data, partition, unseen_ids, kept, {})
            unseen_data = replace(unseen_data, name=f"{data.name} (unseen clients)")
            if self.test_fraction > 0:  # their test splits are their moved samples
                union, positions = _remap([moved[k] for k in unseen_ids])
                index = torch.from_numpy(union)
                unseen_data = replace(unseen_data, test_x=data.train_x[index], test_y=data.train_y[index])
                unseen_partition = replace(unseen_partition, test=positions, num_test_samples=len(union))
            unseen = FederatedDataset.from_partition(unseen_data, unseen_partition)
        return SplitFederation(seen_data, seen_partition, client_tests, unseen, seen_ids, unseen_ids)

    @staticmethod
    def _clients(
        data: DatasetSplits, partition: Partition, ids: list[int], kept: list[np.ndarray], notes: dict[str, float]
    ) -> tuple[DatasetSplits, Partition]:
        """The splits and partition of clients `ids` alone, their train samples being `kept[k]`."""
        union, positions = _remap([kept[k] for k in ids])
        index = torch.from_numpy(union)
        groups = None if data.train_groups is None else np.asarray(data.train_groups)[union]
        subset = Partition(
            train=positions,
            num_samples=len(union),
            test=None if partition.test is None else [partition.test[k] for k in ids],
            names=None if partition.names is None else [partition.names[k] for k in ids],
            notes=notes,
            num_test_samples=partition.num_test_samples,
        )
        return replace(data, train_x=data.train_x[index], train_y=data.train_y[index], train_groups=groups), subset
