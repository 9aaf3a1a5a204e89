"""MLflow and W&B trackers, offline: what each wrote is read back from its own files.

MLflow's local file store is read as plain files (one line "timestamp value step" per logged
value); W&B's offline run file (`run-<id>.wandb`, LevelDB's log format holding W&B's protobuf
records) is parsed here, independently of the wandb client. Skipped without the extras.
"""

from __future__ import annotations

import json
import math
import struct
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.callbacks.fake_run import FakeRun, play
from tests.conftest import run_cli

CONFIG = {"seed": 3, "trainer": {"lr": 0.05, "epochs": 1}, "strategy": {"_target_": "fedtorch.strategies.FedAvg"}}
OVERRIDES = {"trainer.lr": "0.05", "seed": "3"}
ROWS = [
    {"train/loss": 1.0, "eval/accuracy": 0.5, "comm/bytes_up": 100.0},
    {"train/loss": 0.5, "eval/accuracy": 0.75, "comm/bytes_up": 100.0},
]


def run_folder(tmp_path: Path) -> Path:
    """A run folder with the files a tracker uploads."""
    run_dir = tmp_path / "run"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    (run_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"{k}={v}" for k, v in OVERRIDES.items()]))
    (run_dir / "metrics.jsonl").write_text(
        "".join(json.dumps({"round": r + 1, **row}) + "\n" for r, row in enumerate(ROWS))
    )
    (run_dir / "partition.json").write_text('{"num_clients": 2}')
    return run_dir


# -- MLflow ----------------------------------------------------------------------------------------
def mlflow_files(store: Path) -> dict[str, Path]:
    """run name -> the run's folder in a file store (<store>/<experiment id>/<run id>/)."""
    runs = {}
    for meta in store.glob("*/*/meta.yaml"):
        runs[yaml.safe_load(meta.read_text())["run_name"]] = meta.parent
    return runs


def metric_file(run: Path, key: str) -> list[tuple[int, float]]:
    """(step, value) per logged value of `key`, from the file store's "timestamp value step" lines."""
    lines = (run / "metrics" / key).read_text().split("\n")
    return [(int(step), float(value)) for _, value, step in (line.split() for line in lines if line)]


def test_mlflow_logs_scalars_config_and_artifacts_to_a_local_store(tmp_path):
    pytest.importorskip("mlflow")
    from fedtorch.callbacks.trackers import MLflowTracker

    run_dir = run_folder(tmp_path)
    play(MLflowTracker(run_dir, run_config=CONFIG, overrides=OVERRIDES), FakeRun(rounds=2), ROWS)
    (run,) = mlflow_files(run_dir / "mlruns").values()  # the default store: under the run folder
    assert yaml.safe_load((run / "meta.yaml").read_text())["status"] == 3  # RunStatus.FINISHED
    assert metric_file(run, "eval/accuracy") == [(1, 0.5), (2, 0.75)]
    assert metric_file(run, "train/loss") == [(1, 1.0), (2, 0.5)]
    params = {str(p.relative_to(run / "params")): p.read_text() for p in (run / "params").rglob("*") if p.is_file()}
    assert params == {"trainer.lr": "0.05", "seed": "3", "trainer.epochs": "1",
                      "strategy._target_": "fedtorch.strategies.FedAvg"}  # fmt: skip
    assert (run / "tags" / "fedtorch.overrides").read_text() == "trainer.lr=0.05 seed=3"
    artifacts = {str(p.relative_to(run / "artifacts")) for p in (run / "artifacts").rglob("*") if p.is_file()}
    assert artifacts == {"summary.json", "metrics.jsonl", "partition.json", ".hydra/config.yaml",
                         ".hydra/overrides.yaml"}  # fmt: skip
    summary = json.loads((run / "artifacts" / "summary.json").read_text())
    assert summary["metrics"]["eval/accuracy"] == 0.75 and summary["rounds"] == 2


def test_mlflow_marks_a_diverged_run_failed_and_a_resumed_run_continues(tmp_path):
    pytest.importorskip("mlflow")
    from fedtorch.callbacks.trackers import MLflowTracker

    run_dir = run_folder(tmp_path)
    first = MLflowTracker(run_dir, run_config=CONFIG, overrides=OVERRIDES, experiment="resumed")
    run = FakeRun(rounds=3)
    first.on_run_start(run)
    run.round = 1
    first.on_round_end(run, 1, ROWS[0])
    state = first.state_dict()  # what the checkpoint keeps; the process is killed here
    second = MLflowTracker(run_dir, run_config=CONFIG, overrides=OVERRIDES, experiment="resumed")
    second.load_state_dict(state)
    play(second, run, [{"train/loss": math.nan, "eval/accuracy": 0.1}])
    (only,) = mlflow_files(run_dir / "mlruns").values()  # one MLflow run, not two
    assert metric_file(only, "eval/accuracy") == [(1, 0.5), (2, 0.1)]
    assert yaml.safe_load((only / "meta.yaml").read_text())["status"] == 4  # RunStatus.FAILED


