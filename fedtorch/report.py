"""Turn the run folders a sweep left into a table and figures a researcher can look at.

    python -m fedtorch.report outputs/multirun/2026-11-26/10-00-00
    python -m fedtorch.report SWEEP --target eval/accuracy=0.8 --provenance --out results/

The runs are read with `fedtorch.results` (every folder under the given paths that holds a run;
see that module for what is read). Runs whose settings differ only in their seed form one
configuration. Written into the output folder:

- `report.md` and `report.csv`: one row per configuration (the CSV at full precision, a statistic
  split into `<name> mean`, `<name> std` and, for rounds to a target, `<name> reached`);
- `runs.csv`: one row per run (its folder, settings, seed, status, final metrics; provenance with
  `--provenance`);
- `curves_<metric>.png`: each metric against rounds, one line per configuration with a +-1 std band;
- `<metric>_vs_bytes.png` and `<metric>_vs_epsilon.png` where runs log communication (`*bytes*`)
  or privacy (`*epsilon*`) metrics.

Columns. The settings come first, named by their override keys (`trainer.lr`, `rounds`, ...): every
override key whose value differs between the runs, the seed aside. Every statistic's name holds a
space, which no Hydra override key can, so a statistic never replaces a setting (a swept `rounds`
stays a setting column next to the `rounds done` statistic):

- `run seeds`, `run count`, `run status`: the configuration's seeds, its number of runs, and how
  they ended (`ok`: completed; `budget-stopped`: stopped when the privacy budget was spent;
  `diverged`; `failed`: no summary.json);
- `<metric> final`: the run's final value (the last value it logged, from `summary.json`);
- `<metric> best`: the best value the run reached in any round (the maximum for accuracy-like
  names, the minimum otherwise; finite values only);
- `rounds to <metric>>=<value>` (`<=` for loss-like metrics): the first round at which the run
  reached the target, averaged over the runs that reached it; `(k/n)` says how many of the n
  finished runs did, and `not reached (0/n)` that none did;
- `rounds done`: the rounds the run trained; `wall s`: its `wall_seconds`, the wall-clock time of
  the training loop (rounds, evaluation and callbacks; not the data loading before it).

Each statistic cell is the mean ± the sample standard deviation (n - 1 in the denominator) over
the finished runs of the configuration (status ok or budget-stopped); one run shows its value
alone. Diverged and failed runs are never dropped silently: they are counted in `run status` and
listed by folder. Figures need matplotlib and tables pandas (`pip install -e ".[report]"`);
without matplotlib the tables are still written and the command fails with a message saying so
(or pass `--no-figures`).

This module reads files only; it imports neither Hydra nor torch.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import math
import re
import statistics
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedtorch import results

# Re-exported: the command line (objective direction) and older scripts import them from here.
from fedtorch.results import (  # noqa: F401
    MISSING,
    SEED_KEY,
    Run,
    find_runs,
    higher_is_better,
    load_run,
    metric_direction,
    parse_overrides,
    read_history,
)

if TYPE_CHECKING:
    import pandas as pd

FIGURE_SIZE_INCHES = (7.0, 4.5)
FIGURE_DPI = 100  # with the size above: 700 x 450 pixel PNGs

# The report's own columns. Each holds a space, so none can be an override key (see the docstring).
SEEDS, COUNT, STATUS = "run seeds", "run count", "run status"
ROUNDS_DONE, WALL = "rounds done", "wall s"
RUN_FOLDER = "run folder"
#: How the report names each `fedtorch.results` status (a completed run is simply "ok").
STATUS_WORDS = {
    results.COMPLETED: "ok",
    results.BUDGET_STOPPED: "budget-stopped",
    results.DIVERGED: "diverged",
    results.FAILED: "failed",
}


def final_name(metric: str) -> str:
    return f"{metric} final"


def best_name(metric: str) -> str:
    return f"{metric} best"


# -- settings and configurations ------------------------------------------------------------------
def setting_text(value: Any) -> str:
    """How a setting reads in a table: as it would be typed on the command line (empty when the
    run has no such key)."""
    if value is MISSING:
        return ""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def varying_keys(runs: Sequence[Run], exclude: Sequence[str] = (SEED_KEY,)) -> list[str]:
    """The override keys whose value differs between runs, in first-seen order."""
    keys = [k for k in results.override_keys(runs) if k not in exclude]
    return [k for k in keys if len({setting_text(run.setting(k)) for run in runs}) > 1]


@dataclass
class Group:
    """Runs with the same configuration (the varying settings other than the seed), as text."""

    settings: dict[str, str]
    runs: list[Run]

    @property
    def ok_runs(self) -> list[Run]:
        """The finished runs (completed or budget-stopped): the ones the statistics are over."""
        return [r for r in self.runs if r.status in results.FINISHED]

    @property
    def label(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.settings.items()) or "all runs"

    @property
    def status(self) -> str:
        counts = {word: sum(STATUS_WORDS[r.status] == word for r in self.runs) for word in STATUS_WORDS.values()}
        if counts["ok"] == len(self.runs):
            return "ok"
        return ", ".join(f"{n} {word}" for word, n in counts.items() if n)


def group_runs(runs: Sequence[Run], keys: Sequence[str]) -> list[Group]:
    """Runs with equal settings for `keys` (the seed aside) in one group, groups in first-seen order."""
    groups: dict[tuple[str, ...], Group] = {}
    for run in runs:
        values = tuple(setting_text(run.setting(k)) for k in keys)
        groups.setdefault(values, Group(dict(zip(keys, values)), [])).runs.append(run)
    return list(groups.values())


# -- statistics -----------------------------------------------------------------------------------
@dataclass
class Stat:
    """Mean and sample standard deviation (n - 1) of the values at hand (`n` of them)."""

    mean: float | None
    std: float | None
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Stat:
        values = [float(v) for v in values]
        if not values:
            return cls(None, None, 0)
        mean = statistics.fmean(values)
        std = statistics.stdev(values) if len(values) > 1 else None
        return cls(mean, std, len(values))

    def text(self) -> str:
        if self.mean is None:
            return "—"
        if self.std is None:
            return _fmt(self.mean)
        return f"{_fmt(self.mean)} ± {_fmt(self.std)}"


def _fmt(x: float) -> str:
    if math.isnan(x) or math.isinf(x):
        return str(x)
    if x != 0 and (abs(x) >= 1e5 or abs(x) < 1e-3):
        return f"{x:.3e}"
    return f"{x:.4g}" if abs(x) < 1000 else f"{x:.0f}"


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class Target:
    """`--target METRIC=VALUE`: rounds until METRIC first reaches VALUE."""

    metric: str
    value: float

    @classmethod
    def parse(cls, text: str) -> Target:
        metric, sep, value = text.rpartition("=")
        try:
            if not sep or not metric:
                raise ValueError
            return cls(metric, float(value))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"--target {text!r}: expected METRIC=NUMBER, e.g. eval/accuracy=0.8"
            ) from None

    @property
    def name(self) -> str:
        op = ">=" if higher_is_better(self.metric) else "<="
        return f"rounds to {self.metric}{op}{self.value:g}"


def default_metrics(runs: Sequence[Run]) -> list[str]:
    """eval/accuracy and eval/loss where logged, else the runs' objective, else every eval/ metric."""
    logged: set[str] = set()
    for run in runs:
        logged.update(run.final)
        for row in run.history:
            logged.update(row)
    chosen = [m for m in ("eval/accuracy", "eval/loss") if m in logged]
    if chosen:
        return chosen
    objectives = [run.config.get("objective") for run in runs if run.config.get("objective") in logged]
    if objectives:
        return list(dict.fromkeys(objectives))
    return sorted(m for m in logged if m.startswith("eval/")) or sorted(logged - {"round"})[:3]


