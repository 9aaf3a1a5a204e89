"""Who holds which samples, for any number of clients: one sorted index array plus offsets (CSR).

A list of one index array per client costs ~100 bytes of Python object per client and a Python
loop to build or check; at a million clients that is the whole set-up time. The compressed sparse
row (CSR) layout stores the same information as two arrays: `values`, every client's sample
indices one client after another (each client's run sorted), and `offsets` (length K + 1), where
client k's indices are `values[offsets[k]:offsets[k + 1]]`. Building, checking, counting labels
and hashing are then whole-array numpy operations, O(samples + clients), and reading one client is
a slice (a view, no copy).

- `IndexCSR`: the host (numpy) form, read-only; what a `Partition` holds.
- `ClientIndex`: the same on a torch device (the values as a tensor, the offsets on the host, so
  slicing a client never waits for the device); what a `FederatedDataset` holds.

Both read as a sequence of per-client index arrays (`len(index)`, `index[k]`, `for ix in index`),
the form partitions had when they were lists.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor


def _as_offsets(offsets: Any, total: int) -> np.ndarray:
    """`offsets` as a read-only int64 array: starts at 0, ends at `total`, never decreases."""
    array = np.ascontiguousarray(np.asarray(offsets, dtype=np.int64))
    if array.ndim != 1 or array.size == 0 or array[0] != 0 or array[-1] != total:
        raise ValueError(f"offsets must be a 1-D array from 0 to {total} (the number of indices)")
    if array.size > 1 and (np.diff(array) < 0).any():
        raise ValueError("offsets must not decrease (client k holds values[offsets[k]:offsets[k + 1]])")
    array.setflags(write=False)
    return array


def owners_of(offsets: np.ndarray) -> np.ndarray:
    """The client of every position of a CSR layout: k repeated (offsets[k+1] - offsets[k]) times."""
    return np.repeat(np.arange(len(offsets) - 1, dtype=np.int64), np.diff(offsets))


class IndexCSR(Sequence[np.ndarray]):
    """Per-client sorted index arrays, stored as CSR on the host (read-only numpy arrays).

    Args:
        values: the clients' indices, one client after another.
        offsets: K + 1 positions into `values`; client k is values[offsets[k]:offsets[k + 1]].
        sort: sort each client's indices (one vectorized lexsort, not a loop over clients).
    """

    def __init__(self, values: Any, offsets: Any, sort: bool = True) -> None:
        array = np.asarray(values)
        if array.ndim != 1 or (array.size and array.dtype.kind not in "iu"):
            raise ValueError(f"indices must be a 1-D array of integer sample indices, got {array.dtype} {array.shape}")
        array = np.array(array, dtype=np.int64, copy=True)
        self.offsets = _as_offsets(offsets, len(array))
        if sort and array.size:
            # Sorting by (client, index) sorts every client's run in place of a loop over clients.
            array = array[np.lexsort((array, owners_of(self.offsets)))]
        array.setflags(write=False)
        self.values = array

    @classmethod
    def from_lists(cls, parts: Sequence[Any], what: str = "train") -> IndexCSR:
        """The CSR of a list of per-client index arrays (any integer arrays or lists)."""
        arrays = []
        for k, part in enumerate(parts):
            array = np.asarray(part)
            if array.ndim != 1 or (array.size and array.dtype.kind not in "iu"):
                raise ValueError(
                    f"client {k}'s {what} indices must be a 1-D array of integer sample indices, "
                    f"got {array.dtype} {array.shape}"
                )
            arrays.append(array.astype(np.int64, copy=False))
        sizes = np.fromiter((len(a) for a in arrays), dtype=np.int64, count=len(arrays))
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        values = np.concatenate(arrays) if arrays else np.zeros(0, dtype=np.int64)
        return cls(values, offsets)

    @classmethod
    def from_owners(cls, owners: np.ndarray, num_clients: int) -> IndexCSR:
        """The CSR of an owner array (sample i belongs to client owners[i]; -1: to none). O(N log N)."""
        owners = np.asarray(owners, dtype=np.int64)
        if owners.size and (owners.max() >= num_clients or owners.min() < -1):
            raise ValueError(f"owners must lie in [-1, {num_clients})")
        order = np.argsort(owners, kind="stable")  # stable: every client's indices come out ascending
        order = order[np.searchsorted(owners[order], 0) :]  # drop the samples of no client (-1)
        sizes = np.bincount(owners[owners >= 0], minlength=num_clients)
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        return cls(order, offsets, sort=False)

    @classmethod
    def from_sizes(cls, order: np.ndarray, sizes: np.ndarray) -> IndexCSR:
        """Client k takes the next sizes[k] entries of `order` (sorted within each client)."""
        offsets = np.concatenate([[0], np.cumsum(np.asarray(sizes, dtype=np.int64))]).astype(np.int64)
        return cls(order, offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, k: int) -> np.ndarray:  # type: ignore[override]
        k = int(k)
        if not -len(self) <= k < len(self):
            raise IndexError(f"client {k} out of range for {len(self)} clients")
        k %= len(self)
        return self.values[self.offsets[k] : self.offsets[k + 1]]

    def __iter__(self) -> Iterator[np.ndarray]:
        for k in range(len(self)):
            yield self.values[self.offsets[k] : self.offsets[k + 1]]

    def sizes(self) -> np.ndarray:
        """Number of indices of every client (int64)."""
        return np.diff(self.offsets)

    def owners(self) -> np.ndarray:
        """The client of every entry of `values`."""
        return owners_of(self.offsets)

    def select(self, clients: Sequence[int] | np.ndarray) -> IndexCSR:
        """The CSR of `clients` only, in the order given (a vectorized gather)."""
        clients = np.asarray(clients, dtype=np.int64)
        starts, ends = self.offsets[clients], self.offsets[clients + 1]
        sizes = ends - starts
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        # Position j of the result reads values[starts[c] + (j - offsets[c])] for its client c.
        within = np.arange(offsets[-1], dtype=np.int64) - np.repeat(offsets[:-1], sizes)
        return IndexCSR(self.values[np.repeat(starts, sizes) + within], offsets, sort=False)


class ClientIndex(Sequence[Tensor]):
    """The CSR of the clients' sample indices on a torch device: `index[k]` is client k's tensor.

    `values` is an int64 tensor (where the data lives, so a batch gather never crosses devices);
    `offsets` stays a host numpy array, so `index[k]` is a slice (a view) without a device sync.
    """

    def __init__(self, values: Tensor, offsets: np.ndarray) -> None:
        if values.dim() != 1 or values.dtype != torch.int64:
            raise ValueError(f"ClientIndex values must be a 1-D int64 tensor, got {values.dtype} {tuple(values.shape)}")
        self.values = values
        self.offsets = _as_offsets(offsets, values.numel())

    @classmethod
    def from_csr(cls, csr: IndexCSR, device: torch.device | str = "cpu") -> ClientIndex:
        return cls(torch.from_numpy(np.array(csr.values, copy=True)).to(device), csr.offsets)

    @classmethod
    def of(cls, parts: ClientIndex | IndexCSR | Sequence[Any]) -> ClientIndex:
        """Any per-client index form (a ClientIndex, an IndexCSR, a list of tensors or arrays) as a
        ClientIndex; a list keeps its order within each client (a hand-built federation's order)."""
        if isinstance(parts, ClientIndex):
            return parts
        if isinstance(parts, IndexCSR):
            return cls.from_csr(parts)
        tensors = [torch.as_tensor(np.asarray(p.cpu() if isinstance(p, Tensor) else p), dtype=torch.int64)
                   for p in parts]  # fmt: skip
        device = parts[0].device if len(parts) and isinstance(parts[0], Tensor) else torch.device("cpu")
        sizes = np.fromiter((t.numel() for t in tensors), dtype=np.int64, count=len(tensors))
        values = torch.cat([t.reshape(-1) for t in tensors]) if tensors else torch.zeros(0, dtype=torch.int64)
        return cls(values.to(device), np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64))

    @property
    def device(self) -> torch.device:
        return self.values.device

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, k: int) -> Tensor:  # type: ignore[override]
        k = int(k)
        if not -len(self) <= k < len(self):
            raise IndexError(f"client {k} out of range for {len(self)} clients")
        k %= len(self)
        return self.values[int(self.offsets[k]) : int(self.offsets[k + 1])]

    def __iter__(self) -> Iterator[Tensor]:
        for k in range(len(self)):
            yield self.values[int(self.offsets[k]) : int(self.offsets[k + 1])]

    def sizes(self) -> np.ndarray:
        """Number of samples of every client (int64)."""
        return np.diff(self.offsets)

    def to(self, device: torch.device | str) -> ClientIndex:
        return ClientIndex(self.values.to(device), self.offsets)

    def numpy(self) -> IndexCSR:
        """The host form (a copy when the values live on an accelerator)."""
        return IndexCSR(self.values.cpu().numpy(), self.offsets, sort=False)

    def sha256(self) -> str:
        """`fedtorch.provenance.partition_hash` of this index, computed without a loop over clients.

        That hash feeds, per client, its length then its indices (little-endian int64) to sha256;
        interleaving the lengths into the values array gives the same byte stream in one update.
        """
        values = self.values.cpu().numpy().astype("<i8", copy=False)
        sizes = self.sizes()
        stream = np.empty(len(values) + len(sizes), dtype="<i8")
        # Client k's length sits just before its values: at offsets[k] + k.
        heads = self.offsets[:-1] + np.arange(len(sizes))
        mask = np.ones(len(stream), dtype=bool)
        mask[heads] = False
        stream[heads] = sizes
        stream[mask] = values
        return hashlib.sha256(stream.tobytes()).hexdigest()
