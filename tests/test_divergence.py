"""A diverging run stops cleanly: marked in summary.json, last good checkpoint intact, no model.pt, exit 0."""

from __future__ import annotations

import json

import numpy as np
import torch

from fedtorch.callbacks import Checkpoint
from fedtorch.checkpoint import list_checkpoints, load_checkpoint
from fedtorch.client import LocalTrainer
from fedtorch.data.base import DatasetSplits, FederatedDataset
from fedtorch.experiment import run_experiment
from fedtorch.models import LogisticRegression
from fedtorch.pipeline import UpdateTransform
from fedtorch.samplers import FullParticipation
from fedtorch.simulation import Simulation
from fedtorch.strategies import FedAvg
from tests.conftest import run_cli


class BlowUpAt(UpdateTransform):
    """Turns the aggregate non-finite in one round (a stand-in for an exploding learning rate)."""

    def __init__(self, round_idx: int) -> None:
        self.round_idx = round_idx

    def on_aggregate(self, aggregate, record):
        return aggregate * float("inf") if record.step == self.round_idx else aggregate


def test_divergence_stops_the_loop_and_never_checkpoints_a_non_finite_model(tmp_path):
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 3, generator=gen), torch.randint(0, 2, (40,), generator=gen)
    fed = FederatedDataset.from_partition(
        DatasetSplits("tiny", x, y, x, y, num_classes=2), [np.arange(0, 20), np.arange(20, 40)]
    )
    saver = Checkpoint(tmp_path, every=1, keep=5)
    sim = Simulation(
        fed,
        LogisticRegression((3,), 2),
        FedAvg(),
        FullParticipation(),
        LocalTrainer(lr=0.1, batch_size=5),
        rounds=6,
        transforms=[BlowUpAt(3)],
        callbacks=[saver],
    )
    summary = sim.run()
    assert summary["diverged"] and summary["diverged_round"] == 3 and summary["rounds"] == 3
    assert not torch.isfinite(sim.global_vector).all()
    assert [r for r, _ in list_checkpoints(tmp_path)] == [1, 2] and saver.last_round == 2
    last = load_checkpoint(list_checkpoints(tmp_path)[-1][1])
    assert torch.isfinite(last["simulation"]["global_vector"]).all()
    assert [row["round"] for row in last["simulation"]["history"]] == [1, 2]


SWEEP = (
    "model=mlp",
    "model.hidden=[32,32]",
    "rounds=4",
    "checkpoint_every=1",
    "sampler.clients_per_round=4",
    "num_threads=1",
    "logging.progress=false",
)


def test_sweep_with_a_diverging_learning_rate_completes(tmp_path, compose_config):
    sweep = tmp_path / "sweep"
    proc = run_cli("-m", "trainer.lr=0.01,10", *SWEEP, f"hydra.sweep.dir={sweep}")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout + proc.stderr

    good, bad = sweep / "0", sweep / "1"
    good_summary = json.loads((good / "summary.json").read_text())
    assert not good_summary["diverged"] and good_summary["rounds"] == 4 and (good / "model.pt").exists()

    summary = json.loads((bad / "summary.json").read_text())
    assert summary["diverged"] is True and summary["diverged_round"] == 3 and summary["stop_reason"] == "diverged"
    assert summary["last_checkpoint_round"] == 2
    assert not (bad / "model.pt").exists()  # nothing that looks like a result
    assert [json.loads(line)["round"] for line in (bad / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    rounds, path = list_checkpoints(bad)[-1]
    assert rounds == 2 and torch.isfinite(load_checkpoint(path)["simulation"]["global_vector"]).all()
    expected = "run diverged at round 3 (non-finite"
    assert expected in summary["message"] and expected in out
    assert "Lower trainer.lr=10 or strategy.server_lr=1.0" in out

    # Re-running the diverged job (same command, same folder) does not train again: it is finished.
    before = sorted(p.name for p in bad.rglob("*"))
    cfg = compose_config("trainer.lr=10", *SWEEP)
    threads = torch.get_num_threads()
    try:
        again = run_experiment(cfg, bad)
    finally:
        torch.set_num_threads(threads)
    assert json.dumps(again, sort_keys=True) == json.dumps(summary, sort_keys=True)  # NaN-safe equality
    assert sorted(p.name for p in bad.rglob("*")) == before
