"""Turn the run folders a sweep left into a table and figures a researcher can look at.

    python -m fedtorch.report outputs/multirun/2026-11-26/10-00-00
    python -m fedtorch.report SWEEP --target eval/accuracy=0.8 --provenance --out results/

Every folder under the given paths that holds a run (`.hydra/`, `summary.json` or
`metrics.jsonl`) is read: its overrides (`.hydra/overrides.yaml`), final metrics and status
(`summary.json`), and per-round metrics (`metrics.jsonl`, else the TensorBoard event files).
Runs that differ only in their seed form one configuration; the table has one row per
configuration with the overrides that differ between configurations as columns, the final and best
value of each metric and the rounds needed to reach a target, as mean +- standard deviation over
seeds, and the wall time. Written into the output folder:

- `report.md` and `report.csv`: the configuration table (the CSV at full precision);
- `runs.csv`: one row per run (its folder, seed, status, final metrics; provenance with `--provenance`);
- `curves_<metric>.png`: each metric against rounds, one line per configuration with a +-1 std band;
- `<metric>_vs_bytes.png` and `<metric>_vs_epsilon.png` where runs log communication (`*bytes*`)
  or privacy (`*epsilon*`) metrics.

Statistics are over the runs that finished (`summary.json` present, not diverged). Diverged and
failed runs are never dropped silently: they are counted in the `status` column and listed by folder.
Figures need matplotlib (`pip install -e ".[report]"`); without it the tables are still written
and the command fails with a message saying so (or pass `--no-figures`).

This module reads files only; it imports neither Hydra nor torch.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import math
import re
import statistics
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

SEED_KEY = "seed"
# Words in a metric's last name component that say which way it improves; the lower-is-better
# words win (an `accuracy_std` across clients is better small).
_LOWER_IS_BETTER = ("loss", "error", "perplexity", "mse", "mae", "std", "variance", "epsilon", "bytes", "seconds")
_HIGHER_IS_BETTER = ("acc", "auc", "f1", "precision", "recall", "score", "reward", "r2")
FIGURE_SIZE_INCHES = (7.0, 4.5)
FIGURE_DPI = 100  # with the size above: 700 x 450 pixel PNGs


def metric_direction(metric: str) -> str | None:
    """'maximize' (accuracy-like), 'minimize' (loss-like) or None (the name does not say), by name."""
    name = metric.lower().rsplit("/", 1)[-1]
    if any(word in name for word in _LOWER_IS_BETTER):
        return "minimize"
    if any(word in name for word in _HIGHER_IS_BETTER):
        return "maximize"
    return None


def higher_is_better(metric: str) -> bool:
    """Whether `metric` improves upwards (accuracy) rather than downwards (loss); unknown names: downwards."""
    return metric_direction(metric) == "maximize"


# -- reading runs -------------------------------------------------------------------------------
@dataclass
class Run:
    """One run folder as the report sees it.

    `summary` is None when the run has no `summary.json` (it failed or was killed); `history`
    holds one dict per logged round (`{"round": r, metric: value, ...}`).
    """

    path: Path
    overrides: dict[str, str] = field(default_factory=dict)
    choices: dict[str, str] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] | None = None
    history: list[dict[str, float]] = field(default_factory=list)

    @property
    def status(self) -> str:
        if self.summary is None:
            return "failed"
        return "diverged" if self.summary.get("diverged") else "ok"

    @property
    def seed(self) -> str:
        return self.value(SEED_KEY)

    @property
    def final(self) -> dict[str, float]:
        return dict(self.summary.get("metrics", {})) if self.summary else {}

    def value(self, key: str) -> str:
        """The run's setting for `key`: its override, else its config group choice, else its config value."""
        if key in self.overrides:
            return self.overrides[key]
        if key in self.choices:
            return "null" if self.choices[key] is None else str(self.choices[key])
        node: Any = self.config
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                return ""
            node = node[part]
        return json.dumps(node) if isinstance(node, (dict, list)) else str(node)


