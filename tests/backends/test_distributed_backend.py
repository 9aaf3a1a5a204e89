"""The distributed backend: real torchrun with 2 gloo processes against a single-process run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fedtorch.backends.distributed import assign_clients
from fedtorch.experiment import ConfigError, run_experiment, validate
from tests.conftest import REPO_ROOT

# 7 of 30 unequal FedProx devices per round, momentum, 2 local epochs: clients take different
# numbers of steps, so the two ranks train different numbers of clients.
RUN = (
    "rounds=3",
    "sampler.clients_per_round=7",
    "trainer.epochs=2",
    "trainer.optimizer.momentum=0.9",
    "logging.progress=false",
)


def torchrun(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "fedtorch"]
    return subprocess.run([*command, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=240)


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture
def single_run(compose_config, tmp_path) -> Path:
    """The same experiment in this process (one thread, like each torchrun rank)."""
    run_dir = tmp_path / "single"
    run_experiment(compose_config(*RUN), run_dir)
    return run_dir


@pytest.mark.slow
def test_torchrun_two_processes_equal_single_process(tmp_path, single_run):
    # A run dir with microseconds: the two ranks' Hydra folders always differ, so rank 1 must
    # adopt rank 0's and remove its own.
    (tmp_path / "dist").mkdir()
    proc = torchrun(tmp_path / "dist", *RUN, "backend=distributed", "hydra.run.dir=outputs/${now:%H-%M-%S-%f}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = list((tmp_path / "dist" / "outputs").iterdir())
    assert len(runs) == 1, runs  # no stray folder from rank 1
    run_dir = runs[0]
    assert proc.stdout.count("run folder:") == 1 and proc.stdout.strip().endswith(f"run folder: {run_dir.resolve()}")

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["backend"] == "distributed" and summary["world_size"] == 2
    assert summary["rounds"] == 3

    # Same sampled clients, same final model.
    single_model = torch.load(single_run / "model.pt", weights_only=True)
    dist_model = torch.load(run_dir / "model.pt", weights_only=True)
    assert dist_model.keys() == single_model.keys()
    for key in single_model:
        torch.testing.assert_close(dist_model[key], single_model[key], rtol=1e-5, atol=1e-6)

    # Training statistics are summed over both ranks: every client and sample counted once.
    rows, reference = metrics(run_dir), metrics(single_run)
    assert [r["round"] for r in rows] == [1, 2, 3]
    for row, ref in zip(rows, reference):
        assert row["round/clients"] == 7
        for key in ("round/samples", "round/local_steps"):
            assert row[key] == ref[key], key
        for key in ("train/loss", "train/accuracy", "eval/accuracy"):
            assert row[key] == pytest.approx(ref[key], rel=1e-5), key
    # Rank 0 alone logs: the run's log file holds each message once.
    log_text = "".join(p.read_text() for p in run_dir.glob("*.log"))
    assert log_text.count("30 clients, 610 parameters") == 1


def test_assign_clients_balances_steps_and_covers_each_client_once():
    budgets = [10, 1, 7, 3, 3, 8, 0, 2]
    shares = assign_clients(budgets, 3)
    assert sorted(p for share in shares for p in share) == list(range(len(budgets)))
    loads = [sum(budgets[p] for p in share) for share in shares]
    assert max(loads) - min(loads) <= max(budgets)
    assert loads == [12, 11, 11]  # longest first to the least loaded rank: 10+2 | 8+3+0 | 7+3+1
    assert assign_clients(budgets, 3) == shares  # deterministic: every rank computes the same split
    assert assign_clients([4, 4], 3)[2] == []  # more ranks than clients: some train none


def test_torchrun_needs_the_distributed_backend(compose_config, monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    # The refusal names the option a user types (backend=sequential), not the class.
    with pytest.raises(ConfigError, match=r"backend='sequential' is invalid: torchrun started 2 processes"):
        validate(compose_config(), {"backend": "sequential"})
    validate(compose_config("backend=distributed"), {"backend": "distributed"})


@pytest.mark.parametrize(
    "override, key",
    [("backend.chunk_size=0", "backend.chunk_size"), ("backend.inner=threads", "backend.inner")],
)
def test_bad_backend_options_are_config_errors(compose_config, override, key):
    from fedtorch.experiment import _build

    backend = "vectorized" if "chunk" in override else "distributed"
    cfg = compose_config(f"backend={backend}", override)
    validate(cfg)  # the run-level checks pass: the backend's own constructor refuses the value
    with pytest.raises(ConfigError) as error:
        _build(cfg.backend, "backend")
    assert error.value.key == key


@pytest.mark.parametrize("inner", ["sequential", "vectorized"])
def test_outside_torchrun_it_runs_its_inner_backend_in_one_process(inner, caplog):
    from fedtorch.backends import DistributedBackend, SequentialBackend
    from fedtorch.client import LocalTrainer
    from fedtorch.data.base import FederatedDataset
    from fedtorch.data.partitions import natural_partition
    from fedtorch.data.synthetic import load_fedprox_synthetic
    from fedtorch.models import LogisticRegression
    from fedtorch.samplers import UniformSampler
    from fedtorch.simulation import Simulation
    from fedtorch.strategies import FedAvg

    data = load_fedprox_synthetic(num_devices=8, max_samples_per_device=40)
    fed = FederatedDataset.from_partition(data, natural_partition(data.train_groups))

    def run(backend):
        torch.manual_seed(0)
        model = LogisticRegression(data.input_shape, data.num_classes)
        sim = Simulation(fed, model, FedAvg(), UniformSampler(5), LocalTrainer(lr=0.1), rounds=2, backend=backend)
        return sim.run(), sim.global_vector

    summary, weights = run(DistributedBackend(inner=inner))
    _, reference = run(SequentialBackend())
    assert summary["backend"] == "distributed" and summary["world_size"] == 1
    assert "outside torchrun" in caplog.text
    torch.testing.assert_close(weights, reference, rtol=1e-5, atol=1e-6)
