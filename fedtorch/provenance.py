"""Provenance: what produced a run, so a number in a table can be traced back and reproduced.

`collect` gathers the code version (git commit, whether the working tree was dirty), the library
versions (fedtorch, torch, numpy, Python), the machine (host, device, torch threads), the command
and a hash of the client partition. `experiment.run_experiment` stores it in `summary.json` under
"provenance"; `python -m fedtorch.report --provenance` shows it.

Everything here degrades gracefully: without git, or outside a repository, the git fields are
None rather than an error, because a run must never fail for want of its provenance.
"""

from __future__ import annotations

import hashlib
import platform
import shlex
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

import fedtorch

_GIT_TIMEOUT_S = 10.0


def _git(repo: Path, *args: str) -> str | None:
    """Output of `git -C repo ARGS`, or None when git is missing, fails or hangs."""
    try:
        proc = subprocess.run(
            ["git", "-C", str(repo), *args],
            capture_output=True,
            text=True,
            timeout=_GIT_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout if proc.returncode == 0 else None


def git_state(path: str | Path | None = None) -> dict[str, Any]:
    """The git commit of the checkout holding `path` (default: the fedtorch package) and its state.

    Returns `{"commit", "dirty", "untracked"}`. `dirty` follows `git describe --dirty`: True when a
    tracked file differs from the commit (staged or not). `untracked` counts files git does not
    track and does not ignore: they do not make the tree dirty by that definition, but a new,
    uncommitted module can still change what ran. All three are None when git is unavailable or
    `path` is not inside a repository.
    """
    repo = Path(path) if path is not None else Path(fedtorch.__file__).resolve().parent
    commit = _git(repo, "rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None, "untracked": None}
    status = _git(repo, "status", "--porcelain", "--untracked-files=all")
    if status is None:
        return {"commit": commit.strip(), "dirty": None, "untracked": None}
    lines = [line for line in status.splitlines() if line.strip()]
    untracked = sum(line.startswith("??") for line in lines)
    return {"commit": commit.strip(), "dirty": len(lines) > untracked, "untracked": untracked}


def partition_hash(client_indices: Sequence[Any]) -> str:
    """sha256 over the clients' sample-index arrays, in client order.

    Each client contributes its length then its indices as little-endian int64, so two partitions
    hash equal exactly when every client holds the same indices in the same order (the order
    matters: it feeds the batch order). Accepts numpy arrays, torch tensors (any device) or lists.
    """
    digest = hashlib.sha256()
    for indices in client_indices:
        if isinstance(indices, torch.Tensor):
            indices = indices.detach().cpu().numpy()
        array = np.ascontiguousarray(np.asarray(indices, dtype="<i8"))
        digest.update(np.int64(array.size).astype("<i8").tobytes())
        digest.update(array.tobytes())
    return digest.hexdigest()


def device_description(device: torch.device | str) -> str:
    """'cpu', or 'cuda:0 (NVIDIA H100 80GB HBM3)': the device and, for a GPU, its model."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return str(device)


def collect(
    device: torch.device | str = "cpu",
    client_indices: Sequence[Any] | None = None,
    command: Sequence[str] | None = None,
    repo: str | Path | None = None,
) -> dict[str, Any]:
    """Everything needed to trace a run back to its code, environment and data split.

    Args:
        device: where the run computes.
        client_indices: the partition (client k -> sample indices); hashed, not stored.
        command: the command that reruns this run (argv-style); default this process's argv.
        repo: a path inside the git checkout to describe; default the fedtorch package's own.
    """
    command = list(command) if command is not None else [sys.executable, *sys.argv]
    git = git_state(repo)
    return {
        "git_commit": git["commit"],
        "git_dirty": git["dirty"],
        "git_untracked": git["untracked"],
        "fedtorch_version": fedtorch.__version__,
        "torch_version": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "numpy_version": np.__version__,
        "python_version": platform.python_version(),
        "platform": platform.platform(),
        "hostname": platform.node(),
        "device": device_description(device),
        "num_threads": torch.get_num_threads(),
        "command": shlex.join(command),
        "argv": shlex.join(sys.argv),
        "partition_sha256": partition_hash(client_indices) if client_indices is not None else None,
    }


__all__ = ["collect", "device_description", "git_state", "partition_hash"]
