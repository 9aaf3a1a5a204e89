"""Checkpoints: everything a run needs to continue exactly where it stopped.

A checkpoint is one file, `<run>/checkpoints/round_NNNNNN.pt`, holding the simulation's state
(`Simulation.state_dict()`: round, metrics history, global model, strategy and server-optimizer
state, per-client state, sampler state, the global random streams) plus the run's resolved config,
so a resumed run can refuse a config that differs from the one it started with.

Safety properties, and why:

- Written atomically (temporary file in the same folder, fsync, rename), so a kill at any point
  leaves the previous checkpoint intact and never a torn `round_*.pt`.
- Loaded with `torch.load(weights_only=True)`: a checkpoint cannot execute code. Its content is
  restricted to tensors, numbers, strings, None and lists/tuples/dicts of them; numpy arrays are
  stored as tensors and come back as numpy arrays. Every tensor comes back on the CPU; a
  component's `load_state_dict` copies into its own (device) tensors, as `torch.optim` does.
- Everything else random in fedtorch derives from (seed, purpose, round, client), so the round
  number replaces most RNG state; the global torch/numpy/python streams are saved anyway for
  components that draw from them.

This module is plain Python: the config arrives as a nested dict, overrides as key paths.
"""

from __future__ import annotations

import io
import os
import random
import re
import signal
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedtorch.io import _atomic_write

FORMAT = "fedtorch.checkpoint"
VERSION = 1
CHECKPOINT_DIR = "checkpoints"
_NAME = re.compile(r"^round_(\d+)\.pt$")
_NDARRAY = "__ndarray__"

#: Config keys a resumed run may change: they do not alter what the rounds compute (`rounds` may
#: only grow, to extend training). Everything else must match the checkpoint's config.
RESUMABLE_KEYS = ("rounds", "resume", "checkpoint_every", "device", "data_dir", "num_threads", "objective", "logging")

#: Environment variable of the crash-test hook: `round:R` SIGKILLs the process in the middle of round
#: R (clients trained, model not yet updated), `checkpoint:R` half-way through writing round R's
#: checkpoint. Used by the tests to prove that a kill at those points loses nothing.
KILL_ENV = "FEDTORCH_KILL_AT"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used (corrupt, from another config, ...); the message is one line."""


def kill_point(name: str, round_idx: int) -> None:
    """SIGKILL this process if `$FEDTORCH_KILL_AT` names this point (a test hook; no-op otherwise)."""
    if os.environ.get(KILL_ENV) == f"{name}:{round_idx}":
        os.kill(os.getpid(), signal.SIGKILL)


# -- the files ----------------------------------------------------------------------------------
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
    data = buffer.getbuffer()
    half = len(data) // 2

    def write(handle: Any) -> None:
        handle.write(data[:half])
        handle.flush()
        kill_point("checkpoint", int(payload.get("round", -1)))  # test hook: a torn temporary file
        handle.write(data[half:])

    _atomic_write(path, write)


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


# -- global random streams ------------------------------------------------------------------------
def rng_state() -> dict[str, Any]:
    """The process-wide random streams (torch CPU and CUDA, numpy legacy, python `random`)."""
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` captured (CUDA streams only where the same GPUs are present)."""
    torch.set_rng_state(state["torch"].cpu())
    legacy = state["numpy"]
    np.random.set_state(
        ("MT19937", legacy["keys"].numpy().astype(np.uint32), legacy["pos"], legacy["has_gauss"], legacy["gauss"])
    )
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available() and torch.cuda.device_count() == len(cuda):
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])


# -- deciding how a run starts ----------------------------------------------------------------------
@dataclass
class ResumePlan:
    """How a run starts: fresh, from a checkpoint, or not at all (already finished).

    Attributes:
        run_dir: the folder the run writes into (the resumed run's folder when resuming).
        config: the config to run with (the checkpoint's, with allowed changes applied).
        checkpoint: the loaded checkpoint, None for a fresh start.
        checkpoint_path: where it was read from.
        finished: the summary of a run that already ended (completed or diverged): nothing to do.
        choices: the config-group choices the run was composed with (the checkpoint's when resuming
            from a run folder), to store in its next checkpoints.
    """

    run_dir: Path
    config: dict[str, Any]
    choices: dict[str, Any] = field(default_factory=dict)
    checkpoint: dict[str, Any] | None = None
    checkpoint_path: Path | None = None
    finished: dict[str, Any] | None = None

    @property
    def round(self) -> int:
        return 0 if self.checkpoint is None else int(self.checkpoint["round"])


def _allowed(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in RESUMABLE_KEYS)


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict) and tree:
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: tree}


