"""Federations on disk: a dataset and its partition in memory-mapped files, read client by client.

A user whose data does not fit in memory writes it once into a prepared folder
(`python -m fedtorch.data.prepare`, or `PreparedWriter` from their own loader, client by client)
and trains with `dataset=prepared dataset.path=<folder>`. The train rows are stored in client
order, so client k is one contiguous block of rows: reading it maps only its pages, and a round
touches only its cohort's data, whatever the size of the federation.

The format (version 1), one folder:

    fedtorch_prepared.json   the header: {"format": "fedtorch.prepared", "version": 1, "name",
                             "num_classes" (null: regression), "input_shape", "num_clients",
                             "num_train", "num_test", "arrays": {name: {"file", "dtype", "shape",
                             "bytes", "sha256"}}, "partition_sha256", "partition_notes",
                             "client_names" (a list, or null), "source" (what it was prepared from)}
    train_x.npy, train_y.npy the train rows in client order (client k: rows offsets[k]:offsets[k+1])
    train_offsets.npy        int64, num_clients + 1
    test_x.npy, test_y.npy   the central test set
    test_values.npy,         optional: the clients' own test splits, a CSR into the test set
    test_offsets.npy

Every array is a plain `.npy` file (numpy's format, so any tool reads it). Opening checks, in
O(1), that the header exists and parses, that its format and version are this reader's, and that
every array file exists with exactly the recorded size; `verify=true` also recomputes the sha256
of every file. A folder that is missing, truncated, or from another version is refused with one
line naming `dataset.path`. Files are written under temporary names and the header last, so an
interrupted prepare leaves no header: the folder reads as missing, never as half-written data.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fedtorch.data.base import Federation
from fedtorch.data.generated import ClientNames
from fedtorch.data.index import ClientIndex
from fedtorch.errors import OptionError

FORMAT = "fedtorch.prepared"
VERSION = 1
HEADER = "fedtorch_prepared.json"
#: Client names are stored in the header up to this many clients (beyond: client_0, client_1, ...).
MAX_STORED_NAMES = 100_000


def _refuse(path: str | Path, why: str) -> OptionError:
    return OptionError("dataset.path", str(path), why)


def file_sha256(path: Path, chunk: int = 1 << 24) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


class PreparedWriter:
    """Write a prepared folder client by client, without holding the train set in memory.

    Args:
        path: the folder (created; an existing prepared folder there is replaced at `close`).
        name, num_classes, input_shape: the task, as a `Federation` describes it.
        train_sizes: every client's number of train rows (they are written in this order).
        x_dtype, y_dtype: numpy dtypes of the inputs and targets.
        checksum: record the sha256 of every file (one extra read of what was written).

    Call `add_client(x, y)` once per client, in client order, then `close(test_x, test_y, ...)`.
    """

    def __init__(
        self,
        path: str | Path,
        name: str,
        num_classes: int | None,
        input_shape: Sequence[int],
        train_sizes: np.ndarray,
        x_dtype: Any = np.float32,
        y_dtype: Any = np.int64,
        checksum: bool = True,
    ) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / HEADER).unlink(missing_ok=True)  # until close, the folder is not a prepared one
        self.name, self.num_classes, self.input_shape = name, num_classes, tuple(int(d) for d in input_shape)
        sizes = np.asarray(train_sizes, dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        total = int(self.offsets[-1])
        self.checksum = checksum
        self._x = np.lib.format.open_memmap(self._tmp("train_x"), "w+", np.dtype(x_dtype), (total, *self.input_shape))
        self._y = np.lib.format.open_memmap(self._tmp("train_y"), "w+", np.dtype(y_dtype), (total,))
        self._next = 0

    def _tmp(self, array: str) -> Path:
        return self.path / f".{array}.npy.tmp"

    def add_client(self, x: np.ndarray | Tensor, y: np.ndarray | Tensor) -> None:
        """The next client's train rows (exactly its recorded size)."""
        k = self._next
        if k >= len(self.offsets) - 1:
            raise ValueError(f"PreparedWriter: {len(self.offsets) - 1} clients were announced, this is one more")
        start, end = int(self.offsets[k]), int(self.offsets[k + 1])
        x = x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)
        y = y.detach().cpu().numpy() if isinstance(y, Tensor) else np.asarray(y)
        if len(x) != end - start or len(y) != end - start:
            raise ValueError(f"PreparedWriter: client {k} has {end - start} rows announced, got {len(x)} and {len(y)}")
        self._x[start:end] = x.reshape(end - start, *self.input_shape)
        self._y[start:end] = y
        self._next += 1

    def close(
        self,
        test_x: np.ndarray | Tensor,
        test_y: np.ndarray | Tensor,
        client_test: ClientIndex | None = None,
        client_names: Sequence[str] | None = None,
        partition_sha256: str | None = None,
        partition_notes: dict[str, float] | None = None,
        source: dict[str, Any] | None = None,
    ) -> Path:
        """Write the test set and the header; the folder is a prepared federation from now on."""
        if self._next != len(self.offsets) - 1:
            raise ValueError(f"PreparedWriter: {self._next} of {len(self.offsets) - 1} clients were written")
        for memmap in (self._x, self._y):
            memmap.flush()
        del self._x, self._y
        as_numpy = lambda t: t.detach().cpu().numpy() if isinstance(t, Tensor) else np.asarray(t)  # noqa: E731
        arrays: dict[str, np.ndarray] = {
            "train_offsets": self.offsets,
            "test_x": as_numpy(test_x).reshape(-1, *self.input_shape),
            "test_y": as_numpy(test_y),
        }
        if client_test is not None:
            arrays["test_values"] = as_numpy(client_test.values).astype(np.int64)
            arrays["test_offsets"] = np.asarray(client_test.offsets, dtype=np.int64)
        for array, value in arrays.items():
            with open(self._tmp(array), "wb") as handle:  # a handle: np.save would append ".npy"
                np.save(handle, value)
        names = ["train_x", "train_y", *arrays]
        entries = {}
        for array in names:
            final = self.path / f"{array}.npy"
            os.replace(self._tmp(array), final)
            opened = np.load(final, mmap_mode="r")
            entries[array] = {
                "file": final.name,
                "dtype": opened.dtype.str,
                "shape": list(opened.shape),
                "bytes": final.stat().st_size,
                "sha256": file_sha256(final) if self.checksum else None,
            }
            del opened
        num_clients = len(self.offsets) - 1
        stored_names = None
        if client_names is not None and num_clients <= MAX_STORED_NAMES:
            stored_names = [str(client_names[k]) for k in range(num_clients)]
        header = {
            "format": FORMAT,
            "version": VERSION,
            "name": self.name,
            "num_classes": self.num_classes,
            "input_shape": list(self.input_shape),
            "num_clients": num_clients,
            "num_train": int(self.offsets[-1]),
            "num_test": len(arrays["test_y"]),
            "arrays": entries,
            "partition_sha256": partition_sha256,
            "partition_notes": dict(partition_notes or {}),
            "client_names": stored_names,
            "source": source or {},
        }
        tmp = self.path / f".{HEADER}.tmp"
        tmp.write_text(json.dumps(header, indent=1))
        os.replace(tmp, self.path / HEADER)  # the header last: its presence means the folder is complete
        return self.path


