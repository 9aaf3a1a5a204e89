"""Checkpoints and resume: a run stopped at any point and resumed equals the uninterrupted run.

In-process tests cover the pieces (what a checkpoint holds, weights_only loading, config checks on
resume); the end-to-end test SIGKILLs real CLI runs in the middle of a round and in the middle of
writing a checkpoint, resumes them both ways (re-running the command, `resume=<run folder>`), and
compares model.pt, metrics.jsonl and the TensorBoard curves with an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from fedtorch.callbacks import Checkpoint
from fedtorch.checkpoint import (
    CheckpointError,
    checkpoint_path,
    config_differences,
    list_checkpoints,
    load_checkpoint,
    make_payload,
    plan_resume,
    rng_state,
    save_checkpoint,
    set_rng_state,
    to_safe,
)
from fedtorch.client import LocalTrainer
from fedtorch.data.base import DatasetSplits, FederatedDataset
from fedtorch.experiment import run_experiment
from fedtorch.models import LogisticRegression
from fedtorch.samplers import UniformSampler
from fedtorch.simulation import Callback, Simulation
from fedtorch.strategies import FedAdam, Scaffold
from tests.conftest import REPO_ROOT, run_cli

TIMING = {"round/seconds"}


# -- in-process: the simulation's state ---------------------------------------------------------------
def tiny_federation() -> FederatedDataset:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(120, 5, generator=gen)
    y = torch.randint(0, 3, (120,), generator=gen)
    data = DatasetSplits("tiny", x, y, x[:30], y[:30], num_classes=3)
    parts = [np.arange(k, 120, 6) for k in range(6)]
    return FederatedDataset.from_partition(data, parts)


class CountingSampler(UniformSampler):
    """A sampler with state (a numpy array of participation counts) that changes its choices."""

    def setup(self, client_sizes: np.ndarray) -> None:
        super().setup(client_sizes)
        self.counts = np.zeros(self.num_clients, dtype=np.int64)

    def sample(self, round_idx: int, rng: np.random.Generator) -> np.ndarray:
        # Prefer the clients seen least: the choice depends on the whole history, not the round alone.
        order = np.lexsort((rng.random(self.num_clients), self.counts))
        chosen = np.sort(order[: self.cohort_size])
        self.counts[chosen] += 1
        return chosen

    def state_dict(self) -> dict:
        return {"counts": self.counts.copy()}

    def load_state_dict(self, state: dict) -> None:
        self.counts = state["counts"].copy()


class Tally(Callback):
    """A callback with state: how many rounds it has seen."""

    def __init__(self) -> None:
        self.seen = 0

    def on_round_end(self, sim, round_idx, metrics) -> None:
        self.seen += 1

    def state_dict(self) -> dict:
        return {"seen": self.seen}

    def load_state_dict(self, state: dict) -> None:
        self.seen = state["seen"]


def make_sim(strategy_name: str, rounds: int, callbacks=()) -> Simulation:
    strategy = {"scaffold": lambda: Scaffold(), "fedadam": lambda: FedAdam(server_lr=0.05)}[strategy_name]()
    torch.manual_seed(0)
    return Simulation(
        tiny_federation(),
        LogisticRegression((5,), 3),
        strategy,
        CountingSampler(clients_per_round=3),
        LocalTrainer(lr=0.1, epochs=1, batch_size=7),
        rounds=rounds,
        seed=11,
        callbacks=list(callbacks),
    )


def without_timing(rows):
    return [{k: v for k, v in row.items() if k not in TIMING} for row in rows]


@pytest.mark.parametrize("strategy_name", ["scaffold", "fedadam"])
def test_resume_from_a_checkpoint_file_is_bitwise_identical(tmp_path, strategy_name):
    full = make_sim(strategy_name, rounds=5, callbacks=[Tally()])
    full.run()

    first = make_sim(strategy_name, rounds=5, callbacks=[Tally()])
    first.rounds = 2  # stop after round 2, as a killed run would
    first.run()
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, make_payload(2, first.state_dict()))
    payload = load_checkpoint(path)  # weights_only=True

    resumed = make_sim(strategy_name, rounds=5, callbacks=[Tally()])
    resumed.load_state_dict(payload["simulation"])
    assert resumed.state.round == 2 and resumed.callbacks[0].seen == 2
    resumed.run()
    assert torch.equal(resumed.global_vector, full.global_vector)
    assert without_timing(resumed.state.history) == without_timing(full.state.history)
    assert np.array_equal(resumed.sampler.counts, full.sampler.counts)
    assert resumed.callbacks[0].seen == 5
    if strategy_name == "scaffold":
        assert torch.equal(resumed.strategy.c, full.strategy.c)

    # The comparison is sensitive: restoring only the model (not strategy and sampler state) differs.
    partial = make_sim(strategy_name, rounds=5)
    partial.global_vector.copy_(payload["simulation"]["global_vector"])
    partial.state.round = 2
    partial.run()
    assert not torch.equal(partial.global_vector, full.global_vector)


def test_global_random_streams_are_restored():
    state = rng_state()
    expected = (torch.rand(3), np.random.rand(3), __import__("random").random())
    torch.rand(5), np.random.rand(5)
    set_rng_state(load_roundtrip(state))
    again = (torch.rand(3), np.random.rand(3), __import__("random").random())
    assert torch.equal(expected[0], again[0]) and np.array_equal(expected[1], again[1]) and expected[2] == again[2]


def load_roundtrip(obj):
    import io

    buffer = io.BytesIO()
    torch.save(to_safe(obj), buffer)
    buffer.seek(0)
    from fedtorch.checkpoint import from_safe

    return from_safe(torch.load(buffer, weights_only=True))


# -- in-process: the file -------------------------------------------------------------------------------
def test_numpy_state_round_trips_and_unsupported_objects_fail_at_save(tmp_path):
    state = {"a": np.arange(4, dtype=np.uint8), "n": np.float32(1.5), "t": (1, "x", None), 3: [torch.ones(2)]}
    back = load_roundtrip(state)
    assert isinstance(back["a"], np.ndarray) and back["a"].dtype == np.uint8 and back["a"].tolist() == [0, 1, 2, 3]
    assert back["n"] == 1.5 and back["t"] == (1, "x", None) and torch.equal(back[3][0], torch.ones(2))
    with pytest.raises(TypeError, match=r"strategy\.hook is a function"):
        save_checkpoint(tmp_path / "x.pt", {"round": 1, "strategy": {"hook": lambda: None}})
    assert not (tmp_path / "x.pt").exists()


class Payload:
    """An object whose unpickling would run code (here: create a file)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_load_refuses_pickled_code_and_corrupt_files(tmp_path):
    marker = tmp_path / "code-ran"
    evil = tmp_path / "evil.pt"
    torch.save({"format": "fedtorch.checkpoint", "version": 1, "x": Payload(marker)}, evil)
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_checkpoint(evil)
    assert not marker.exists()

    good = tmp_path / "good.pt"
    save_checkpoint(good, make_payload(1, {"global_vector": torch.arange(1000.0)}))
    assert load_checkpoint(good)["simulation"]["global_vector"].sum() == 499500.0
    torn = tmp_path / "torn.pt"
    torn.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"torn\.pt cannot be read .*truncated, corrupt"):
        load_checkpoint(torn)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    with pytest.raises(CheckpointError, match="not a fedtorch checkpoint"):
        load_checkpoint(other)