@dataclass
class Tables:
    """The DataFrames the report's numbers come from (`fedtorch.results`), one row per run and per
    (run, round), with the per-run best values and rounds to each target."""

    runs: pd.DataFrame
    curves: pd.DataFrame
    best: dict[str, pd.Series]
    rounds_to: dict[Target, pd.Series]

    @classmethod
    def of(cls, runs: Sequence[Run], metrics: Sequence[str], targets: Sequence[Target]) -> Tables:
        frame = results.runs_frame(runs, keys=[])
        curves = results.curves_frame(runs, keys=[])
        for metric in metrics:  # a metric no run logged is an empty column, not an error
            for table in (frame, curves):
                if metric not in table:
                    table[metric] = math.nan
        best = {m: results.best(curves, m) for m in metrics}
        reached = {t: results.rounds_to(curves, t.metric, t.value) for t in targets if t.metric in curves}
        return cls(frame.set_index("run/path", drop=False), curves, best, reached)

    def finals(self, runs: Sequence[Run], metric: str) -> list[float]:
        values = self.runs.loc[[str(r.path) for r in runs], metric]
        return [float(v) for v in values if _finite(v)]

    def bests(self, runs: Sequence[Run], metric: str) -> list[float]:
        """Each run's best value in any round; its final value when it logged no curve."""
        found = []
        for run in runs:
            value = self.best[metric].get(str(run.path), math.nan)
            if not _finite(value):
                value = self.runs.at[str(run.path), metric]
            if _finite(value):
                found.append(float(value))
        return found

    def rounds_to_target(self, runs: Sequence[Run], target: Target) -> list[int]:
        series = self.rounds_to.get(target)
        if series is None:
            return []
        return [int(series[str(r.path)]) for r in runs if str(r.path) in series.index]

    def column(self, runs: Sequence[Run], name: str) -> list[float]:
        return [float(v) for v in self.runs.loc[[str(r.path) for r in runs], name] if _finite(v)]


