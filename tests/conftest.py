"""Shared test helpers: the repo root, the real-data folder, and a CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

# The suite's models are tiny: one intra-op thread is faster than two (no hand-off cost) and
# keeps timings steady when the machine is busy. Subprocesses inherit it through the environment.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)

REPO_ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = REPO_ROOT / "conf"


def shared_data_dir() -> Path:
    """The real datasets: $FEDTORCH_DATA, else ../shared/data beside the repository."""
    env = os.environ.get("FEDTORCH_DATA")
    return Path(env) if env else (REPO_ROOT.parent / "shared" / "data").resolve()


# The configs find the real data through $FEDTORCH_DATA (conf/config.yaml's data_dir): point it at
# ../shared/data when the caller did not, so README's bare `pytest` command (and CI) sees the files
# the tests expect. Subprocesses inherit it.
if "FEDTORCH_DATA" not in os.environ and shared_data_dir().is_dir():
    os.environ["FEDTORCH_DATA"] = str(shared_data_dir())


def run_cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: int = 300):
    """Run `python -m fedtorch ARGS` in a subprocess; returns the CompletedProcess (text mode)."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), **(env or {})}
    full_env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run(
        [sys.executable, "-m", "fedtorch", *args],
        cwd=cwd or REPO_ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def compose_config():
    """Compose the app's config with overrides, as the CLI would (without running Hydra's app)."""
    from hydra import compose, initialize_config_dir

    def _compose(*overrides: str):
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return compose(config_name="config", overrides=list(overrides))

    return _compose
