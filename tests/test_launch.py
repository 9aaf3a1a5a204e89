"""torchrun runs: the process group is torn down on every exit path, a config error is one line
printed once with exit status 2 (through `python -m fedtorch.launch`), and the launcher's command line."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
import torch.distributed as dist

from fedtorch.launch import split_arguments, torchrun_arguments
from tests.conftest import REPO_ROOT


def test_the_launcher_splits_torchrun_options_from_overrides():
    assert split_arguments(["--nproc_per_node=2", "rounds=3", "--x"]) == (["--nproc_per_node=2"], ["rounds=3", "--x"])
    assert torchrun_arguments(["--nproc_per_node=2", "rounds=3"]) == [
        "--nproc_per_node=2", "--standalone", "-m", "fedtorch", "rounds=3", "backend=distributed",
    ]  # fmt: skip
    assert torchrun_arguments(["backend=distributed", "-m"])[-2:] == ["backend=distributed", "-m"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("args", [("rounds=1",), ("trainer.lr=-1",)], ids=["finished", "config-error"])
def test_the_process_group_is_torn_down_on_every_exit_path(monkeypatch, tmp_path, args):
    """As one process of a torchrun job (world size 1): after the CLI returns or exits, no process
    group is left (a process that exits with a live group can abort with SIGABRT)."""
    from fedtorch import cli

    for key, value in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(_free_port())}.items():  # fmt: skip
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(sys, "argv", ["fedtorch", "backend=distributed", "logging.progress=false",
                                      "num_threads=1", f"hydra.run.dir={tmp_path / 'run'}", *args])  # fmt: skip
    try:
        cli.main()
        code = 0
    except SystemExit as stop:
        code = stop.code
    assert code == (2 if "trainer.lr=-1" in args else 0)
    assert not dist.is_initialized()


def test_a_config_error_under_torchrun_is_one_line_and_exit_2(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    env.pop("HYDRA_FULL_ERROR", None)
    proc = subprocess.run(
        [sys.executable, "-m", "fedtorch.launch", "--nproc_per_node=2", "trainer.lr=-1",
         f"hydra.run.dir={tmp_path / 'run'}"],  # fmt: skip
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("fedtorch: error:")]
    assert errors == ["fedtorch: error: trainer.lr=-1 is invalid: a finite number > 0"]
    assert "Traceback" not in proc.stderr and not (tmp_path / "run").exists()