def table_rows(
    groups: Sequence[Group], tables: Tables, metrics: Sequence[str], targets: Sequence[Target]
) -> list[dict[str, Any]]:
    """One dict per configuration: its settings, then a `Stat` (or text) per statistic."""
    rows = []
    for group in groups:
        ok = group.ok_runs
        row: dict[str, Any] = dict(group.settings)
        statistics_row: dict[str, Any] = {
            SEEDS: ",".join(setting_text(r.setting(SEED_KEY)) for r in group.runs),
            COUNT: len(group.runs),
            STATUS: group.status,
        }
        for metric in metrics:
            statistics_row[final_name(metric)] = Stat.of(tables.finals(ok, metric))
            statistics_row[best_name(metric)] = Stat.of(tables.bests(ok, metric))
        for target in targets:
            statistics_row[target.name] = (Stat.of(tables.rounds_to_target(ok, target)), len(ok))
        statistics_row[ROUNDS_DONE] = Stat.of(tables.column(ok, "run/rounds"))
        statistics_row[WALL] = Stat.of(tables.column(ok, "run/wall_seconds"))
        # By construction (a space in every statistic's name) this never fires; it keeps it so.
        assert not set(row) & set(statistics_row), (
            f"a statistic is named like a setting: {set(row) & set(statistics_row)}"
        )
        rows.append({**row, **statistics_row})
    return rows


# -- writing tables ----------------------------------------------------------------------------
def _cell_text(value: Any) -> str:
    if isinstance(value, Stat):
        return value.text()
    if isinstance(value, tuple):  # rounds to target: (Stat over the runs that reached it, runs)
        stat, total = value
        reached = f"{stat.n}/{total}"
        return f"not reached ({reached})" if stat.n == 0 else f"{stat.text()} ({reached})"
    text = str(value)
    if len(text) > 8 and "." in text:  # a long float (Optuna-sampled) reads better rounded; the CSV keeps it whole
        with contextlib.suppress(ValueError):
            text = _fmt(float(text))
    return text.replace("|", "\\|")


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    if not rows:
        return "(no runs)\n"
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell_text(row[c]) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def csv_table(rows: Sequence[dict[str, Any]]) -> str:
    """The table at full precision: a statistic becomes `<name> mean`, `<name> std` (and `<name> reached`) columns."""
    flat_rows = []
    for row in rows:
        flat: dict[str, Any] = {}
        for column, value in row.items():
            if isinstance(value, Stat):
                flat[f"{column} mean"] = "" if value.mean is None else repr(value.mean)
                flat[f"{column} std"] = "" if value.std is None else repr(value.std)
            elif isinstance(value, tuple):
                stat, total = value
                flat[f"{column} mean"] = "" if stat.mean is None else repr(stat.mean)
                flat[f"{column} std"] = "" if stat.std is None else repr(stat.std)
                flat[f"{column} reached"] = f"{stat.n}/{total}"
            else:
                flat[column] = value
        flat_rows.append(flat)
    return _to_csv(flat_rows)