def write_prepared(federation: Federation, path: str | Path, checksum: bool = True, source: dict | None = None) -> Path:
    """Write any federation (in memory, generated, mapped) into a prepared folder, client by client.

    Client k's rows are its samples in the order `client_data(k)` gives them (for an in-memory
    federation: its sorted indices), so the prepared federation trains exactly like the original.
    """
    x0, y0 = federation.client_tensors(0) if federation.num_clients else (federation.test_x, federation.test_y)
    writer = PreparedWriter(
        path,
        federation.name,
        federation.num_classes,
        federation.input_shape,
        federation.client_sizes(),
        x_dtype=x0.numpy().dtype,
        y_dtype=y0.numpy().dtype,
        checksum=checksum,
    )
    for k in range(federation.num_clients):
        writer.add_client(*federation.client_tensors(k))
    return writer.close(
        federation.test_x,
        federation.test_y,
        client_test=federation.client_test_indices,
        client_names=federation.client_names,
        partition_sha256=federation.partition_sha256(),
        partition_notes=federation.partition_notes,
        source=source,
    )


def read_header(path: str | Path, verify: bool = False) -> dict[str, Any]:
    """The header of the prepared folder `path`, after the checks of the module docstring."""
    folder = Path(path).expanduser()
    header_path = folder / HEADER
    if not header_path.is_file():
        what = "no such folder" if not folder.exists() else f"no {HEADER} in it (not prepared, or interrupted)"
        raise _refuse(path, f"not a prepared federation: {what}; write one with python -m fedtorch.data.prepare")
    try:
        header = json.loads(header_path.read_text())
    except (OSError, ValueError) as error:
        raise _refuse(path, f"its {HEADER} cannot be read ({error}); prepare it again") from error
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise _refuse(path, f"{HEADER} is not a {FORMAT} header; prepare it again")
    if header.get("version") != VERSION:
        raise _refuse(
            path,
            f"written in format version {header.get('version')}, this fedtorch reads {VERSION}: prepare it again",
        )
    for entry in header["arrays"].values():
        file = folder / entry["file"]
        if not file.is_file():
            raise _refuse(path, f"{entry['file']} is missing; prepare it again")
        size = file.stat().st_size
        if size != entry["bytes"]:
            raise _refuse(
                path,
                f"{entry['file']} has {size} bytes, the header says {entry['bytes']} (truncated?); prepare it again",
            )
        if verify and entry.get("sha256") and file_sha256(file) != entry["sha256"]:
            raise _refuse(path, f"{entry['file']} does not match its sha256 (corrupted); prepare it again")
    return header


