"""Per-client state: what a client keeps between its turns, held for it by the simulation.

SCAFFOLD's control variates, FedDyn's gradient corrections, Ditto's personal models, FedPer's
heads and a compressor's error-feedback residuals are tensors that belong to one client. A real
client stores them itself; the simulation keeps them in one `ClientStateStore`, keyed by
(client id, name), off the accelerator (so accelerator memory holds one client's state at a time),
and in every checkpoint. Only clients that have taken part hold an entry; the others read as a
default. A strategy reaches its clients' state only through the `ClientContext` of a client's
turn (`client.state`) and, for evaluation of personalized models, through `get`.

**Memory, then disk.** Without a `path` the store keeps everything in memory. With one, it keeps at
most `memory_bytes` of rows in memory and spills the least recently used to memory-mapped files:
SCAFFOLD on a million clients holds a control variate for every client that has trained, far more
than memory. Every name (`"c"`, `"head"`, ...) has fixed-size rows (its first entry's shape and
dtype), stored in slots: a `RowFile` is a rows file plus a slot table indexed by client id (slot + 1,
0 = no entry), both grown by doubling, so the disk holds only the clients that have state.

**Checkpoints and crashes.** A checkpoint must describe exactly the state of its round, although
the disk files keep changing after it. So the files are two layers:

    base      the state as of the last checkpoint (generation g), in `<path>/base/`
    overlay   every row written since: in memory, spilling to `<path>/overlay/`

`state_dict()` returns the overlay (rows written since generation g, as tensors), tagged
generation g + 1; the next write afterwards first *commits*: the header is marked "committing
g + 1", the overlay rows are copied into the base, the files flushed, the header set to g + 1, and
the overlay emptied. A resumed run loads its checkpoint's overlay onto the base and accepts the base
only when it is at g (the commit had not started), at g + 1, or was committing g + 1 (copying the
overlay again is idempotent: rows are whole values, not increments); the overlay files of the lost
trajectory are discarded. Anything else (the base moved past the checkpoint: resuming an older
checkpoint) is refused in one line. Until the first spill the store behaves as the in-memory one,
checkpoint format included (every entry in the checkpoint, no files).

With the distributed backend each process trains a share of the round's clients, and a client
need not land on the same process every round: `merge()` (one of the things the backend reduces
at the end of a round) gives every process the entries the others wrote, so all stores stay
identical; each process spills to its own folder and commits at the same checkpoints (the
experiment calls `mark_checkpoint` on the processes that do not write the checkpoint).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from fedtorch.errors import OptionError

Key = tuple[int, str]

STORE_FORMAT = "fedtorch.client_state"
STORE_VERSION = 1
HEADER = "base.json"


def _writable_or_refuse(path: Path, key: str) -> None:
    """One line naming `key` unless `path` is (or can be created as) a writable folder.

    Checked for real, without leaving a trace: a temporary file is created and removed in `path`'s
    nearest existing ancestor (permissions, read-only file systems, a file in the way all show).
    """
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise OptionError(key, str(path), f"{probe} is a file, not a folder: the client state needs a writable folder")
    try:
        handle, name = tempfile.mkstemp(prefix=".fedtorch_write_probe_", dir=probe)
    except OSError as error:
        raise OptionError(
            key, str(path), f"{probe} is not writable ({error.strerror}); choose a folder this process can write"
        ) from error
    os.close(handle)
    os.unlink(name)


class RowFile:
    """Fixed-size rows addressed by client id, in two memory-mapped files.

    `<name>.rows` holds the rows one after another; `<name>.slots` holds, for client k, slot + 1 of
    its row (0: none). Both grow by doubling (`truncate` extends a file with zeros, which read as
    "no entry"), so a client id of 999,999 costs 8 bytes of slot table, and only clients that
    hold a row cost a row. Writing a row before its slot makes a torn write harmless: a slot never
    points at a row that was not written.
    """

    def __init__(self, folder: Path, name: str, shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.folder, self.name = folder, name
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)
        self.row_bytes = max(1, int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize)
        folder.mkdir(parents=True, exist_ok=True)
        self._rows_path, self._slots_path = folder / f"{name}.rows", folder / f"{name}.slots"
        for p in (self._rows_path, self._slots_path):
            if not p.exists():
                p.touch()
        self._open()
        # Slots in use: every slot any table entry points at (a commit interrupted after writing
        # rows but before the header still leaves consistent slots).
        self.count = int(self._slots.max()) if len(self._slots) else 0

    def _open(self) -> None:
        slots_len = self._slots_path.stat().st_size // 8
        rows_len = self._rows_path.stat().st_size // self.row_bytes
        self._slots = (
            np.memmap(self._slots_path, np.int64, "r+", shape=(slots_len,)) if slots_len else np.zeros(0, np.int64)
        )
        self._rows = (
            np.memmap(self._rows_path, self.dtype, "r+", shape=(rows_len, *self.shape))
            if rows_len
            else np.zeros((0, *self.shape), self.dtype)
        )

    def _grow(self, path: Path, length: int, item: int) -> None:
        self.flush()
        self._slots = self._rows = None  # type: ignore[assignment]  # unmap before resizing
        with open(path, "r+b") as handle:
            handle.truncate(length * item)
        self._open()

    def slot(self, client: int) -> int:
        """The row of `client`, or -1."""
        return int(self._slots[client]) - 1 if client < len(self._slots) else -1

    def get(self, client: int) -> np.ndarray | None:
        s = self.slot(client)
        return None if s < 0 else np.array(self._rows[s])

    def put(self, client: int, value: np.ndarray) -> None:
        s = self.slot(client)
        if s < 0:
            s = self.count
            if s >= len(self._rows):
                self._grow(self._rows_path, max(64, 2 * len(self._rows), s + 1), self.row_bytes)
            self.count += 1
        self._rows[s] = value
        if client >= len(self._slots):
            self._grow(self._slots_path, max(1024, 2 * len(self._slots), client + 1), 8)
        self._slots[client] = s + 1

    def clients(self) -> np.ndarray:
        return np.flatnonzero(np.asarray(self._slots))

    def flush(self) -> None:
        for array in (self._slots, self._rows):
            if isinstance(array, np.memmap):
                array.flush()

    def disk_bytes(self) -> int:
        """Bytes the files occupy on disk (allocated blocks: the zero tails of sparse files are free)."""
        return sum(os.stat(p).st_blocks * 512 for p in (self._rows_path, self._slots_path))


def _numpy_dtype(dtype: torch.dtype) -> np.dtype:
    try:
        return np.dtype(torch.empty(0, dtype=dtype).numpy().dtype)
    except TypeError as error:  # bfloat16 and friends have no numpy dtype
        raise ValueError(f"client state of dtype {dtype} cannot be spilled to disk") from error


class ClientStateStore:
    """(client id, name) -> one tensor, in memory up to `memory_bytes`, then on disk under `path`.

    Args:
        storage: where idle state lives in memory (default the CPU).
        pin_memory: pin the stored tensors (faster host-to-device copies when CUDA is used).
        path: the folder the store spills to (None: memory only, unbounded, as before).
        memory_bytes: the most bytes of rows kept in memory before spilling (with `path`).
        fresh: start from an empty store, removing this store's files under `path` (a resumed run
            passes False and then loads its checkpoint).
    """

    def __init__(
        self,
        storage: torch.device | str = "cpu",
        pin_memory: bool = False,
        path: str | Path | None = None,
        memory_bytes: int | None = None,
        fresh: bool = True,
    ) -> None:
        self.storage = torch.device(storage)
        self.pin_memory = pin_memory and self.storage.type == "cpu" and torch.cuda.is_available()
        self.path = None if path is None else Path(path).expanduser()
        if self.path is not None:
            _writable_or_refuse(self.path, "client_state.dir")
        if memory_bytes is not None and (not isinstance(memory_bytes, int) or memory_bytes < 0):
            raise OptionError("client_state.memory_mb", memory_bytes, "a number of bytes >= 0")
        self.memory_bytes = memory_bytes
        self._memory: OrderedDict[Key, Tensor] = OrderedDict()  # the in-memory rows, least recently used first
        self._memory_used = 0
        self._written: set[Key] = set()  # entries written since the last merge
        self._layout: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}
        self._on_disk = False  # the store has spilled: from now on the base/overlay files are used
        self._overlay: dict[str, RowFile] = {}
        self._base: dict[str, RowFile] = {}
        self._generation = 0
        self._pending: int | None = None  # a checkpoint took generation N: commit before the next write
        if self.path is not None and fresh:
            self._remove_files()

    # -- reading ---------------------------------------------------------------------------------
    def __len__(self) -> int:
        return sum(len(self.clients(name)) for name in self._layout)

    def clients(self, name: str) -> list[int]:
        """The clients that hold an entry `name`, in id order."""
        ids = {k for k, n in self._memory if n == name}
        for layer in (self._overlay, self._base):
            if name in layer:
                ids.update(int(k) for k in layer[name].clients())
        return sorted(ids)

    def names(self) -> list[str]:
        return sorted(name for name in self._layout if self.clients(name))

    def has(self, client_id: int, name: str) -> bool:
        key = (int(client_id), name)
        if key in self._memory:
            return True
        return any(name in layer and layer[name].slot(key[0]) >= 0 for layer in (self._overlay, self._base))

    def _read(self, client_id: int, name: str) -> Tensor | None:
        """The stored tensor (memory, then overlay file, then base file), or None."""
        key = (int(client_id), name)
        value = self._memory.get(key)
        if value is not None:
            self._memory.move_to_end(key)
            return value
        for layer in (self._overlay, self._base):
            if name in layer:
                row = layer[name].get(key[0])
                if row is not None:
                    return torch.from_numpy(row).view(self._layout[name][1])
        return None

    def get(
        self, client_id: int, name: str, device: torch.device | str, default: Callable[[], Tensor] | None = None
    ) -> Tensor | None:
        """A copy of the entry on `device`; `default()` (or None) for a client without one."""
        stored = self._read(client_id, name)
        if stored is None:
            return None if default is None else default()
        return stored.to(device, copy=True, non_blocking=self.pin_memory)

    def of(self, client_id: int, device: torch.device | str) -> ClientState:
        """The handle one client's turn uses: this client's entries only."""
        return ClientState(self, int(client_id), torch.device(device))

    # -- writing -----------------------------------------------------------------------------------
    def put(self, client_id: int, name: str, value: Tensor) -> None:
        """Store a copy of `value` (one device-to-host copy per client turn)."""
        self._commit_pending()
        stored = value.detach().to(self.storage, copy=True)
        self._check_layout(name, stored)
        if self.pin_memory:
            stored = stored.pin_memory()
        key = (int(client_id), name)
        self._store(key, stored)
        self._written.add(key)

    def _check_layout(self, name: str, value: Tensor) -> None:
        layout = (tuple(value.shape), value.dtype)
        known = self._layout.setdefault(name, layout)
        if known != layout and self.path is not None:
            raise ValueError(
                f"client state {name!r} has fixed-size rows of shape {known[0]} and dtype {known[1]}; got "
                f"{layout[0]} {layout[1]}"
            )

    def _store(self, key: Key, stored: Tensor) -> None:
        """Into memory (as the most recently used), then spill while over the budget."""
        old = self._memory.pop(key, None)
        if old is not None:
            self._memory_used -= old.numel() * old.element_size()
        self._memory[key] = stored
        self._memory_used += stored.numel() * stored.element_size()
        if self.path is None or self.memory_bytes is None:
            return
        while self._memory_used > self.memory_bytes and self._memory:
            (client, name), evicted = self._memory.popitem(last=False)
            self._memory_used -= evicted.numel() * evicted.element_size()
            self._spill(client, name, evicted)

    def _rowfile(self, layer: dict[str, RowFile], folder: str, name: str) -> RowFile:
        if name not in layer:
            shape, dtype = self._layout[name]
            assert self.path is not None
            layer[name] = RowFile(self.path / folder, name, shape, _numpy_dtype(dtype))
        return layer[name]

    def _spill(self, client: int, name: str, value: Tensor) -> None:
        if not self._on_disk:
            self._on_disk = True
            self._write_header(self._generation, None)
        self._rowfile(self._overlay, "overlay", name).put(client, value.cpu().numpy())

    # -- checkpoints ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The checkpoint's form: {"entries": {name: {client id: tensor}}}; once the store has spilled,
        only the rows written since the last checkpoint, with the generation they bring the base to."""
        out: dict[str, dict[int, Tensor]] = {}
        for client, name in sorted(self._overlay_keys()):
            out.setdefault(name, {})[client] = self._read(client, name).clone()  # type: ignore[union-attr]
        if not self._on_disk:
            return {"entries": out}
        self._commit_pending()
        self._pending = self._generation + 1
        return {"entries": out, "generation": self._pending, "base_generation": self._generation}

    def mark_checkpoint(self) -> None:
        """What `state_dict()` does to the files, without building the state (processes that do not
        write the checkpoint call it at the same rounds, so every process commits the same rows)."""
        if self._on_disk:
            self._commit_pending()
            self._pending = self._generation + 1

    def _overlay_keys(self) -> set[Key]:
        keys = set(self._memory)
        for name, rows in self._overlay.items():
            keys.update((int(k), name) for k in rows.clients())
        return keys

    def _commit_pending(self) -> None:
        if self._pending is None:
            return
        target, self._pending = self._pending, None
        self._commit(target)

    def _commit(self, target: int) -> None:
        """Copy the overlay into the base, which then holds generation `target`."""
        self._write_header(self._generation, target)
        for client, name in sorted(self._overlay_keys()):
            value = self._read(client, name)
            assert value is not None
            self._rowfile(self._base, "base", name).put(client, value.cpu().numpy())
        for rows in self._base.values():
            rows.flush()
        self._generation = target
        self._write_header(target, None)
        self._memory.clear()
        self._memory_used = 0
        self._reset_overlay()

    def _reset_overlay(self) -> None:
        self._overlay = {}
        if self.path is not None:
            shutil.rmtree(self.path / "overlay", ignore_errors=True)

    def _write_header(self, generation: int, committing: int | None) -> None:
        assert self.path is not None
        self.path.mkdir(parents=True, exist_ok=True)
        header = {
            "format": STORE_FORMAT,
            "version": STORE_VERSION,
            "generation": generation,
            "committing": committing,
            "layout": {n: [list(s), str(d).removeprefix("torch.")] for n, (s, d) in self._layout.items()},
        }
        tmp = self.path / f".{HEADER}.tmp"
        with open(tmp, "w") as handle:
            json.dump(header, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.path / HEADER)

    def _read_header(self) -> dict[str, Any] | None:
        if self.path is None or not (self.path / HEADER).is_file():
            return None
        try:
            header = json.loads((self.path / HEADER).read_text())
        except (OSError, ValueError) as error:
            raise ValueError(f"client state header {self.path / HEADER} cannot be read: {error}") from error
        if header.get("format") != STORE_FORMAT or header.get("version") != STORE_VERSION:
            raise ValueError(f"{self.path} holds no client state of format {STORE_FORMAT} version {STORE_VERSION}")
        return header

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint's `state_dict()` (with its base files when it had spilled)."""
        self._memory.clear()
        self._memory_used = 0
        self._written.clear()
        self._pending = None
        self._reset_overlay()  # rows of a trajectory after the checkpoint
        header = self._read_header()
        base_generation = 0 if header is None else int(header["generation"])
        committing = None if header is None else header.get("committing")
        entries = state.get("entries", {})
        if "generation" in state:
            target, before = int(state["generation"]), int(state["base_generation"])
            if self.path is None or header is None:
                raise ValueError(
                    f"the checkpoint's client state lives on disk (generation {target}) and this store has "
                    f"none{'' if self.path is None else f' at {self.path}'}: resume in the run's own folder"
                )
            ok = (base_generation == before and committing in (None, target)) or (
                base_generation == target and committing is None
            )
            if not ok:
                raise ValueError(
                    f"the client state on disk at {self.path} is at generation {base_generation}"
                    f"{f' (committing {committing})' if committing else ''}, the checkpoint at {target}: it belongs "
                    "to a later checkpoint of this run; resume from the latest checkpoint"
                )
            self._layout = {n: (tuple(s), getattr(torch, d)) for n, (s, d) in header["layout"].items()}
            self._generation = base_generation
            self._on_disk = True
            self._base = {}
            for name in self._layout:
                if (self.path / "base" / f"{name}.rows").exists():
                    self._rowfile(self._base, "base", name)
            self._load_entries(entries)
            self._commit(target)  # the checkpoint's rows onto the base: the store is exactly at its round
            return
        if base_generation != 0 or committing:
            raise ValueError(
                f"the client state on disk at {self.path} is at generation {base_generation}, the checkpoint "
                "predates it: resume from the latest checkpoint"
            )
        self._remove_files()
        self._on_disk, self._generation, self._layout = False, 0, {}
        self._load_entries(entries)

    def _load_entries(self, entries: dict[str, dict[int, Tensor]]) -> None:
        for name, rows in entries.items():
            for client, value in rows.items():
                stored = value.to(self.storage)
                self._check_layout(name, stored)
                self._store((int(client), name), stored)

    def _remove_files(self) -> None:
        """This store's own files (never anything else a user put in the folder)."""
        self._base, self._overlay = {}, {}
        if self.path is None:
            return
        for sub in ("base", "overlay"):
            shutil.rmtree(self.path / sub, ignore_errors=True)
        (self.path / HEADER).unlink(missing_ok=True)

    def disk_bytes(self) -> int:
        """Bytes this store's files occupy on disk (0 while it has not spilled)."""
        return sum(rows.disk_bytes() for layer in (self._base, self._overlay) for rows in layer.values())

    # -- processes -------------------------------------------------------------------------------------
    def merge(self, group: dist.ProcessGroup | None = None) -> None:
        """Exchange the entries written since the last merge with every process of `group`."""
        self._commit_pending()
        mine = {f"{k}/{n}": self._read(k, n) for k, n in sorted(self._written)}
        gathered: list[dict[str, Tensor] | None] = [None] * dist.get_world_size(group)
        dist.all_gather_object(gathered, mine, group=group)
        for entries in gathered:
            for key, value in (entries or {}).items():
                client, _, name = key.partition("/")
                stored = value.to(self.storage)
                self._check_layout(name, stored)
                self._store((int(client), name), stored)
        self._written.clear()


class ClientState:
    """One client's entries in a `ClientStateStore`, moved to `device` on read."""

    def __init__(self, store: ClientStateStore, client_id: int, device: torch.device) -> None:
        self._store = store
        self.client_id = client_id
        self.device = device

    def get(self, name: str, default: Callable[[], Tensor] | None = None) -> Tensor | None:
        return self._store.get(self.client_id, name, self.device, default)

    def put(self, name: str, value: Tensor) -> None:
        self._store.put(self.client_id, name, value)

    def __contains__(self, name: str) -> bool:
        return self._store.has(self.client_id, name)

    def __iter__(self) -> Iterator[str]:
        return iter(n for n in self._store.names() if self._store.has(self.client_id, n))
