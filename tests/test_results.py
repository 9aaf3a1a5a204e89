"""`fedtorch.results`: run folders as DataFrames, checked against the files they read.

Hand-made folders pin every status and the typing of settings; a real sweep through the CLI is
read back and compared with an independent parse of its `summary.json`, `metrics.jsonl` and
`.hydra/overrides.yaml` files.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from fedtorch import report, results
from tests.conftest import run_cli
from tests.test_report import curve, make_run, read_csv

pd = pytest.importorskip("pandas")


def test_parse_value_types_like_hydra():
    assert results.parse_value("0.05") == 0.05 and isinstance(results.parse_value("10"), int)
    assert results.parse_value("1e-3") == 0.001 and results.parse_value("1e+30") == 1e30  # PyYAML keeps these text
    assert results.parse_value("true") is True and results.parse_value("False") is False
    assert results.parse_value("null") is None and math.isinf(results.parse_value("inf"))
    assert results.parse_value("fedprox") == "fedprox" and results.parse_value("'a b'") == "a b"
    assert results.parse_value("[32,32]") == "[32,32]"  # lists stay text: cells must be hashable


@pytest.fixture
def folders(tmp_path: Path) -> Path:
    """Four runs, one per status; one a group override with the config filling the others' value."""
    root = tmp_path / "sweep"
    make_run(root / "0", ["trainer.lr=0.1", "seed=0"], curve([0.5, 0.7, 0.9]), wall_seconds=2.5)
    make_run(root / "1", ["trainer.lr=1e3", "seed=1"], curve([0.3, math.nan], [1.0, math.nan]), diverged=True)
    make_run(root / "2", ["strategy=fedprox", "seed=2"], curve([0.2, 0.4]), finished=False)
    budget = make_run(root / "10", ["trainer.lr=0.05", "seed=3"], curve([0.6, 0.65]))
    summary = json.loads((budget / "summary.json").read_text())
    (budget / "summary.json").write_text(json.dumps({**summary, "stop_reason": "privacy_budget"}))
    return root


def test_runs_frame_has_one_typed_row_per_run(folders):
    runs = results.load_runs(folders)
    assert runs["run/name"].tolist() == ["0", "1", "2", "10"]  # job folders in numeric order
    assert runs["run/status"].tolist() == ["completed", "diverged", "failed", "budget-stopped"]
    # Settings: override keys as typed; a run without the override shows its config's value (0.01)
    # or its group choice (fedavg).
    assert list(runs.columns[:5]) == ["run/name", "run/path", "trainer.lr", "seed", "strategy"]
    assert runs["trainer.lr"].tolist() == [0.1, 1000.0, 0.01, 0.05] and runs["trainer.lr"].dtype == float
    assert runs["seed"].tolist() == [0, 1, 2, 3]
    assert runs["strategy"].tolist() == ["fedavg", "fedavg", "fedprox", "fedavg"]
    assert runs["run/rounds"].tolist() == [3, 2, 2, 2]  # the failed run: its last logged round
    assert runs["run/wall_seconds"].iloc[0] == 2.5 and math.isnan(runs["run/wall_seconds"].iloc[2])
    assert runs["eval/accuracy"].iloc[0] == 0.9 and math.isnan(runs["eval/accuracy"].iloc[2])
    assert math.isnan(runs["eval/accuracy"].iloc[1])  # diverged: its last logged value was NaN
    assert runs["run/stop_reason"].iloc[3] == "privacy_budget"


def test_curves_frame_has_one_row_per_run_and_round(folders):
    curves = results.load_curves(folders)
    assert len(curves) == 3 + 2 + 2 + 2
    first = curves[curves["run/name"] == "0"]
    assert first["round"].tolist() == [1, 2, 3] and first["eval/accuracy"].tolist() == [0.5, 0.7, 0.9]
    assert (first["trainer.lr"] == 0.1).all() and (first["run/status"] == "completed").all()
    # Per-run statistics over the curves: finite values only (the diverged round is no best).
    best = results.best(curves, "eval/accuracy", by="run/name")
    assert best.to_dict() == {"0": 0.9, "1": 0.3, "2": 0.4, "10": 0.65}
    assert results.best(curves, "eval/loss", by="run/name")["0"] == pytest.approx(0.1)  # lower is better
    reached = results.rounds_to(curves, "eval/accuracy", 0.6, by="run/name")
    assert reached.to_dict() == {"0": 2, "10": 1}


def test_a_setting_named_like_a_column_of_its_own_is_refused(tmp_path):
    make_run(tmp_path / "a", ["+round=3"], curve([0.5]))
    results.load_runs(tmp_path)  # `round` is no column of the per-run frame
    with pytest.raises(ValueError, match="'round' is both a setting or metric and a column"):
        results.load_curves(tmp_path)


def test_a_tree_of_sweeps_names_runs_by_their_relative_folder(tmp_path):
    for sweep in ("lr", "mu"):
        for job in (0, 1):
            make_run(tmp_path / sweep / str(job), [f"seed={job}"], curve([0.5]))
    runs = results.load_runs([tmp_path, tmp_path / "lr"])  # the second path adds nothing new
    assert runs["run/name"].tolist() == ["lr/0", "lr/1", "mu/0", "mu/1"]
    assert results.load_runs(tmp_path / "lr" / "1")["run/name"].tolist() == ["1"]


def _independent_parse(job: Path) -> tuple[dict[str, str], dict, list[dict]]:
    """What the run folder says, read without fedtorch: overrides, summary, per-round rows."""
    overrides = dict(line.split("=", 1) for line in yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text()))
    summary = json.loads((job / "summary.json").read_text())
    rows = [json.loads(line) for line in (job / "metrics.jsonl").read_text().splitlines()]
    return overrides, summary, rows


def test_a_real_sweep_reads_back_as_its_files_say(tmp_path):
    """The acceptance check: `-m rounds=2,3 seed=0,1` (issue 18 bug 4's sweep), read back."""
    sweep = tmp_path / "sweep"
    proc = run_cli("-m", "rounds=2,3", "seed=0,1", "num_threads=1", "logging.progress=false",
                   f"hydra.sweep.dir={sweep}")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    jobs = sorted((p for p in sweep.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    assert len(jobs) == 4

    runs = results.load_runs(sweep).set_index("run/name")
    curves = results.load_curves(sweep)
    assert list(runs.columns[1:3]) == ["rounds", "seed"]  # the job's overrides, in command-line order
    for job in jobs:
        overrides, summary, rows = _independent_parse(job)
        row = runs.loc[job.name]
        assert row["rounds"] == int(overrides["rounds"]) == summary["rounds"] == row["run/rounds"]
        assert row["seed"] == int(overrides["seed"])
        assert row["run/status"] == "completed" and row["run/wall_seconds"] == summary["wall_seconds"]
        for metric, value in summary["metrics"].items():
            assert row[metric] == value, metric
        mine = curves[curves["run/name"] == job.name]
        assert mine["round"].tolist() == [r["round"] for r in rows]
        for metric in rows[0]:
            assert mine[metric].tolist() == [r[metric] for r in rows], metric

    # The report of the same sweep keeps the swept `rounds` as a setting column.
    out = tmp_path / "report"
    report.build_report([sweep], out, figures=False)
    table = read_csv(out / "report.csv")
    assert [(r["rounds"], r["run seeds"], float(r["rounds done mean"])) for r in table] == [
        ("2", "0,1", 2.0),
        ("3", "0,1", 3.0),
    ]