def _natural_key(path: Path) -> list[Any]:
    """Sort job folders 0, 1, 2, ..., 10 rather than 0, 1, 10, 2."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(path))]


def _is_run_dir(path: Path) -> bool:
    return any((path / name).exists() for name in (".hydra", "summary.json", "metrics.jsonl"))


def find_runs(paths: Iterable[str | Path]) -> list[Path]:
    """Every run folder at or below `paths` (hidden folders such as `.submitit/` skipped), sorted."""
    found: list[Path] = []
    for root in map(Path, paths):
        if not root.exists():
            raise FileNotFoundError(f"no such folder: {root}")
        stack = [root]
        while stack:
            folder = stack.pop()
            if _is_run_dir(folder):
                found.append(folder)
                continue  # a run's own subfolders (checkpoints, ...) are not runs
            stack.extend(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    return sorted(set(found), key=_natural_key)


def parse_overrides(lines: Iterable[str]) -> dict[str, str]:
    """Hydra command-line overrides -> {key: value}: `+k=v`, `++k=v` -> k: v; `~k` -> k: '~deleted'."""
    parsed: dict[str, str] = {}
    for line in lines:
        line = str(line).strip()
        if line.startswith("~"):
            parsed[line[1:].split("=", 1)[0]] = "~deleted"
            continue
        key, sep, value = line.lstrip("+").partition("=")
        if sep:
            parsed[key] = value
    return parsed


def read_history(run_dir: str | Path) -> list[dict[str, float]]:
    """Per-round metrics: `metrics.jsonl` when present, else the TensorBoard scalars (step = round)."""
    run_dir = Path(run_dir)
    jsonl = run_dir / "metrics.jsonl"
    if jsonl.exists():
        rows = []
        for line in jsonl.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a torn last line from a killed run
        return rows
    if not any(run_dir.glob("events.out.tfevents.*")):
        return []
    return _tensorboard_history(run_dir)


def _tensorboard_history(run_dir: Path) -> list[dict[str, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    accumulator.Reload()
    by_round: dict[int, dict[str, float]] = {}
    for tag in accumulator.Tags().get("scalars", []):
        if tag.startswith("hparam/"):
            continue  # final values for the HParams dashboard, not a per-round series
        for event in accumulator.Scalars(tag):
            by_round.setdefault(int(event.step), {"round": int(event.step)})[tag] = float(event.value)
    return [by_round[r] for r in sorted(by_round)]


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text()) if path.exists() else None
    except yaml.YAMLError:
        return None


def load_run(run_dir: str | Path) -> Run:
    """Read one run folder (any file may be missing: a failed run still loads)."""
    run_dir = Path(run_dir)
    hydra_dir = run_dir / ".hydra"
    overrides = parse_overrides(_read_yaml(hydra_dir / "overrides.yaml") or [])
    hydra_cfg = _read_yaml(hydra_dir / "hydra.yaml") or {}
    choices = (hydra_cfg.get("hydra", {}).get("runtime", {}) or {}).get("choices", {}) or {}
    choices = {k: v for k, v in choices.items() if not k.startswith("hydra/")}
    config = _read_yaml(hydra_dir / "config.yaml") or {}
    summary = None
    if (run_dir / "summary.json").exists():
        try:
            summary = json.loads((run_dir / "summary.json").read_text())
        except json.JSONDecodeError:
            summary = None  # a half-written summary (writes are atomic, so only if edited by hand)
    return Run(run_dir, overrides, choices, config, summary, read_history(run_dir))


# -- statistics -------------------------------------------------------------------------------
@dataclass
class Stat:
    """Mean and sample standard deviation of the values at hand (`n` of them)."""

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


def best_value(run: Run, metric: str) -> float | None:
    """The best value `metric` reached in any round (finite values only), else its final value."""
    values = [row[metric] for row in run.history if _finite(row.get(metric))]
    if not values:
        final = run.final.get(metric)
        return float(final) if _finite(final) else None
    return max(values) if higher_is_better(metric) else min(values)


def rounds_to_target(run: Run, metric: str, target: float) -> int | None:
    """The first round at which `metric` reached `target` (>= if higher is better, else <=), or None."""
    better = higher_is_better(metric)
    for row in run.history:
        value = row.get(metric)
        if _finite(value) and (value >= target if better else value <= target):
            return int(row["round"])
    return None


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass
class Group:
    """Runs with the same configuration (the varying settings other than the seed)."""

    settings: dict[str, str]
    runs: list[Run]

    @property
    def ok_runs(self) -> list[Run]:
        return [r for r in self.runs if r.status == "ok"]

    @property
    def label(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.settings.items()) or "all runs"

    @property
    def status(self) -> str:
        counts = {s: sum(r.status == s for r in self.runs) for s in ("ok", "diverged", "failed")}
        if counts["ok"] == len(self.runs):
            return "ok"
        return ", ".join(f"{n} {s}" for s, n in counts.items() if n)


def varying_keys(runs: Sequence[Run], exclude: Sequence[str] = (SEED_KEY,)) -> list[str]:
    """The override keys whose value differs between runs, in first-seen order."""
    keys: list[str] = []
    for run in runs:
        keys.extend(k for k in run.overrides if k not in keys and k not in exclude)
    return [k for k in keys if len({run.value(k) for run in runs}) > 1]


def group_runs(runs: Sequence[Run], keys: Sequence[str]) -> list[Group]:
    """Runs with equal values for `keys` (the seed aside) in one group, groups in first-seen order."""
    groups: dict[tuple[str, ...], Group] = {}
    for run in runs:
        values = tuple(run.value(k) for k in keys)
        groups.setdefault(values, Group(dict(zip(keys, values)), [])).runs.append(run)
    return list(groups.values())


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


def table_rows(groups: Sequence[Group], metrics: Sequence[str], targets: Sequence[Target]) -> list[dict[str, Any]]:
    """One dict per configuration: settings, counts, and a `Stat` (or text) per statistic."""
    rows = []
    for group in groups:
        ok = group.ok_runs
        row: dict[str, Any] = dict(group.settings)
        row["seeds"] = ",".join(r.seed for r in group.runs)
        row["runs"] = len(group.runs)
        row["status"] = group.status
        for metric in metrics:
            finals = [r.final[metric] for r in ok if _finite(r.final.get(metric))]
            bests = [b for b in (best_value(r, metric) for r in ok) if b is not None]
            row[f"{metric} final"] = Stat.of(finals)
            row[f"{metric} best"] = Stat.of(bests)
        for target in targets:
            reached = [n for n in (rounds_to_target(r, target.metric, target.value) for r in ok) if n is not None]
            row[target.name] = (Stat.of(reached), len(ok))
        row["rounds"] = Stat.of([r.summary["rounds"] for r in ok])
        row["wall s"] = Stat.of([r.summary["wall_seconds"] for r in ok])
        rows.append(row)
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
    """The table at full precision: a statistic becomes `_mean`, `_std` (and `_reached`) columns."""
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


def run_rows(runs: Sequence[Run], metrics: Sequence[str], provenance: bool) -> list[dict[str, Any]]:
    """One dict per run: folder, seed, status, rounds, final metrics (and provenance)."""
    rows = []
    for run in runs:
        row: dict[str, Any] = {"run": str(run.path), "seed": run.seed, "status": run.status}
        row["rounds"] = run.summary["rounds"] if run.summary else (run.history[-1]["round"] if run.history else 0)
        for metric in metrics:
            value = run.final.get(metric)
            row[metric] = "" if value is None else repr(value)
        if provenance:
            prov = (run.summary or {}).get("provenance", {})
            row.update({k: prov.get(k, "") for k in PROVENANCE_FIELDS})
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


def _series(runs: Sequence[Run], y_key: str, x_key: str | None = None) -> list[tuple[float, float, float, int]]:
    """Per round where `y_key` was logged: (mean x, mean y, std y, number of runs), over `runs`.

    x is the round, or the value of `x_key` at that round: cumulative when the key says so
    (`*total*`, `*cum*`) or for epsilon (already the privacy spent so far), else summed over rounds.
    """
    per_round: dict[int, list[tuple[float, float]]] = {}
    for run in runs:
        cumulative = 0.0
        for row in run.history:
            if x_key is not None:
                raw = row.get(x_key)
                if _finite(raw):
                    already_cumulative = any(w in x_key.lower() for w in ("total", "cum", "epsilon"))
                    cumulative = raw if already_cumulative else cumulative + raw
                x = cumulative
            else:
                x = float(row["round"])
            if _finite(row.get(y_key)):
                per_round.setdefault(int(row["round"]), []).append((x, float(row[y_key])))
    series = []
    for r in sorted(per_round):
        xs, ys = zip(*per_round[r])
        std = statistics.stdev(ys) if len(ys) > 1 else 0.0
        series.append((statistics.fmean(xs), statistics.fmean(ys), std, len(ys)))
    return series


def _plot(plt: Any, groups: Sequence[Group], y_key: str, x_key: str | None, x_label: str, path: Path) -> bool:
    """One line (mean over seeds) with a +-1 std band per configuration; False when nothing to draw."""
    fig, ax = plt.subplots(figsize=FIGURE_SIZE_INCHES, dpi=FIGURE_DPI)
    drawn = False
    for group in groups:
        series = _series(group.ok_runs, y_key, x_key)
        if not series:
            continue
        xs, ys, stds, _ = zip(*series)
        n_seeds = len(group.ok_runs)
        label = group.label + (f" ({n_seeds} seeds)" if n_seeds > 1 else "")
        (line,) = ax.plot(xs, ys, label=label, linewidth=1.5)
        if n_seeds > 1:
            low = [y - s for y, s in zip(ys, stds)]
            high = [y + s for y, s in zip(ys, stds)]
            ax.fill_between(xs, low, high, color=line.get_color(), alpha=0.2)
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


def _logged_keys(runs: Sequence[Run], word: str) -> list[str]:
    keys = {k for run in runs for row in run.history for k in row if word in k.lower() and k != "round"}
    return sorted(keys)


def _pick_bytes_key(keys: Sequence[str]) -> str:
    """Bytes sent: prefer a cumulative uplink counter (`comm/bytes_up_total`), then any total, then any."""

    def rank(key: str) -> tuple[int, int, str]:
        low = key.lower()
        return ("total" not in low and "cum" not in low, "up" not in low and "sent" not in low, key)

    return min(keys, key=rank)


def _slug(metric: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", metric).strip("_")


def write_figures(groups: Sequence[Group], metrics: Sequence[str], out_dir: Path) -> list[Path]:
    """The PNG figures for `groups` into `out_dir`; returns the files written."""
    plt = _pyplot()
    runs = [r for g in groups for r in g.ok_runs]
    written: list[Path] = []
    for metric in metrics:
        path = out_dir / f"curves_{_slug(metric)}.png"
        if _plot(plt, groups, metric, None, "round", path):
            written.append(path)
    main_metric = metrics[0] if metrics else None
    if main_metric is None:
        return written
    bytes_keys = _logged_keys(runs, "bytes")
    if bytes_keys:
        key = _pick_bytes_key(bytes_keys)
        path = out_dir / f"{_slug(main_metric)}_vs_bytes.png"
        if _plot(plt, groups, main_metric, key, f"{key} (cumulative)", path):
            written.append(path)
    epsilon_keys = _logged_keys(runs, "epsilon")
    if epsilon_keys:
        key = epsilon_keys[0]
        path = out_dir / f"{_slug(main_metric)}_vs_epsilon.png"
        if _plot(plt, groups, main_metric, key, key, path):
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
        result = _read_yaml(root / "optimization_results.yaml")
        if isinstance(result, dict) and "best_value" in result:
            params = ", ".join(f"{k}={v}" for k, v in (result.get("best_params") or {}).items())
            lines.append(f"- Optuna study in `{root}`: best value {result['best_value']!r} with {params}")
    return lines


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def build_report(
    paths: Sequence[str | Path],
    out_dir: str | Path,
    metrics: Sequence[str] | None = None,
    targets: Sequence[Target] = (),
    provenance: bool = False,
    figures: bool = True,
) -> dict[str, Any]:
    """Read the runs under `paths` and write the tables (and figures) into `out_dir`.

    Returns {"runs", "groups", "rows", "markdown", "files"}. Tables are written before figures, so
    they exist even when the figures fail (matplotlib missing).
    """
    roots = [Path(p) for p in paths]
    out_dir = Path(out_dir)
    run_dirs = [d for d in find_runs(roots) if out_dir.resolve() not in (d.resolve(), *d.resolve().parents)]
    runs = [load_run(d) for d in run_dirs]
    metrics = list(metrics) if metrics else default_metrics(runs)
    keys = varying_keys(runs)
    groups = group_runs(runs, keys)
    rows = table_rows(groups, metrics, targets)

    out_dir.mkdir(parents=True, exist_ok=True)
    counts = {s: sum(r.status == s for r in runs) for s in ("ok", "diverged", "failed")}
    md = [f"# fedtorch report: {', '.join(str(p) for p in roots)}", ""]
    md.append(
        f"{_count(len(runs), 'run')} in {_count(len(groups), 'configuration')} "
        f"({counts['ok']} ok, {counts['diverged']} diverged, {counts['failed']} failed). "
        "Cells: mean ± std over the seeds of the runs that finished (status ok)."
    )
    md += ["", markdown_table(rows).rstrip("\n")]
    optuna = _optuna_results(roots)
    if optuna:
        md += ["", *optuna]
    not_ok = [r for r in runs if r.status != "ok"]
    if not_ok:
        md += ["", "## Runs not in the statistics", ""]
        for run in not_ok:
            why = (
                f"diverged at round {run.summary.get('diverged_round') or run.summary['rounds']}"
                if run.status == "diverged"
                else f"failed: no summary.json ({run.history[-1]['round'] if run.history else 0} rounds logged)"
            )
            md.append(f"- `{run.path}` (seed {run.seed or '?'}): {why}")
    if provenance:
        md += ["", "## Provenance", "", provenance_markdown(runs)]

    files = [out_dir / "report.md", out_dir / "report.csv", out_dir / "runs.csv"]
    (out_dir / "report.csv").write_text(csv_table(rows))
    (out_dir / "runs.csv").write_text(_to_csv(run_rows(runs, metrics, provenance)))
    markdown = "\n".join(md).rstrip() + "\n"
    (out_dir / "report.md").write_text(markdown)
    if figures and runs:
        pngs = write_figures(groups, metrics, out_dir)
        files += pngs
        if pngs:
            markdown += "\n## Figures\n\n" + "".join(f"![{p.stem}]({p.name})\n" for p in pngs)
            (out_dir / "report.md").write_text(markdown)
    return {"runs": runs, "groups": groups, "rows": rows, "markdown": markdown, "files": files}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedtorch-report",
        description="Tables and figures from fedtorch run and sweep folders (seeds aggregated as mean ± std).",
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
    except FileNotFoundError as error:
        raise SystemExit(f"fedtorch.report: {error}") from None
    print(report["markdown"], end="")
    print("\nwritten: " + ", ".join(str(p) for p in report["files"]))


if __name__ == "__main__":
    main()