def test_checkpoint_callback_saves_every_k_rounds_and_the_last_and_keeps_two(tmp_path):
    sim = make_sim("fedadam", rounds=7)
    saver = Checkpoint(tmp_path, every=3, keep=2, config={"rounds": 7})
    sim.callbacks.append(saver)
    seen = []
    original = saver.save
    saver.save = lambda s: seen.append(s.state.round) or original(s)
    sim.run()
    assert seen == [3, 6, 7]
    assert [r for r, _ in list_checkpoints(tmp_path)] == [6, 7]
    last = load_checkpoint(checkpoint_path(tmp_path, 7))
    assert last["round"] == 7 and last["config"] == {"rounds": 7}
    assert torch.equal(last["simulation"]["global_vector"], sim.global_vector)
    assert not list((tmp_path / "checkpoints").glob(".*.tmp"))


# -- in-process: deciding how a run starts ------------------------------------------------------------------
CONFIG = {"rounds": 6, "resume": "auto", "seed": 0, "trainer": {"lr": 0.1, "epochs": 1}, "logging": {"progress": True}}


def write_run(run_dir: Path, round_idx: int, config: dict, summary: dict | None = None) -> Path:
    path = checkpoint_path(run_dir, round_idx)
    save_checkpoint(path, make_payload(round_idx, {"round": round_idx}, config, {"strategy": "fedavg"}))
    if summary is not None:
        (run_dir / "summary.json").write_text(json.dumps(summary))
    return path