def _to_csv(rows: Sequence[dict[str, Any]]) -> str:
    if not rows:
        return ""
    columns = list(dict.fromkeys(c for row in rows for c in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


PROVENANCE_FIELDS = (
    "git_commit",
    "git_dirty",
    "git_untracked",
    "fedtorch_version",
    "torch_version",
    "python_version",
    "device",
    "hostname",
    "num_threads",
    "partition_sha256",
    "command",
)


def provenance_name(field_name: str) -> str:
    return f"provenance {field_name}"


def run_rows(
    runs: Sequence[Run], keys: Sequence[str], metrics: Sequence[str], provenance: bool
) -> list[dict[str, Any]]:
    """One dict per run: folder, the varying settings and the seed, status, rounds, wall time, final
    metrics (and provenance)."""
    rows = []
    for run in runs:
        row: dict[str, Any] = {RUN_FOLDER: str(run.path)}
        row.update({key: setting_text(run.setting(key)) for key in [*keys, SEED_KEY]})
        row[STATUS] = STATUS_WORDS[run.status]
        row[ROUNDS_DONE] = run.rounds_done
        wall = (run.summary or {}).get("wall_seconds")
        row[WALL] = "" if wall is None else repr(wall)
        for metric in metrics:
            value = run.final.get(metric)
            row[final_name(metric)] = "" if value is None else repr(value)
        if provenance:
            prov = (run.summary or {}).get("provenance", {})
            row.update({provenance_name(k): prov.get(k, "") for k in PROVENANCE_FIELDS})
        rows.append(row)
    return rows


def provenance_markdown(runs: Sequence[Run]) -> str:
    """A per-run provenance table, with a warning when runs come from different code."""
    lines = [
        "| run | commit | fedtorch | torch | python | device | partition sha256 | command |",
        "|---|---|---|---|---|---|---|---|",
    ]
    commits = set()
    for run in runs:
        prov = (run.summary or {}).get("provenance")
        if not prov:
            lines.append(f"| {run.path.name} | (not recorded) | | | | | | |")
            continue
        commit = (prov.get("git_commit") or "no git")[:10]
        state = {True: " (dirty)", False: "", None: ""}[prov.get("git_dirty")]
        commits.add(commit + state)
        partition = (prov.get("partition_sha256") or "")[:12]
        cells = [
            run.path.name,
            commit + state,
            prov.get("fedtorch_version", ""),
            prov.get("torch_version", ""),
            prov.get("python_version", ""),
            prov.get("device", ""),
            partition,
            f"`{prov.get('command', '')}`",
        ]
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |")
    notes = []
    if len(commits) > 1:
        notes.append(f"**The runs come from {len(commits)} different code states:** {', '.join(sorted(commits))}.")
    if any("(dirty)" in c for c in commits):
        notes.append("Some runs ran from a working tree with uncommitted changes (dirty).")
    return "\n".join(lines) + "\n" + "".join(f"\n{n}\n" for n in notes)


# -- figures -----------------------------------------------------------------------------------
def _pyplot():
    """matplotlib's pyplot on the file-only Agg backend, or a clear error naming the extra to install."""
    try:
        import matplotlib
    except ImportError:
        raise SystemExit(
            "fedtorch.report: figures need matplotlib, which is not installed: "
            "pip install -e '.[report]' (or pass --no-figures; the tables were written)"
        ) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _already_cumulative(x_key: str) -> bool:
    """Whether a logged x value is already a running total (`*total*`, `*cum*`, epsilon: privacy spent so far)."""
    return any(word in x_key.lower() for word in ("total", "cum", "epsilon"))


def series(curves: pd.DataFrame, runs: Sequence[Run], y_key: str, x_key: str | None = None) -> pd.DataFrame:
    """Per round where `y_key` was logged, over `runs`: columns `x` (mean), `y` (mean), `std` (of y,
    sample std; 0 for one run) and `n` (runs).

    x is the round, or the value of `x_key` at that round: as logged when it is already cumulative
    (see `_already_cumulative`), else summed over the rounds so far; a round that did not log it
    keeps the running value.
    """
    pd = results.require_pandas()
    if y_key not in curves:
        return pd.DataFrame(columns=["x", "y", "std", "n"])
    table = curves[curves["run/path"].isin([str(r.path) for r in runs])].copy()
    table["y"] = results.finite_or_nan(table[y_key])
    if x_key is None:
        table["x"] = table[results.ROUND].astype(float)
    else:
        raw = results.finite_or_nan(table[x_key]) if x_key in table else pd.Series(math.nan, index=table.index)
        if _already_cumulative(x_key):
            table["x"] = raw.groupby(table["run/path"], sort=False).ffill().fillna(0.0)
        else:
            table["x"] = raw.fillna(0.0).groupby(table["run/path"], sort=False).cumsum()
    table = table.dropna(subset=["y"])
    per_round = table.groupby(results.ROUND, sort=True)
    out = per_round.agg(x=("x", "mean"), y=("y", "mean"), std=("y", "std"), n=("y", "size"))
    out["std"] = out["std"].fillna(0.0)
    return out


def _plot(
    plt: Any, groups: Sequence[Group], curves: pd.DataFrame, y_key: str, x_key: str | None, x_label: str, path: Path
) -> bool:
    """One line (mean over seeds) with a +-1 std band per configuration; False when nothing to draw."""
    fig, ax = plt.subplots(figsize=FIGURE_SIZE_INCHES, dpi=FIGURE_DPI)
    drawn = False
    for group in groups:
        points = series(curves, group.ok_runs, y_key, x_key)
        if points.empty:
            continue
        n_seeds = len(group.ok_runs)
        label = group.label + (f" ({n_seeds} seeds)" if n_seeds > 1 else "")
        (line,) = ax.plot(points["x"], points["y"], label=label, linewidth=1.5)
        if n_seeds > 1:
            low, high = points["y"] - points["std"], points["y"] + points["std"]
            ax.fill_between(points["x"], low, high, color=line.get_color(), alpha=0.2)
        drawn = True
    if not drawn:
        plt.close(fig)
        return False
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_key)
    if x_key is None:
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # rounds are whole numbers
    ax.set_title(f"{y_key}: mean ± std over seeds", fontsize="medium")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small" if len(groups) <= 8 else "x-small")
    fig.tight_layout()  # keeps the figure size: the PNG is exactly FIGURE_SIZE_INCHES * FIGURE_DPI
    fig.savefig(path, dpi=FIGURE_DPI)
    plt.close(fig)
    return True


def _logged_keys(curves: pd.DataFrame, runs: Sequence[Run], word: str) -> list[str]:
    """The metrics whose name holds `word` that `runs` logged in some round."""
    table = curves[curves["run/path"].isin([str(r.path) for r in runs])]
    metrics = [c for c in table.columns if "/" in c and not c.startswith("run/")]
    return sorted(c for c in metrics if word in c.lower() and table[c].notna().any())


def _pick_bytes_key(keys: Sequence[str]) -> str:
    """Bytes sent: prefer a cumulative uplink counter (`comm/bytes_up_total`), then any total, then any."""

    def rank(key: str) -> tuple[int, int, str]:
        low = key.lower()
        return ("total" not in low and "cum" not in low, "up" not in low and "sent" not in low, key)

    return min(keys, key=rank)


def _slug(metric: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", metric).strip("_")


def write_figures(groups: Sequence[Group], curves: pd.DataFrame, metrics: Sequence[str], out_dir: Path) -> list[Path]:
    """The PNG figures for `groups` into `out_dir`; returns the files written."""
    plt = _pyplot()
    runs = [r for g in groups for r in g.ok_runs]
    written: list[Path] = []
    for metric in metrics:
        path = out_dir / f"curves_{_slug(metric)}.png"
        if _plot(plt, groups, curves, metric, None, "round", path):
            written.append(path)
    main_metric = metrics[0] if metrics else None
    if main_metric is None:
        return written
    bytes_keys = _logged_keys(curves, runs, "bytes")
    if bytes_keys:
        key = _pick_bytes_key(bytes_keys)
        path = out_dir / f"{_slug(main_metric)}_vs_bytes.png"
        if _plot(plt, groups, curves, main_metric, key, f"{key} (cumulative)", path):
            written.append(path)
    epsilon_keys = _logged_keys(curves, runs, "epsilon")
    if epsilon_keys:
        key = epsilon_keys[0]
        path = out_dir / f"{_slug(main_metric)}_vs_epsilon.png"
        if _plot(plt, groups, curves, main_metric, key, key, path):
            written.append(path)
    return written


def png_size(path: str | Path) -> tuple[int, int]:
    """(width, height) of a PNG from its IHDR chunk; raises ValueError when it is not a PNG."""
    header = Path(path).read_bytes()[:24]
    if header[:8] != b"\x89PNG\r\n\x1a\n" or header[12:16] != b"IHDR":
        raise ValueError(f"{path} is not a PNG file")
    width, height = struct.unpack(">II", header[16:24])
    return width, height


# -- the report --------------------------------------------------------------------------------
def _optuna_results(paths: Sequence[Path]) -> list[str]:
    lines = []
    for root in paths:
        result = results.read_yaml(root / "optimization_results.yaml")
        if isinstance(result, dict) and "best_value" in result:
            params = ", ".join(f"{k}={v}" for k, v in (result.get("best_params") or {}).items())
            lines.append(f"- Optuna study in `{root}`: best value {result['best_value']!r} with {params}")
    return lines


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _not_ok_line(run: Run) -> str:
    seed = setting_text(run.setting(SEED_KEY)) or "?"
    if run.status == results.DIVERGED:
        why = f"diverged at round {run.summary.get('diverged_round') or run.summary['rounds']}"
    else:
        why = f"failed: no summary.json ({run.rounds_done} rounds logged)"
    return f"- `{run.path}` (seed {seed}): {why}"


def build_report(
    paths: Sequence[str | Path],
    out_dir: str | Path,
    metrics: Sequence[str] | None = None,
    targets: Sequence[Target] = (),
    provenance: bool = False,
    figures: bool = True,
) -> dict[str, Any]:
    """Read the runs under `paths` and write the tables (and figures) into `out_dir`.

    Returns {"runs", "groups", "rows", "tables", "markdown", "files"}. Tables are written before
    figures, so they exist even when the figures fail (matplotlib missing).
    """
    roots = [Path(p) for p in paths]
    out_dir = Path(out_dir)
    inside_out = lambda d: out_dir.resolve() in (d.resolve(), *d.resolve().parents)  # an earlier report's folder
    runs = [run for run in results.read_runs(roots) if not inside_out(run.path)]
    metrics = list(metrics) if metrics else default_metrics(runs)
    keys = varying_keys(runs)
    groups = group_runs(runs, keys)
    tables = Tables.of(runs, metrics, targets)
    rows = table_rows(groups, tables, metrics, targets)

    out_dir.mkdir(parents=True, exist_ok=True)
    counts = {word: sum(STATUS_WORDS[r.status] == word for r in runs) for word in STATUS_WORDS.values()}
    ended = f"{counts['ok']} ok, {counts['diverged']} diverged, {counts['failed']} failed"
    if counts["budget-stopped"]:
        ended += f", {counts['budget-stopped']} budget-stopped"
    md = [f"# fedtorch report: {', '.join(str(p) for p in roots)}", ""]
    md.append(
        f"{_count(len(runs), 'run')} in {_count(len(groups), 'configuration')} ({ended}). "
        "Cells: mean ± sample std over the seeds of the runs that finished (ok or budget-stopped)."
    )
    md += ["", markdown_table(rows).rstrip("\n")]
    optuna = _optuna_results(roots)
    if optuna:
        md += ["", *optuna]
    not_ok = [r for r in runs if r.status not in results.FINISHED]
    if not_ok:
        md += ["", "## Runs not in the statistics", "", *map(_not_ok_line, not_ok)]
    if provenance:
        md += ["", "## Provenance", "", provenance_markdown(runs)]

    files = [out_dir / "report.md", out_dir / "report.csv", out_dir / "runs.csv"]
    (out_dir / "report.csv").write_text(csv_table(rows))
    (out_dir / "runs.csv").write_text(_to_csv(run_rows(runs, keys, metrics, provenance)))
    markdown = "\n".join(md).rstrip() + "\n"
    (out_dir / "report.md").write_text(markdown)
    if figures and runs:
        pngs = write_figures(groups, tables.curves, metrics, out_dir)
        files += pngs
        if pngs:
            markdown += "\n## Figures\n\n" + "".join(f"![{p.stem}]({p.name})\n" for p in pngs)
            (out_dir / "report.md").write_text(markdown)
    return {"runs": runs, "groups": groups, "rows": rows, "tables": tables, "markdown": markdown, "files": files}


_STATISTICS_HELP = """\
columns: the settings that differ between configurations (override keys, e.g. trainer.lr, rounds),
then statistics, each named with a space so none can replace a setting:
  run seeds, run count, run status   the seeds, the number of runs, how they ended
                                     (ok, budget-stopped, diverged, failed)
  METRIC final / METRIC best         the final value / the best value in any round
  rounds to METRIC>=VALUE            the first round reaching --target, averaged over the runs
                                     that reached it; (k/n) counts them
  rounds done, wall s                rounds trained; seconds of the training loop
Each cell is the mean +- the sample standard deviation (n - 1) over the seeds of the runs that
finished (ok or budget-stopped); one run shows its value alone. Diverged and failed runs are
counted in `run status` and listed by folder, never averaged."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedtorch-report",
        description="Tables and figures from fedtorch run and sweep folders (seeds aggregated as mean ± std).",
        epilog=_STATISTICS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("paths", nargs="+", help="run folders, sweep folders, or folders holding them")
    parser.add_argument("--out", help="output folder (default: <path>/report for one path, else ./report)")
    parser.add_argument(
        "--metric",
        action="append",
        dest="metrics",
        help="a metric to tabulate and plot (repeatable; default eval/accuracy and eval/loss where logged)",
    )
    parser.add_argument(
        "--target",
        action="append",
        type=Target.parse,
        default=[],
        help="METRIC=VALUE: rounds until METRIC "
        "first reaches VALUE (>= for accuracy-like metrics, <= for losses); repeatable",
    )
    parser.add_argument(
        "--provenance",
        action="store_true",
        help="show each run's git commit, versions, device, command and partition hash",
    )
    parser.add_argument("--no-figures", action="store_true", help="tables only (no matplotlib needed)")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Console script `fedtorch-report` and `python -m fedtorch.report`."""
    args = _parser().parse_args(argv)
    out = Path(args.out) if args.out else (Path(args.paths[0]) / "report" if len(args.paths) == 1 else Path("report"))
    try:
        report = build_report(
            args.paths, out, args.metrics, args.target, provenance=args.provenance, figures=not args.no_figures
        )
    except (FileNotFoundError, ImportError) as error:
        raise SystemExit(f"fedtorch.report: {error}") from None
    print(report["markdown"], end="")
    print("\nwritten: " + ", ".join(str(p) for p in report["files"]))


if __name__ == "__main__":
    main()
