"""The CLI as a user runs it: one run and a small multirun sweep, read back from disk."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from fedtorch.validation import resolve_device
from tests.conftest import run_cli

ROUND_SCALARS = ("train/loss", "train/accuracy", "eval/loss", "eval/accuracy", "round/clients", "round/seconds")


def _events(run_dir: Path) -> EventAccumulator:
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "tensors": 0, "images": 0})
    acc.Reload()
    return acc


def test_single_run_writes_every_artifact(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli("rounds=3", "sampler.clients_per_round=4", f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == f"run folder: {run_dir}"
    assert "round 3/3" in proc.stderr  # the progress bar

    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2, 3]
    assert all(r["round/clients"] == 4 for r in rows)

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["rounds"] == 3 and summary["backend"] == "sequential" and summary["world_size"] == 1
    assert summary["device"] == str(resolve_device("auto"))  # device=auto: cuda on a GPU machine
    assert summary["metrics"]["eval/accuracy"] == rows[-1]["eval/accuracy"]

    state = torch.load(run_dir / "model.pt", weights_only=True)
    assert state["linear.weight"].shape == (10, 60)

    acc = _events(run_dir)
    tags = acc.Tags()
    for tag in ROUND_SCALARS:
        events = acc.Scalars(tag)
        assert [e.step for e in events] == [1, 2, 3], tag
    eval_acc = [e.value for e in acc.Scalars("eval/accuracy")]
    assert eval_acc == [pytest_approx(r["eval/accuracy"]) for r in rows]
    # HParams: the plugin's session summaries, with the flattened config and final metrics.
    plugin = acc.PluginTagToContent("hparams")
    assert {"_hparams_/experiment", "_hparams_/session_start_info"} <= set(plugin)
    from tensorboard.plugins.hparams import plugin_data_pb2

    start = plugin_data_pb2.HParamsPluginData.FromString(plugin["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["trainer.lr"].number_value == 0.01
    assert start.hparams["strategy._target_"].string_value == "fedtorch.strategies.FedAvg"
    assert "hparam/eval/accuracy" in tags["scalars"]
    assert "config/text_summary" in tags["tensors"]
    # The partition: statistics at step 0 and a picture of the label distribution (30 devices).
    assert acc.Scalars("partition/num_clients")[0].value == 30
    assert "partition/label_distribution" in tags["images"]
    record = json.loads((run_dir / "partition.json").read_text())
    assert record["stats"]["num_samples"] == sum(c["num_samples"] for c in record["clients"].values())


def pytest_approx(value: float):
    import pytest

    return pytest.approx(value, rel=1e-6)


def test_multirun_sweep_gives_each_job_a_folder(tmp_path):
    sweep_dir = tmp_path / "sweep"
    proc = run_cli(
        "-m",
        "rounds=2",
        "trainer.lr=0.01,0.05",
        "strategy.server_lr=1.0,0.5",
        "logging.progress=false",
        f"hydra.sweep.dir={sweep_dir}",
    )
    assert proc.returncode == 0, proc.stderr
    jobs = sorted(p for p in sweep_dir.iterdir() if p.is_dir() and (p / "summary.json").exists())
    assert len(jobs) == 4
    seen = set()
    for job in jobs:
        overrides = (job / ".hydra" / "overrides.yaml").read_text()
        lr = next(float(line.split("=")[1]) for line in overrides.splitlines() if "trainer.lr=" in line)
        server_lr = next(float(line.split("=")[1]) for line in overrides.splitlines() if "server_lr=" in line)
        seen.add((lr, server_lr))
        start = _events(job).PluginTagToContent("hparams")["_hparams_/session_start_info"]
        from tensorboard.plugins.hparams import plugin_data_pb2

        hp = plugin_data_pb2.HParamsPluginData.FromString(start).session_start_info.hparams
        assert hp["trainer.lr"].number_value == lr and hp["strategy.server_lr"].number_value == server_lr
    assert seen == {(0.01, 1.0), (0.01, 0.5), (0.05, 1.0), (0.05, 0.5)}
    # Different settings, different results.
    finals = {json.loads((j / "summary.json").read_text())["metrics"]["eval/loss"] for j in jobs}
    assert len(finals) == 4
