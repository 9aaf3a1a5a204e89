"""The checkpoint file: what it holds, how it is written (atomically) and read (weights_only).

A checkpoint is one file, `<run>/checkpoints/round_NNNNNN.pt`, holding the simulation's state
(`Simulation.state_dict()`: round, metrics history, global model, strategy and server-optimizer
state, per-client state, transforms, sampler state, the global random streams, a planned stop)
plus the run's resolved config, so a resumed run can refuse a config that differs from the one it
started with.

- Written atomically (temporary file in the same folder, fsync, rename), so a kill at any point
  leaves the previous checkpoint intact and never a torn `round_*.pt`.
- Loaded with `torch.load(weights_only=True)`: a checkpoint cannot execute code. Its content is
  restricted to tensors, numbers, strings, None and lists/tuples/dicts of them; numpy arrays are
  stored as tensors and come back as numpy arrays. Every tensor comes back on the CPU; a
  component's `load_state_dict` copies into its own (device) tensors, as `torch.optim` does.
"""

from __future__ import annotations

import io
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedtorch.io import atomic_write_bytes

FORMAT = "fedtorch.checkpoint"
VERSION = 1
CHECKPOINT_DIR = "checkpoints"
_NAME = re.compile(r"^round_(\d+)\.pt$")
_NDARRAY = "__ndarray__"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used (corrupt, from another config, ...); the message is one line."""


def checkpoint_path(run_dir: str | Path, round_idx: int) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR / f"round_{round_idx:06d}.pt"


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """(round, path) of every checkpoint in `run_dir`, oldest first (temporary files ignored)."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return sorted(found)


def remove_temporaries(run_dir: str | Path) -> None:
    """Delete the temporary files a kill during a checkpoint write leaves behind."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    if folder.is_dir():
        for path in folder.glob(".*.tmp"):
            path.unlink(missing_ok=True)


def to_safe(obj: Any, where: str = "checkpoint") -> Any:
    """`obj` with numpy arrays/scalars converted, checked to load under `weights_only=True`.

    Raises TypeError naming the offending entry, so a component with an unsupported state fails
    when the checkpoint is written, not when someone tries to resume from it.
    """
    if obj is None or isinstance(obj, (torch.Tensor, torch.dtype, torch.Size)):
        return obj
    for kind in (bool, int, float, str, bytes):
        if isinstance(obj, kind):
            # Subclasses (torch.__version__'s TorchVersion, IntEnum) would pickle as their class.
            return kind(obj)
    if isinstance(obj, np.ndarray):
        if obj.dtype == object:
            raise TypeError(f"{where}: numpy object arrays cannot be checkpointed")
        return {_NDARRAY: torch.from_numpy(np.ascontiguousarray(obj).copy())}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Mapping):
        out = {}
        for key, value in obj.items():
            if not isinstance(key, (str, int)):
                raise TypeError(f"{where}: dict key {key!r} is a {type(key).__name__}; use str or int keys")
            out[key] = to_safe(value, f"{where}.{key}")
        return out
    if isinstance(obj, (list, tuple)):
        items = [to_safe(value, f"{where}[{i}]") for i, value in enumerate(obj)]
        return items if isinstance(obj, list) else tuple(items)
    raise TypeError(
        f"{where} is a {type(obj).__name__}: checkpoints hold tensors, numbers, strings, None, numpy arrays "
        "and lists/dicts of them (so that they load with weights_only=True)"
    )


def from_safe(obj: Any) -> Any:
    """Undo `to_safe`: arrays stored as tensors become numpy arrays again."""
    if isinstance(obj, dict):
        if set(obj) == {_NDARRAY}:
            return obj[_NDARRAY].numpy()
        return {key: from_safe(value) for key, value in obj.items()}
    if isinstance(obj, list):
        return [from_safe(value) for value in obj]
    if isinstance(obj, tuple):
        return tuple(from_safe(value) for value in obj)
    return obj


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Write `payload` atomically: a reader sees the previous file or the whole new one."""
    buffer = io.BytesIO()
    torch.save(to_safe(payload), buffer)
    # Prove now that it loads under weights_only, rather than find out when resuming.
    buffer.seek(0)
    torch.load(buffer, map_location="cpu", weights_only=True)
    atomic_write_bytes(path, buffer.getbuffer())


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint (weights_only: no code runs); CheckpointError if it is not a usable one."""
    path = Path(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises RuntimeError, EOFError, UnpicklingError, ... for bad files
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise CheckpointError(
            f"checkpoint {path} cannot be read ({type(error).__name__}: {reason[:200]}); it is truncated, "
            "corrupt or not a fedtorch checkpoint"
        ) from error
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} is not a fedtorch checkpoint")
    if payload.get("version") != VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format version {payload.get('version')!r}; this fedtorch reads version {VERSION}"
        )
    return from_safe(payload)


def make_payload(
    round_idx: int,
    simulation: dict[str, Any],
    config: dict[str, Any] | None = None,
    choices: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The checkpoint file's content around a `Simulation.state_dict()`."""
    from fedtorch import __version__

    return {
        "format": FORMAT,
        "version": VERSION,
        "round": int(round_idx),
        "fedtorch_version": __version__,
        "torch_version": torch.__version__,
        "config": config or {},
        "choices": choices or {},
        "simulation": simulation,
    }