def test_missing_tracker_extras_fail_with_the_install_command(monkeypatch, tmp_path):
    from fedtorch.callbacks.trackers import MLflowTracker, WandbTracker

    monkeypatch.setitem(sys.modules, "mlflow", None)
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(ValueError, match=r"mlflow is not installed: pip install -e '\.\[mlflow\]'"):
        MLflowTracker(tmp_path)
    with pytest.raises(ValueError, match=r"wandb is not installed: pip install -e '\.\[wandb\]'"):
        WandbTracker(tmp_path)


# -- W&B -------------------------------------------------------------------------------------------
def wandb_records(run_file: Path) -> list:
    """The protobuf records of a W&B run file: a 7-byte header (':W&B', magic, version), then
    LevelDB log blocks of 32 KiB holding records of (crc32, length, type, data); type 1 is a
    whole record, 2-4 the first, middle and last pieces of one that spans blocks."""
    from wandb.proto import wandb_internal_pb2

    data = run_file.read_bytes()
    assert data[:4] == b":W&B"
    block, pos, pieces, records = 32768, 7, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if length == 0 and kind == 0:
            pos += left
            continue
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        pieces = chunk if kind in (1, 2) else pieces + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pieces)
            records.append(record)
    return records


def wandb_run_file(run_dir: Path) -> Path:
    (path,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    return path


def finished_records(run_dir: Path, timeout: float = 60.0) -> list:
    """The run file's records once it holds the run's exit record: W&B's writer process flushes
    the file shortly after `finish()` returns (within half a second here), not before."""
    deadline = time.monotonic() + timeout
    while True:
        records = wandb_records(wandb_run_file(run_dir))
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.1)


def read_wandb(run_dir: Path) -> dict:
    """history rows by step, the config, the final summary, the exit code and the artifact's files."""
    history, config, summary, exit_code, files = {}, {}, {}, None, set()
    for record in finished_records(run_dir):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            row = {"/".join(item.nested_key) or item.key: json.loads(item.value_json) for item in record.history.item}
            history[row["_step"]] = {k: v for k, v in row.items() if not k.startswith("_")}
        elif kind == "run":
            config = {item.key: json.loads(item.value_json) for item in record.run.config.update}
        elif kind == "summary":
            summary.update({"/".join(u.nested_key) or u.key: json.loads(u.value_json) for u in record.summary.update})
        elif kind == "exit":
            exit_code = record.exit.exit_code
        elif kind == "artifact":
            files = {entry.path for entry in record.artifact.manifest.contents}
    return {"history": history, "config": config, "summary": summary, "exit_code": exit_code, "files": files}


def test_wandb_offline_logs_scalars_config_and_artifacts(tmp_path):
    pytest.importorskip("wandb")
    from fedtorch.callbacks.trackers import WandbTracker

    run_dir = run_folder(tmp_path)
    play(WandbTracker(run_dir, run_config=CONFIG, overrides=OVERRIDES, group="sweep-a"), FakeRun(rounds=2), ROWS)
    logged = read_wandb(run_dir)
    assert logged["history"] == {1: ROWS[0], 2: ROWS[1]}
    assert {k: v for k, v in logged["config"].items() if not k.startswith("_")} == {
        "trainer.lr": 0.05, "seed": 3, "trainer.epochs": 1, "strategy._target_": "fedtorch.strategies.FedAvg"
    }  # fmt: skip
    assert logged["summary"]["eval/accuracy"] == 0.75 and logged["exit_code"] == 0
    assert logged["files"] == {"summary.json", "metrics.jsonl", "partition.json", ".hydra/config.yaml",
                               ".hydra/overrides.yaml"}  # fmt: skip


def test_wandb_marks_a_diverged_run_failed(tmp_path):
    pytest.importorskip("wandb")
    from fedtorch.callbacks.trackers import WandbTracker

    run_dir = run_folder(tmp_path)
    play(WandbTracker(run_dir, run_config=CONFIG), FakeRun(rounds=3), [ROWS[0], {"train/loss": math.inf}])
    logged = read_wandb(run_dir)
    assert logged["exit_code"] == 1 and logged["history"][2] == {"train/loss": math.inf}


def test_both_trackers_from_the_command_line(tmp_path):
    pytest.importorskip("mlflow")
    pytest.importorskip("wandb")
    run_dir = tmp_path / "run"
    proc = run_cli("logging=[mlflow,wandb]", "logging.progress=false", "rounds=2", "trainer.lr=0.02",
                   f"hydra.run.dir={run_dir}")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    (mlflow_run,) = mlflow_files(run_dir / "mlruns").values()
    assert metric_file(mlflow_run, "eval/accuracy") == [(r["round"], r["eval/accuracy"]) for r in rows]
    assert (mlflow_run / "params" / "trainer.lr").read_text() == "0.02"
    overrides = "logging=[mlflow,wandb] logging.progress=false rounds=2 trainer.lr=0.02"
    assert (mlflow_run / "tags" / "fedtorch.overrides").read_text() == overrides
    logged = read_wandb(run_dir)
    assert [logged["history"][r["round"]]["eval/accuracy"] for r in rows] == [r["eval/accuracy"] for r in rows]
    assert logged["config"]["trainer.lr"] == 0.02 and logged["exit_code"] == 0