def test_config_differences_ignore_resumable_keys():
    changed = {**CONFIG, "rounds": 9, "logging": {"progress": False}, "trainer": {"lr": 0.2, "epochs": 1}}
    assert config_differences(CONFIG, changed) == [("trainer.lr", 0.1, 0.2)]


def test_plan_resume_auto(tmp_path):
    assert plan_resume("auto", tmp_path, CONFIG).checkpoint is None  # empty folder: fresh start
    write_run(tmp_path, 2, CONFIG)
    write_run(tmp_path, 4, CONFIG)
    plan = plan_resume("auto", tmp_path, {**CONFIG, "rounds": 8})  # extending is allowed
    assert plan.round == 4 and plan.run_dir == tmp_path and plan.finished is None
    with pytest.raises(CheckpointError, match=r"another config \(trainer\.lr: 0\.1 then, 0\.5 now\)"):
        plan_resume("auto", tmp_path, {**CONFIG, "trainer": {"lr": 0.5, "epochs": 1}})
    with pytest.raises(CheckpointError, match=r"rounds=3 is invalid: the checkpoint .* is at round 4"):
        plan_resume("auto", tmp_path, {**CONFIG, "rounds": 3})
    with pytest.raises(CheckpointError, match="resume=null but the run folder .* already holds checkpoints"):
        plan_resume(None, tmp_path, CONFIG)
    (tmp_path / "checkpoints" / "round_000004.pt").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match=r"round_000004\.pt cannot be read"):
        plan_resume("auto", tmp_path, CONFIG)


def test_plan_resume_from_a_run_folder_keeps_its_config(tmp_path):
    run = tmp_path / "run"
    write_run(run, 4, CONFIG)
    defaults = {**CONFIG, "rounds": 50, "trainer": {"lr": 0.01, "epochs": 1}}  # what `resume=...` alone composes
    plan = plan_resume(str(run), tmp_path / "new", defaults, overridden=["resume"], choices={"strategy": "scaffold"})
    assert plan.run_dir == run and plan.config["trainer"]["lr"] == 0.1 and plan.config["rounds"] == 6
    assert plan.choices == {"strategy": "fedavg"}  # the run's own, stored again in its next checkpoints
    plan = plan_resume(str(run), tmp_path / "new", {**defaults, "rounds": 10}, overridden=["resume", "rounds"])
    assert plan.config["rounds"] == 10 and plan.config["trainer"]["lr"] == 0.1
    # Repeating the original value is fine; asking for another one is refused.
    same = {**defaults, "trainer": {"lr": 0.1, "epochs": 1}}
    assert plan_resume(str(run), tmp_path / "new", same, overridden=["trainer.lr"]).config["trainer"]["lr"] == 0.1
    refused = r"trainer\.lr=0\.01 is invalid when resuming .*that run has trainer\.lr=0\.1"
    with pytest.raises(CheckpointError, match=refused):
        plan_resume(str(run), tmp_path / "new", defaults, overridden=["trainer.lr"])
    with pytest.raises(CheckpointError, match=r"strategy='scaffold' is invalid when resuming"):
        plan_resume(str(run), tmp_path / "new", defaults, overridden=["strategy"], choices={"strategy": "scaffold"})
    with pytest.raises(CheckpointError, match="no such run folder or checkpoint file"):
        plan_resume(str(tmp_path / "nope"), tmp_path / "new", defaults)


def test_plan_resume_reports_finished_runs(tmp_path):
    write_run(tmp_path, 6, CONFIG, summary={"rounds": 6, "diverged": False})
    assert plan_resume("auto", tmp_path, CONFIG).finished == {"rounds": 6, "diverged": False}
    assert plan_resume("auto", tmp_path, {**CONFIG, "rounds": 9}).finished is None  # extend it
    diverged = tmp_path / "diverged"
    write_run(diverged, 2, CONFIG, summary={"rounds": 3, "diverged": True, "diverged_round": 3})
    assert plan_resume("auto", diverged, CONFIG).finished["diverged_round"] == 3


# -- end to end: SIGKILL and resume ----------------------------------------------------------------------------
RUN = ("rounds=6", "checkpoint_every=2", "sampler.clients_per_round=4", "num_threads=1", "logging.progress=false")


