"""`fedtorch.report`: tables and figures from run folders.

Most tests build run folders by hand (known numbers, so the statistics can be checked exactly);
one runs a real small sweep through the CLI and checks the report against its `summary.json` files.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fedtorch import report, results
from tests.conftest import REPO_ROOT, run_cli


def make_run(
    folder: Path,
    overrides: list[str],
    history: list[dict[str, float]] | None,
    *,
    diverged: bool = False,
    finished: bool = True,
    wall_seconds: float = 1.0,
    provenance: dict | None = None,
) -> Path:
    """A run folder as fedtorch writes it: .hydra/overrides.yaml, metrics.jsonl, summary.json."""
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    seed = next((int(o.split("=")[1]) for o in overrides if o.startswith("seed=")), 0)
    (folder / ".hydra" / "config.yaml").write_text(
        yaml.safe_dump({"seed": seed, "rounds": 50, "trainer": {"lr": 0.01}})
    )
    (folder / ".hydra" / "hydra.yaml").write_text(
        yaml.safe_dump({"hydra": {"runtime": {"choices": {"strategy": "fedavg", "hydra/launcher": "basic"}}}})
    )
    if history is not None:
        (folder / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in history))
    if finished:
        final: dict[str, float] = {}
        for row in history or []:
            final.update({k: v for k, v in row.items() if k != "round"})
        summary = {
            "metrics": final,
            "rounds": len(history or []),
            "wall_seconds": wall_seconds,
            "diverged": diverged,
            "device": "cpu",
        }
        if provenance is not None:
            summary["provenance"] = provenance
        (folder / "summary.json").write_text(json.dumps(summary))
    return folder


def curve(accuracies: list[float], losses: list[float] | None = None) -> list[dict[str, float]]:
    losses = losses or [1.0 - a for a in accuracies]
    return [
        {"round": r + 1, "eval/accuracy": a, "eval/loss": loss} for r, (a, loss) in enumerate(zip(accuracies, losses))
    ]


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """lr=0.1 with seeds 0, 1, 2 (seed 2 diverged); lr=0.5 with seeds 0, 1 (seed 1 failed)."""
    root = tmp_path / "sweep"
    make_run(root / "0", ["trainer.lr=0.1", "seed=0", "rounds=4"], curve([0.5, 0.7, 0.9, 0.8]), wall_seconds=2.0)
    make_run(root / "1", ["trainer.lr=0.1", "seed=1", "rounds=4"], curve([0.4, 0.6, 0.7, 0.75]), wall_seconds=4.0)
    make_run(
        root / "2", ["trainer.lr=0.1", "seed=2", "rounds=4"], curve([0.3, math.nan], [1.0, math.nan]), diverged=True
    )
    make_run(root / "3", ["trainer.lr=0.5", "seed=0", "rounds=4"], curve([0.6, 0.65, 0.7, 0.72]), wall_seconds=3.0)
    make_run(root / "4", ["trainer.lr=0.5", "seed=1", "rounds=4"], curve([0.2, 0.3]), finished=False)
    return root


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def test_metric_direction_by_name():
    assert report.higher_is_better("eval/accuracy") and report.higher_is_better("eval/clients/accuracy_worst10")
    assert not report.higher_is_better("eval/loss") and not report.higher_is_better("privacy/epsilon")
    assert report.metric_direction("eval/clients/accuracy_std") == "minimize"  # spread across clients: small is good
    assert report.metric_direction("server/update_norm") is None


def test_parse_overrides():
    parsed = report.parse_overrides(["trainer.lr=0.1", "+extra=1", "++forced=x=y", "~logging", "strategy=fedavg"])
    assert parsed == {"trainer.lr": "0.1", "extra": "1", "forced": "x=y", "logging": "~deleted", "strategy": "fedavg"}


def test_find_runs_sorts_job_folders_numerically_and_skips_hidden(tmp_path):
    for n in (0, 2, 10, 1):
        make_run(tmp_path / str(n), [f"seed={n}"], curve([0.5]))
    make_run(tmp_path / ".submitit" / "123", ["seed=9"], curve([0.5]))
    (tmp_path / "0" / "checkpoints").mkdir()
    assert [p.name for p in report.find_runs([tmp_path])] == ["0", "1", "2", "10"]
    with pytest.raises(FileNotFoundError):
        report.find_runs([tmp_path / "missing"])


def test_table_groups_seeds_with_exact_mean_and_std(sweep, tmp_path):
    out = tmp_path / "out"
    result = report.build_report([sweep], out, targets=[report.Target("eval/accuracy", 0.7)], figures=False)
    rows = read_csv(out / "report.csv")
    assert [r["trainer.lr"] for r in rows] == ["0.1", "0.5"]  # the seed is grouped, not a column
    # rounds=4 is the same everywhere: not a column (only the statistic "rounds done" is).
    assert "seed" not in rows[0] and "rounds" not in rows[0] and "rounds done mean" in rows[0]
    lr01, lr05 = rows

    # lr=0.1: statistics over seeds 0 and 1; seed 2 diverged and is counted, not averaged.
    assert lr01["run seeds"] == "0,1,2" and lr01["run count"] == "3" and lr01["run status"] == "2 ok, 1 diverged"
    assert float(lr01["eval/accuracy final mean"]) == statistics.fmean([0.8, 0.75])
    assert float(lr01["eval/accuracy final std"]) == statistics.stdev([0.8, 0.75])
    assert float(lr01["eval/accuracy best mean"]) == statistics.fmean([0.9, 0.75])
    assert float(lr01["eval/loss best mean"]) == pytest.approx(statistics.fmean([0.1, 0.25]))
    assert float(lr01["rounds to eval/accuracy>=0.7 mean"]) == statistics.fmean([2, 3])
    assert lr01["rounds to eval/accuracy>=0.7 reached"] == "2/2"
    assert float(lr01["wall s mean"]) == 3.0 and float(lr01["wall s std"]) == statistics.stdev([2.0, 4.0])

    # lr=0.5: one finished seed (no std), one failed.
    assert lr05["run status"] == "1 ok, 1 failed"
    assert float(lr05["eval/accuracy final mean"]) == 0.72 and lr05["eval/accuracy final std"] == ""
    assert float(lr05["rounds to eval/accuracy>=0.7 mean"]) == 3

    markdown = (out / "report.md").read_text()
    assert "(3 ok, 1 diverged, 1 failed)" in markdown
    assert f"`{sweep / '2'}` (seed 2): diverged at round 2" in markdown
    assert f"`{sweep / '4'}` (seed 1): failed: no summary.json (2 rounds logged)" in markdown
    assert "| 0.1 | 0,1,2 | 3 | 2 ok, 1 diverged | 0.775 ± 0.03536 |" in markdown
    assert result["markdown"] == markdown

    runs = {r["run folder"]: r for r in read_csv(out / "runs.csv")}
    assert runs[str(sweep / "2")]["run status"] == "diverged" and runs[str(sweep / "4")]["run status"] == "failed"
    assert runs[str(sweep / "4")]["rounds done"] == "2"
    assert float(runs[str(sweep / "0")]["eval/accuracy final"]) == 0.8
    assert runs[str(sweep / "3")]["trainer.lr"] == "0.5" and runs[str(sweep / "3")]["seed"] == "0"


def test_a_swept_setting_named_like_a_statistic_keeps_its_column(tmp_path):
    """Issue 18, bug 4: `-m rounds=4,8 seed=0,1` gave two rows that could not be told apart, since the
    completed-rounds statistic overwrote the `rounds` setting (and report.csv had no `rounds` column)."""
    sweep = tmp_path / "sweep"
    for job, (rounds, seed) in enumerate([(4, 0), (4, 1), (8, 0), (8, 1)]):
        accuracies = [0.1 * (r + 1) + 0.01 * seed for r in range(rounds)]
        make_run(sweep / str(job), [f"rounds={rounds}", f"seed={seed}"], curve(accuracies), wall_seconds=rounds + seed)
    out = tmp_path / "out"
    markdown = report.build_report([sweep], out, figures=False)["markdown"]

    rows = read_csv(out / "report.csv")
    assert [r["rounds"] for r in rows] == ["4", "8"]  # the setting, as swept
    assert [float(r["rounds done mean"]) for r in rows] == [4.0, 8.0]  # the statistic, beside it
    assert [float(r["wall s mean"]) for r in rows] == [4.5, 8.5]
    assert [float(r["eval/accuracy final mean"]) for r in rows] == [
        statistics.fmean([0.4, 0.41]),
        statistics.fmean([0.8, 0.81]),
    ]
    assert "| rounds | run seeds | run count | run status |" in markdown
    assert "| 4 | 0,1 | 2 | ok |" in markdown and "| 8 | 0,1 | 2 | ok |" in markdown
    runs = read_csv(out / "runs.csv")
    expected = [("4", "0", "4"), ("4", "1", "4"), ("8", "0", "8"), ("8", "1", "8")]
    assert [(r["rounds"], r["seed"], r["rounds done"]) for r in runs] == expected
    # No statistic can be named like a setting: each holds a space, which no override key can.
    statistics_columns = [c for c in rows[0] if c != "rounds"]
    assert all(" " in c for c in statistics_columns), statistics_columns


def test_rounds_to_target_not_reached_and_loss_targets(sweep, tmp_path):
    targets = [report.Target.parse("eval/accuracy=0.85"), report.Target.parse("eval/loss=0.31")]
    assert targets[1].name == "rounds to eval/loss<=0.31"
    rows = report.build_report([sweep], tmp_path / "out", targets=targets, figures=False)["rows"]
    assert report._cell_text(rows[0]["rounds to eval/accuracy>=0.85"]) == "3 (1/2)"
    assert report._cell_text(rows[1]["rounds to eval/accuracy>=0.85"]) == "not reached (0/1)"
    assert report._cell_text(rows[1]["rounds to eval/loss<=0.31"]) == "3 (1/1)"  # loss 0.3 at round 3
    with pytest.raises(Exception, match="METRIC=NUMBER"):
        report.Target.parse("eval/accuracy")


def test_unchanged_settings_are_filled_from_the_config(tmp_path):
    """A run without an override for a varying key shows the value its config held."""
    make_run(tmp_path / "a", ["trainer.lr=0.1"], curve([0.5]))
    make_run(tmp_path / "b", ["strategy=fedprox"], curve([0.6]))
    rows = report.build_report([tmp_path], tmp_path / "out", figures=False)["rows"]
    assert [(r["trainer.lr"], r["strategy"]) for r in rows] == [("0.1", "fedavg"), ("0.01", "fedprox")]


def test_history_from_tensorboard_when_metrics_file_is_missing(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(tmp_path))
    for step, value in [(1, 0.25), (2, 0.5), (3, 0.75)]:
        writer.add_scalar("eval/accuracy", value, step)
        writer.add_scalar("hparam/eval/accuracy", value, step)  # HParams finals are not a curve
    writer.close()
    history = results.read_history(tmp_path)
    assert history == [{"round": r, "eval/accuracy": v} for r, v in [(1, 0.25), (2, 0.5), (3, 0.75)]]


def test_figures_are_pngs_of_the_expected_size(tmp_path):
    pytest.importorskip("matplotlib")
    for seed in (0, 1):
        rows = curve([0.5 + 0.1 * seed, 0.7, 0.8])
        for r, row in enumerate(rows):
            row["comm/bytes_up"] = 1000.0  # per round: the report sums it
            row["privacy/epsilon"] = 0.5 * (r + 1)
        make_run(tmp_path / "sweep" / str(seed), [f"seed={seed}"], rows)
    out = tmp_path / "out"
    files = report.build_report([tmp_path / "sweep"], out)["files"]
    pngs = sorted(p.name for p in files if p.suffix == ".png")
    assert pngs == sorted(
        [
            "curves_eval_accuracy.png",
            "curves_eval_loss.png",
            "eval_accuracy_vs_bytes.png",
            "eval_accuracy_vs_epsilon.png",
        ]
    )
    expected = (
        int(report.FIGURE_SIZE_INCHES[0] * report.FIGURE_DPI),
        int(report.FIGURE_SIZE_INCHES[1] * report.FIGURE_DPI),
    )
    for name in pngs:
        assert report.png_size(out / name) == expected
    assert "![curves_eval_accuracy](curves_eval_accuracy.png)" in (out / "report.md").read_text()
    # The bytes axis is cumulative: 1000, 2000, 3000 bytes after rounds 1-3; epsilon is already cumulative.
    runs = results.read_runs(tmp_path / "sweep")
    curves = results.curves_frame(runs)
    assert report.series(curves, runs, "eval/accuracy", "comm/bytes_up")["x"].tolist() == [1000.0, 2000.0, 3000.0]
    assert report.series(curves, runs, "eval/accuracy", "privacy/epsilon")["x"].tolist() == [0.5, 1.0, 1.5]
    by_round = report.series(curves, runs, "eval/accuracy")
    assert by_round["y"].tolist() == [statistics.fmean([0.5, 0.6]), 0.7, 0.8]
    assert by_round["std"].tolist() == pytest.approx([statistics.stdev([0.5, 0.6]), 0.0, 0.0])
    assert by_round["n"].tolist() == [2, 2, 2]
    with pytest.raises(ValueError, match="not a PNG"):
        report.png_size(out / "report.md")


def test_missing_matplotlib_fails_clearly_after_writing_tables(sweep, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now raises ImportError
    out = tmp_path / "out"
    with pytest.raises(SystemExit, match=r"figures need matplotlib.*pip install -e '\.\[report\]'.*--no-figures"):
        report.build_report([sweep], out)
    assert (out / "report.csv").exists() and (out / "report.md").exists()
    report.build_report([sweep], tmp_path / "tables_only", figures=False)  # tables alone need no matplotlib


def test_provenance_section_flags_mixed_and_dirty_code(tmp_path):
    base = {"fedtorch_version": "0.1.0", "torch_version": "2.13.0", "python_version": "3.11.7", "device": "cpu"}
    make_run(tmp_path / "0", ["seed=0"], curve([0.5]), provenance={**base, "git_commit": "a" * 40, "git_dirty": False,
             "partition_sha256": "f" * 64, "command": "python -m fedtorch seed=0"})  # fmt: skip
    make_run(tmp_path / "1", ["seed=1"], curve([0.5]), provenance={**base, "git_commit": "b" * 40, "git_dirty": True})
    make_run(tmp_path / "2", ["seed=2"], curve([0.5]))  # an older run without provenance
    markdown = report.build_report([tmp_path], tmp_path / "out", provenance=True, figures=False)["markdown"]
    assert "| 0 | aaaaaaaaaa | 0.1.0 | 2.13.0 | 3.11.7 | cpu | ffffffffffff | `python -m fedtorch seed=0` |" in markdown
    assert "| 1 | bbbbbbbbbb (dirty) |" in markdown and "| 2 | (not recorded) |" in markdown
    assert "2 different code states" in markdown and "uncommitted changes" in markdown
    runs = read_csv(tmp_path / "out" / "runs.csv")
    assert runs[0]["provenance git_commit"] == "a" * 40 and runs[1]["provenance git_dirty"] == "True"


def test_report_of_a_real_sweep_matches_its_summaries(tmp_path):
    """The acceptance check: a real sweep, the report command, numbers equal to summary.json."""
    sweep_dir = tmp_path / "sweep"
    proc = run_cli(
        "-m",
        "trainer.lr=0.05,0.2,1e30",  # 1e30 diverges in round 1
        "seed=0,1",
        "rounds=3",
        "num_threads=1",
        "logging.progress=false",
        f"hydra.sweep.dir={sweep_dir}",
    )
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "report"
    proc = subprocess.run(
        [sys.executable, "-m", "fedtorch.report", str(sweep_dir), "--out", str(out), "--target", "eval/accuracy=0.2"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "| trainer.lr | run seeds | run count | run status |" in proc.stdout

    summaries: dict[str, list[dict]] = {}
    for job in sorted(sweep_dir.iterdir()):
        if job.is_dir() and (job / "summary.json").exists():
            lr = report.parse_overrides(yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text()))["trainer.lr"]
            summaries.setdefault(lr, []).append(json.loads((job / "summary.json").read_text()))
    assert {lr: len(s) for lr, s in summaries.items()} == {"0.05": 2, "0.2": 2, "1e+30": 2}

    rows = read_csv(out / "report.csv")
    assert [r["trainer.lr"] for r in rows] == ["0.05", "0.2", "1e+30"]
    diverged = rows.pop()  # shown as such, with no statistics, and listed by folder
    assert diverged["run status"] == "2 diverged" and diverged["eval/accuracy final mean"] == ""
    assert all(s["diverged"] for s in summaries["1e+30"])
    assert "## Runs not in the statistics" in proc.stdout and "diverged at round 1" in proc.stdout
    for row in rows:
        runs = summaries[row["trainer.lr"]]
        assert row["run seeds"] == "0,1" and row["run status"] == "ok"
        for metric in ("eval/accuracy", "eval/loss"):
            finals = [s["metrics"][metric] for s in runs]
            assert float(row[f"{metric} final mean"]) == statistics.fmean(finals)
            assert float(row[f"{metric} final std"]) == statistics.stdev(finals)
        walls = [s["wall_seconds"] for s in runs]
        assert float(row["wall s mean"]) == statistics.fmean(walls)
        assert float(row["rounds done mean"]) == 3.0

    pngs = sorted(out.glob("*.png"))
    assert {p.name for p in pngs} >= {"curves_eval_accuracy.png", "curves_eval_loss.png"}
    for png in pngs:
        assert report.png_size(png) == (700, 450)


def test_command_line_errors_are_one_clear_line(tmp_path, capsys):
    with pytest.raises(SystemExit, match="fedtorch.report: no such folder"):
        report.main([str(tmp_path / "missing")])
    with pytest.raises(SystemExit) as exit_info:
        report.main([str(tmp_path), "--target", "eval/accuracy"])
    assert exit_info.value.code == 2 and "expected METRIC=NUMBER" in capsys.readouterr().err
    report.main([str(tmp_path), "--no-figures"])  # an empty folder: an empty report, not a crash
    assert "0 runs in 0 configurations" in capsys.readouterr().out


def test_help_states_the_statistics(capsys):
    with pytest.raises(SystemExit):
        report.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "sample standard deviation (n - 1)" in text and "averaged over the runs that reached it" in text
    assert "rounds done" in text and "named with a space so none can replace a setting" in text