@dataclass
class MappedFederation(Federation):
    """A prepared folder as a federation: train rows memory-mapped, test set in memory."""

    name: str
    num_classes: int | None
    test_x: Tensor
    test_y: Tensor
    client_test_indices: ClientIndex | None
    client_names: Sequence[str] | None
    path: Path
    train_x: np.ndarray  # memory-mapped (read-only)
    train_y: np.ndarray
    offsets: np.ndarray
    header: dict[str, Any] = field(default_factory=dict)
    partition_notes: dict[str, float] = field(default_factory=dict)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train_x.shape[1:])

    @property
    def num_clients(self) -> int:
        return len(self.offsets) - 1

    def client_sizes(self) -> np.ndarray:
        return np.diff(self.offsets)

    def _rows(self, client_id: int) -> slice:
        return slice(int(self.offsets[client_id]), int(self.offsets[client_id + 1]))

    def client_tensors(self, client_id: int) -> tuple[Tensor, Tensor]:
        rows = self._rows(client_id)  # one contiguous block: only its pages are read
        return torch.from_numpy(np.array(self.train_x[rows])), torch.from_numpy(np.array(self.train_y[rows]))

    def client_labels(self, client_id: int) -> np.ndarray:
        """Client k's targets alone (its inputs' pages are never read)."""
        return np.asarray(self.train_y[self._rows(client_id)], dtype=np.int64)

    def partition_sha256(self) -> str:
        """The source partition's hash when the folder records it, else one over the client sizes."""
        recorded = self.header.get("partition_sha256")
        if recorded:
            return str(recorded)
        return hashlib.sha256(np.ascontiguousarray(self.client_sizes(), dtype="<i8").tobytes()).hexdigest()


def random_access(array: np.ndarray) -> np.ndarray:
    """Tell the kernel that `array`'s mapping is read at random: a round reads its cohort's rows,
    scattered over the file, and read-ahead around every page fault maps pages nobody asked for
    (measured on a cold page cache, 200 random clients of 10 rows of a million-client folder: 12 MiB
    mapped by default, 7 MiB with MADV_RANDOM)."""
    mapping = getattr(array, "_mmap", None)  # np.memmap keeps its mmap.mmap here
    if mapping is not None and hasattr(mmap, "MADV_RANDOM"):
        mapping.madvise(mmap.MADV_RANDOM)
    return array


def load_prepared(path: str, root: str | None = None, verify: bool = False) -> MappedFederation:
    """Open the prepared folder `path` (relative paths are taken from `root`, the data_dir, when
    they do not exist as given) after the header checks; `verify` also checks every sha256."""
    folder = Path(path).expanduser()
    if not folder.is_absolute() and not folder.exists() and root is not None:
        folder = Path(root).expanduser() / folder
    header = read_header(folder, verify=verify)

    def load(array: str) -> np.ndarray:
        return random_access(np.load(folder / header["arrays"][array]["file"], mmap_mode="r"))

    offsets = np.array(load("train_offsets"), dtype=np.int64)
    train_x, train_y = load("train_x"), load("train_y")
    if len(offsets) != header["num_clients"] + 1 or offsets[-1] != len(train_x) or len(train_y) != len(train_x):
        raise _refuse(path, "its offsets do not match its train arrays; prepare it again")
    test_x = torch.from_numpy(np.array(load("test_x")))
    test_y = torch.from_numpy(np.array(load("test_y")))
    client_test = None
    if "test_offsets" in header["arrays"]:
        client_test = ClientIndex(torch.from_numpy(np.array(load("test_values"))), np.array(load("test_offsets")))
    names = header.get("client_names")
    return MappedFederation(
        name=header["name"],
        num_classes=header["num_classes"],
        test_x=test_x,
        test_y=test_y,
        client_test_indices=client_test,
        client_names=names if names is not None else ClientNames("client", header["num_clients"]),
        path=folder,
        train_x=train_x,
        train_y=train_y,
        offsets=offsets,
        header=header,
        partition_notes={k: float(v) for k, v in header.get("partition_notes", {}).items()},
    )