def start_cli(*args: str, kill_at: str | None = None) -> subprocess.Popen:
    """The CLI as a subprocess; with `kill_at`, wrapped by tests/_crash.py, which SIGKILLs it there."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    entry = ["-m", "tests._crash", kill_at] if kill_at else ["-m", "fedtorch"]
    return subprocess.Popen(
        [sys.executable, *entry, *args],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish(proc: subprocess.Popen) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=300)
    return proc.returncode, out


def metrics_rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def scalar_curves(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_sigkill_mid_checkpoint_and_mid_round_then_resume_equals_uninterrupted_run(tmp_path, compose_config):
    ref, run = tmp_path / "ref", tmp_path / "run"

    # 1. Killed half-way through writing round 4's checkpoint (metrics of rounds 1-4 already written).
    first = start_cli(*RUN, f"hydra.run.dir={run}", kill_at="checkpoint:4")
    # Meanwhile, the uninterrupted reference, in this process (saves a process start).
    threads = torch.get_num_threads()
    try:
        run_experiment(compose_config(*RUN), ref)
    finally:
        torch.set_num_threads(threads)
    code, out = finish(first)
    assert code == -9, out
    assert [r for r, _ in list_checkpoints(run)] == [2]  # the torn write never became round_000004.pt
    assert list((run / "checkpoints").glob(".round_000004.pt.*.tmp"))
    assert [r["round"] for r in metrics_rows(run)] == [1, 2, 3, 4]
    assert not (run / "model.pt").exists() and not (run / "summary.json").exists()

    # 2. The same command again resumes from round 2; killed in the middle of round 6 this time.
    code, out = finish(start_cli(*RUN, f"hydra.run.dir={run}", kill_at="round:6"))
    assert code == -9, out
    assert [r for r, _ in list_checkpoints(run)] == [2, 4]
    assert [r["round"] for r in metrics_rows(run)] == [1, 2, 3, 4, 5]

    # 3. `resume=<run folder>` from another invocation: the run's own config, written into its folder.
    code, out = finish(start_cli(f"resume={run}", "logging.progress=false", f"hydra.run.dir={tmp_path / 'hydra'}"))
    assert code == 0, out
    assert f"run folder: {run}" in out and "resuming from round 4" in out
    # The resumed run logs into its own folder; the other invocation's folder held only Hydra's files.
    logs = "".join(p.read_text() for p in run.glob("*.log"))
    assert "resuming from round 4" in logs
    assert not (tmp_path / "hydra").exists()

    ref_model = torch.load(ref / "model.pt", weights_only=True)
    model = torch.load(run / "model.pt", weights_only=True)
    assert ref_model.keys() == model.keys() and all(torch.equal(ref_model[k], model[k]) for k in ref_model)
    rows, ref_rows = metrics_rows(run), metrics_rows(ref)
    assert [r["round"] for r in rows] == [1, 2, 3, 4, 5, 6]  # no duplicated or missing rounds
    assert without_timing(rows) == without_timing(ref_rows)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["rounds"] == 6 and summary["resumed_from_round"] == 4 and not summary["diverged"]
    assert not list((run / "checkpoints").glob(".*.tmp"))
    assert not any((tmp_path / "hydra").glob("*.pt")) and not (tmp_path / "hydra" / "metrics.jsonl").exists()

    # TensorBoard, read back: every curve has each round once, with the uninterrupted run's values.
    curves, ref_curves = scalar_curves(run), scalar_curves(ref)
    assert len(list(run.glob("events.out.tfevents.*"))) == 3
    assert curves.keys() == ref_curves.keys()
    for tag, points in curves.items():
        steps = [s for s, _ in points]
        assert steps == [s for s, _ in ref_curves[tag]], tag
        assert len(steps) == len(set(steps)), tag
        if tag not in TIMING and not tag.startswith("hparam/round/seconds"):
            assert points == ref_curves[tag], tag
    assert [s for s, _ in curves["train/loss"]] == [1, 2, 3, 4, 5, 6]


def test_a_second_process_on_the_same_run_folder_is_refused(tmp_path):
    """While one process holds a run folder, another one resuming it gets one line, not a corrupt run."""
    from fedtorch.checkpoint import RunFolderLock

    run = tmp_path / "run"
    with RunFolderLock(run):  # held by this process, as a running run would
        proc = run_cli(*RUN, f"hydra.run.dir={run}")
        assert proc.returncode == 2
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("fedtorch: error: run folder") and "is in use by" in lines[0]
        assert not (run / "metrics.jsonl").exists() and (run / ".lock").exists()  # its folder is left alone
    # Released (as it is when a process exits, however it exits): the folder can be used again.
    assert run_cli(*RUN, f"hydra.run.dir={run}", "rounds=1").returncode == 0
