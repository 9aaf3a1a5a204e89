"""`fedtorch.provenance`: git state, versions, partition hash; and their place in summary.json."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess

import numpy as np
import pytest
import torch

from fedtorch import provenance
from tests.conftest import REPO_ROOT

needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


def _git(repo, *args: str) -> str:
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@x", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@x"}
    proc = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, env={**os.environ, **env})
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_partition_hash_identifies_the_split_not_its_container():
    parts = [np.array([0, 3, 5]), np.array([1, 2]), np.array([4])]
    h = provenance.partition_hash(parts)
    assert h == provenance.partition_hash([torch.tensor(p) for p in parts])
    assert h == provenance.partition_hash([p.tolist() for p in parts])
    assert h == provenance.partition_hash([p.astype(np.int32) for p in parts])
    # A second computation of the documented encoding: per client, its length then its indices, as
    # little-endian int64 (struct, not numpy).
    import hashlib
    import struct

    raw = b"".join(struct.pack(f"<q{len(p)}q", len(p), *p.tolist()) for p in parts)
    assert h == hashlib.sha256(raw).hexdigest()
    # A sample moving between clients, a reordering within a client, a shifted boundary: all differ.
    assert provenance.partition_hash([[0, 3], [5, 1, 2], [4]]) != h
    assert provenance.partition_hash([[3, 0, 5], [1, 2], [4]]) != h
    assert provenance.partition_hash([[0, 1], [2]]) != provenance.partition_hash([[0], [1, 2]])


@needs_git
def test_git_state_commit_dirty_and_untracked(tmp_path):
    _git(tmp_path, "init", "-q")
    (tmp_path / "a.py").write_text("x = 1\n")
    _git(tmp_path, "add", "a.py")
    _git(tmp_path, "commit", "-q", "-m", "first")
    head = _git(tmp_path, "rev-parse", "HEAD")
    assert provenance.git_state(tmp_path) == {"commit": head, "dirty": False, "untracked": 0}
    (tmp_path / "new.py").write_text("y = 2\n")  # untracked: counted, but not "dirty" (as git describe --dirty)
    assert provenance.git_state(tmp_path) == {"commit": head, "dirty": False, "untracked": 1}
    (tmp_path / "a.py").write_text("x = 2\n")
    assert provenance.git_state(tmp_path) == {"commit": head, "dirty": True, "untracked": 1}


def test_git_state_outside_a_repository_or_without_git(tmp_path, monkeypatch):
    none = {"commit": None, "dirty": None, "untracked": None}
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))  # no repository above tmp_path either
    assert provenance.git_state(tmp_path) == none
    monkeypatch.setenv("PATH", str(tmp_path))  # no git executable at all
    assert provenance.git_state(REPO_ROOT) == none
    record = provenance.collect("cpu", [[0, 1]], ["python", "-m", "fedtorch"], repo=REPO_ROOT)
    assert record["git_commit"] is None and record["torch_version"] == torch.__version__


def test_collect_records_versions_device_command_and_partition():
    record = provenance.collect("cpu", [np.arange(3), np.arange(3, 5)], ["python", "-m", "fedtorch", "trainer.lr=0.1"])
    assert record["torch_version"] == torch.__version__
    assert record["python_version"] == platform.python_version()
    assert record["numpy_version"] == np.__version__
    assert record["fedtorch_version"] == __import__("fedtorch").__version__
    assert record["device"] == "cpu" and record["num_threads"] == torch.get_num_threads()
    assert record["command"] == "python -m fedtorch trainer.lr=0.1"
    assert record["partition_sha256"] == provenance.partition_hash([np.arange(3), np.arange(3, 5)])
    json.dumps(record)  # it must go into summary.json as is


def test_a_run_records_its_provenance_in_summary_json(tmp_path, compose_config):
    """In-process (the CLI's own command line is checked by the sweep tests, where it matters most)."""
    from fedtorch.experiment import build_federation, run_experiment

    # One thread: tiny models gain nothing from more, and a busy machine makes them much slower.
    cfg = compose_config("rounds=1", "num_threads=1", "logging.progress=false", "logging.tensorboard=false")
    threads = torch.get_num_threads()
    try:
        run_experiment(cfg, tmp_path)
    finally:
        torch.set_num_threads(threads)
    record = json.loads((tmp_path / "summary.json").read_text())["provenance"]

    _, fed = build_federation(cfg)  # the partition hash is that of the partition the config builds
    assert record["partition_sha256"] == provenance.partition_hash(fed.client_indices)
    # device=auto: CUDA where the machine has it (the test must pass on a GPU machine as well).
    from fedtorch.provenance import device_description
    from fedtorch.validation import resolve_device

    assert record["device"] == device_description(resolve_device("auto"))
    assert record["torch_version"] == torch.__version__
    assert record["num_threads"] == 1
    git = provenance.git_state(REPO_ROOT)
    assert record["git_commit"] == git["commit"]  # None on both sides where git or the repository is missing
    if git["commit"] is not None:
        assert isinstance(record["git_dirty"], bool)