def config_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(key, saved value, current value) for every leaf that differs, outside `RESUMABLE_KEYS`."""
    missing = object()
    a, b = _flatten(saved), _flatten(current)
    diffs = []
    for key in sorted(set(a) | set(b)):
        if _allowed(key):
            continue
        left, right = a.get(key, missing), b.get(key, missing)
        if left != right:
            diffs.append((key, None if left is missing else left, None if right is missing else right))
    return diffs


def _select(tree: dict[str, Any], key: str) -> Any:
    node: Any = tree
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _assign(tree: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value


def _describe(diffs: Sequence[tuple[str, Any, Any]]) -> str:
    shown = ", ".join(f"{k}: {a!r} then, {b!r} now" for k, a, b in diffs[:3])
    more = f" (and {len(diffs) - 3} more)" if len(diffs) > 3 else ""
    return shown + more


def _read_summary(run_dir: Path) -> dict[str, Any] | None:
    import json

    path = run_dir / "summary.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # unreadable: treat the run as unfinished and recompute it


def plan_resume(
    resume: str | None,
    output_dir: str | Path,
    config: dict[str, Any],
    overridden: Iterable[str] = (),
    choices: Mapping[str, Any] | None = None,
) -> ResumePlan:
    """Decide how a run starts.

    Args:
        resume: `"auto"`: continue from the latest checkpoint in `output_dir` if there is one (so
            re-running a command with the same run folder resumes it), else start fresh; None:
            start fresh, refusing a folder that already holds checkpoints; a path: continue the run
            in that folder (or from that checkpoint file), writing into that folder.
        output_dir: this invocation's run folder (Hydra's).
        config: the composed, resolved config of this invocation.
        overridden: the keys set on the command line (`trainer.lr`, `strategy`, ...).
        choices: config-group choices of this invocation (`strategy: fedavg`, ...).

    With `"auto"` the whole config must equal the checkpoint's, apart from `RESUMABLE_KEYS`. With a
    path the run continues with the checkpoint's config; command-line overrides may change only
    `RESUMABLE_KEYS`, and any other override must repeat the saved value.
    """
    output_dir = Path(output_dir)
    choices = {k: v for k, v in (choices or {}).items() if not str(k).startswith("hydra/")}
    if resume is None or resume == "auto":
        found = list_checkpoints(output_dir)
        if not found:
            return ResumePlan(run_dir=output_dir, config=config, choices=choices)
        if resume is None:
            raise CheckpointError(
                f"resume=null but the run folder {output_dir} already holds checkpoints of a run; use resume=auto "
                "to continue it, or another hydra.run.dir for a new run"
            )
        path, run_dir, explicit = found[-1][1], output_dir, False
    else:
        target = Path(resume).expanduser()
        if target.is_dir():
            found = list_checkpoints(target)
            if not found:
                raise CheckpointError(f"resume={resume!r} is invalid: {target} holds no checkpoints/round_*.pt")
            path, run_dir = found[-1][1], target
        elif target.is_file():
            path = target
            run_dir = target.parent.parent if target.parent.name == CHECKPOINT_DIR else target.parent
        else:
            raise CheckpointError(f"resume={resume!r} is invalid: no such run folder or checkpoint file")
        explicit = True

    checkpoint = load_checkpoint(path)
    saved = checkpoint.get("config") or {}
    if explicit:
        effective = _merge_explicit(saved, config, overridden, choices, checkpoint.get("choices") or {}, run_dir)
    else:
        diffs = config_differences(saved, config)
        if diffs:
            raise CheckpointError(
                f"the run folder {run_dir} holds a run with another config ({_describe(diffs)}); a resumed run "
                f"keeps its config (only {', '.join(RESUMABLE_KEYS)} may change): use another hydra.run.dir "
                "for a new run"
            )
        effective = config

    rounds = effective.get("rounds")
    if isinstance(rounds, int) and rounds < checkpoint["round"]:
        raise CheckpointError(
            f"rounds={rounds} is invalid: the checkpoint {path} is at round {checkpoint['round']}; "
            "a resumed run can only keep or extend its rounds"
        )
    kept_choices = dict(checkpoint.get("choices") or {}) if explicit else choices
    plan = ResumePlan(
        run_dir=run_dir, config=effective, choices=kept_choices, checkpoint=checkpoint, checkpoint_path=path
    )
    summary = _read_summary(run_dir)
    if summary is not None and (summary.get("diverged") or summary.get("rounds") == rounds):
        plan.finished = summary
    return plan


def _merge_explicit(
    saved: dict[str, Any],
    current: dict[str, Any],
    overridden: Iterable[str],
    choices: Mapping[str, Any],
    saved_choices: Mapping[str, Any],
    run_dir: Path,
) -> dict[str, Any]:
    """The checkpoint's config with the allowed command-line overrides applied; other overrides must agree."""
    import copy

    effective = copy.deepcopy(saved)
    for key in overridden:
        if _allowed(key):
            _assign(effective, key, copy.deepcopy(_select(current, key)))
            continue
        if key in choices and saved_choices:
            same, now, then = choices[key] == saved_choices.get(key), choices[key], saved_choices.get(key)
        else:
            now, then = _select(current, key), _select(saved, key)
            same = now == then
        if not same:
            raise CheckpointError(
                f"{key}={now!r} is invalid when resuming {run_dir}: that run has {key}={then!r} and keeps its "
                f"config (only {', '.join(RESUMABLE_KEYS)} may change)"
            )
    return effective
