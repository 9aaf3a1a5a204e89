"""The clock and server modes end to end: one-line refusals before any work, a SIGKILL mid-stream
resumed bit for bit (model, metrics, virtual-time curves), and torchrun against one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from fedtorch.errors import OptionError
from fedtorch.experiment import run_experiment
from tests.conftest import REPO_ROOT
from tests.test_checkpoint import finish, metrics_rows, start_cli, without_timing


def trace(tmp_path: Path, rows: str) -> str:
    path = tmp_path / "devices.csv"
    path.write_text("client,speed,download,upload\n" + rows)
    return str(path)


def thirty_devices(skip: int | None = None, extra: int | None = None) -> str:
    ids = [k for k in range(30) if k != skip] + ([extra] if extra is not None else [])
    return "".join(f"{k},2.0,1e6,2e5\n" for k in ids)


def written(run_dir: Path) -> list[str]:
    """What a run left in its folder, besides the folder lock."""
    return sorted(p.name for p in run_dir.iterdir() if p.name != ".lock") if run_dir.exists() else []


REFUSALS = [
    (["server=fedbuff"], r"^clock='none' is invalid: server=fedbuff runs on the virtual clock"),
    (["server=deadline"], r"^clock='none' is invalid: server=deadline runs on the virtual clock"),
    (["clock=distributions", "server=fedbuff", "server.concurrency=31"], r"^server.concurrency=31 is invalid: at most"),
    (
        ["clock=distributions", "server=fedbuff", "server.concurrency=5", "server.buffer_size=6"],
        r"^server.buffer_size=6 is invalid: at most server.concurrency \(5\)",
    ),
    (
        ["clock=distributions", "server=fedbuff", "secagg=bonawitz"],
        r"^secagg=.* is invalid: secure aggregation masks within a cohort",
    ),
    (
        ["clock=distributions", "server=fedbuff", "server.buffer_size=4", "strategy=krum"],
        r"^strategy.aggregator='Krum' is invalid: needs at least 5 updates per server step",
    ),
    (["clock=distributions", "server=fedasync", "strategy=scaffold"], r"^strategy='scaffold' is invalid"),
    (
        ["clock=distributions", "server=fedbuff", "sampler=poisson"],
        r"^sampler=.* is invalid: server=fedbuff dispatches its own",
    ),
    (
        ["clock=distributions", "server=fedasync", "privacy=central_fixed"],
        r"^privacy=.* is invalid: server=fedasync steps on every single update",
    ),
    (
        ["clock=distributions", "server=deadline", "privacy=central_fixed"],
        r"^server.deadline=60.0 is invalid: central DP",
    ),
    (["clock=distributions", "clock.speed.median=0"], r"^clock.speed.median=0 is invalid: a finite number > 0"),
    (["clock=distributions", "clock.download=-5"], r"^clock.download=-5 is invalid: a finite number > 0"),
    (["clock=distributions", "server=fedasync", "server.alpha=1.5"], r"^server.alpha=1.5 is invalid"),
    (["clock=distributions", "server=deadline", "server.late=wait"], r"^server.late='wait' is invalid"),
]


@pytest.mark.parametrize(("overrides", "message"), REFUSALS, ids=[" ".join(o[1:] or o) for o, _ in REFUSALS])
def test_bad_input_is_one_line_before_any_work(compose_config, tmp_path, overrides, message):
    run_dir = tmp_path / "run"
    with pytest.raises(OptionError, match=message) as error:
        run_experiment(compose_config(*overrides, "logging.progress=false"), run_dir)
    assert "\n" not in str(error.value)
    assert written(run_dir) == []  # nothing trained, nothing written


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (thirty_devices(skip=7), r"^clock.devices=.* is invalid: a row for every client 0..29 \(missing: 7\)"),
        (thirty_devices(extra=30), r"^clock.devices=.*client 30' is invalid: a client id in 0..29"),
        (thirty_devices().replace("3,2.0", "3,-1.0", 1), r"^clock.speed=-1.0 is invalid: a number > 0"),
    ],
    ids=["missing-client", "unknown-client", "negative-speed"],
)
def test_a_bad_trace_is_one_line_before_any_work(compose_config, tmp_path, rows, message):
    cfg = compose_config("clock=trace", f"clock.devices={trace(tmp_path, rows)}", "server=fedbuff")
    with pytest.raises(OptionError, match=message):
        run_experiment(cfg, tmp_path / "run")
    assert written(tmp_path / "run") == []


# -- SIGKILL mid-stream, then resume ---------------------------------------------------------------------------
STREAM = (
    "clock=distributions",
    "clock.noise=0.3",
    "server=fedbuff",
    "server.concurrency=8",
    "server.buffer_size=3",
    "strategy=fedadam",
    "rounds=6",
    "checkpoint_every=2",
    "num_threads=1",
    "logging.progress=false",
)


def virtual_curves(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    acc = EventAccumulator(str(run_dir / "virtual_time"), size_guidance={"scalars": 0, "histograms": 0})
    acc.Reload()
    curves = {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
    curves.update(
        {tag: [(e.step, e.histogram_value.num) for e in acc.Histograms(tag)] for tag in acc.Tags()["histograms"]}
    )
    return curves


def test_sigkill_mid_stream_then_resume_equals_the_uninterrupted_run(tmp_path, compose_config):
    ref, run = tmp_path / "ref", tmp_path / "run"
    # Killed in server step 5, after its arrivals, before its server step: clients in flight hold
    # trained updates from several model versions. The checkpoint of step 4 is the latest.
    first = start_cli(*STREAM, f"hydra.run.dir={run}", kill_at="round:5")
    threads = torch.get_num_threads()
    try:
        run_experiment(compose_config(*STREAM), ref)
    finally:
        torch.set_num_threads(threads)
    code, out = finish(first)
    assert code == -9, out
    assert [r["round"] for r in metrics_rows(run)] == [1, 2, 3, 4]
    code, out = finish(start_cli(*STREAM, f"hydra.run.dir={run}"))
    assert code == 0 and "resuming from round 4" in out, out

    ref_model = torch.load(ref / "model.pt", weights_only=True)
    model = torch.load(run / "model.pt", weights_only=True)
    assert all(torch.equal(ref_model[k], model[k]) for k in ref_model)
    rows = metrics_rows(run)
    assert without_timing(rows) == without_timing(metrics_rows(ref))
    assert max(r["async/staleness_max"] for r in rows) >= 1  # it really was asynchronous
    summary = json.loads((run / "summary.json").read_text())
    assert summary["server"] == "fedbuff" and summary["virtual_seconds"] == rows[-1]["time/virtual_seconds"]

    # The virtual-time curves: the step is the virtual second; rewritten on resume, never repeated.
    curves, ref_curves = virtual_curves(run), virtual_curves(ref)
    assert curves["virtual_time/eval/accuracy"] == ref_curves["virtual_time/eval/accuracy"]
    assert [s for s, _ in curves["virtual_time/eval/accuracy"]] == [int(r["time/virtual_seconds"]) for r in rows]
    assert curves["virtual_time/async/staleness"] == ref_curves["virtual_time/async/staleness"]
    assert [n for _, n in curves["virtual_time/async/staleness"]] == [3.0] * 6  # K values per step


@pytest.mark.slow
def test_torchrun_two_processes_equal_one(tmp_path, compose_config):
    args = [*STREAM[:6], "rounds=4", "checkpoint_every=0", "logging.progress=false"]
    single = tmp_path / "single"
    threads = torch.get_num_threads()
    try:
        run_experiment(compose_config(*args, "num_threads=1"), single)
    finally:
        torch.set_num_threads(threads)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "fedtorch"]
    run_dir = tmp_path / "dist"
    proc = subprocess.run(
        [*command, *args, "backend=distributed", f"hydra.run.dir={run_dir}"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((run_dir / "summary.json").read_text())["world_size"] == 2
    ref_model = torch.load(single / "model.pt", weights_only=True)
    model = torch.load(run_dir / "model.pt", weights_only=True)
    for key in ref_model:
        torch.testing.assert_close(model[key], ref_model[key], rtol=1e-5, atol=1e-6)
    rows, ref_rows = metrics_rows(run_dir), metrics_rows(single)
    for row, ref in zip(rows, ref_rows):
        for key in ("time/virtual_seconds", "async/staleness_mean", "round/clients", "round/samples"):
            assert row[key] == ref[key], key
        assert row["train/loss"] == pytest.approx(ref["train/loss"], rel=1e-5)
