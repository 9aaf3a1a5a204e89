"""Run folders as tidy pandas DataFrames: one row per run, and one row per (run, round).

    from fedtorch import results

    runs = results.load_runs("outputs/multirun/2026-11-26/10-00-00")    # a run, a sweep, or a tree of them
    runs.groupby("trainer.lr")["eval/accuracy"].agg(["mean", "std"])
    curves = results.load_curves("outputs/multirun/2026-11-26/10-00-00")
    curves.pivot_table(index="round", columns="trainer.lr", values="eval/accuracy")  # mean over seeds

Only what a run folder holds is read, so any finished, diverged, killed or still running run loads:
`.hydra/overrides.yaml` (the job's command-line overrides), `.hydra/config.yaml` (the composed
config) and `.hydra/hydra.yaml` (the config-group choices), `summary.json` (final metrics and how
the run ended, written when it ends) and `metrics.jsonl` (one JSON object per round; the
TensorBoard event files when it is missing).

Columns, so that no two kinds of column can share a name:

- settings: the override keys exactly as typed on the command line (`trainer.lr`, `strategy`,
  `rounds`), plus `seed` always. A run without an override for a key shows the value its own
  config held (the group's choice for a group). Values are typed as Hydra parses them (`0.05` is
  a float, `true` a bool, `null` None); lists and dicts are kept as their text.
- metrics: the metric names as logged (`eval/accuracy`, `train/loss`, ...; they always hold a `/`).
  In `load_runs` they are the final values (`summary.json`'s "metrics": the last logged value of
  each), NaN for a run that never finished.
- what fedtorch adds: `run/...` (`run/name`, `run/path`, `run/status`, `run/rounds`,
  `run/wall_seconds`, `run/diverged_round`, `run/stop_reason`) and, in `load_curves`, `round`.
  A setting or metric with one of these names is refused with an error, never overwritten.

`run/status` is one of:

- `completed`: `summary.json` is there and the run trained all its rounds (or stopped for another
  reason a callback gave, such as early stopping);
- `budget-stopped`: it stopped early because its privacy budget was spent (`stop_reason`
  "privacy_budget"); a finished run, like `completed`;
- `diverged`: a non-finite loss or model stopped it (`summary.json` says `diverged: true`);
- `failed`: no `summary.json`: the run crashed, was killed, or is still running.

The reading functions need only the standard library and PyYAML; the DataFrames need pandas
(`pip install -e ".[report]"`).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    import pandas as pd

SEED_KEY = "seed"
COMPLETED, BUDGET_STOPPED, DIVERGED, FAILED = "completed", "budget-stopped", "diverged", "failed"
#: The statuses of runs that ended normally, whose final metrics are results.
FINISHED = (COMPLETED, BUDGET_STOPPED)
#: The columns fedtorch adds to the settings and metrics (see the module docstring).
RUN_COLUMNS = (
    "run/name",
    "run/path",
    "run/status",
    "run/rounds",
    "run/wall_seconds",
    "run/diverged_round",
    "run/stop_reason",
)
ROUND = "round"


# -- one run folder ---------------------------------------------------------------------------------
@dataclass
class Run:
    """One run folder, as read from disk.

    `overrides` holds the override text as typed (`{"trainer.lr": "0.05"}`); `summary` is None
    when the folder has no `summary.json`; `history` holds one dict per logged round
    (`{"round": r, metric: value, ...}`); `name` is the folder relative to the path it was
    found under (the folder's own name when that path is the run itself).
    """

    path: Path
    name: str = ""
    overrides: dict[str, str] = field(default_factory=dict)
    choices: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def status(self) -> str:
        """completed, budget-stopped, diverged or failed (see the module docstring)."""
        if self.summary is None:
            return FAILED
        if self.summary.get("diverged"):
            return DIVERGED
        if self.summary.get("stop_reason") == "privacy_budget":
            return BUDGET_STOPPED
        return COMPLETED

    @property
    def final(self) -> dict[str, float]:
        """The final metrics (`summary.json`'s "metrics"); empty for a run that never finished."""
        return dict(self.summary.get("metrics", {})) if self.summary else {}

    @property
    def rounds_done(self) -> int:
        """Rounds trained: the summary's count, else the last logged round (0 when nothing was logged)."""
        if self.summary is not None and "rounds" in self.summary:
            return int(self.summary["rounds"])
        return int(self.history[-1][ROUND]) if self.history else 0

    def setting(self, key: str) -> Any:
        """The run's value for `key`: its override (typed), else its group choice, else its config value.

        Returns `MISSING` when the run has no such key at all (another strategy's option, say).
        """
        if key in self.overrides:
            return parse_value(self.overrides[key])
        if key in self.choices:
            return self.choices[key]
        node: Any = self.config
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                return MISSING
            node = node[part]
        return json.dumps(node) if isinstance(node, (dict, list)) else node


class _Missing:
    """The value of a setting a run does not have (shown as an empty cell; NaN in a DataFrame)."""

    def __repr__(self) -> str:
        return "MISSING"

    def __bool__(self) -> bool:
        return False


MISSING = _Missing()


def _natural_key(path: Path) -> list[Any]:
    """Sort job folders 0, 1, 2, ..., 10 rather than 0, 1, 10, 2."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(path))]


def is_run_dir(path: Path) -> bool:
    """Whether `path` holds a run: a `.hydra/` folder, a `summary.json` or a `metrics.jsonl`."""
    return any((path / name).exists() for name in (".hydra", "summary.json", "metrics.jsonl"))


def find_runs(paths: str | Path | Iterable[str | Path]) -> list[Path]:
    """Every run folder at or below `paths` (hidden folders such as `.submitit/` skipped), sorted."""
    found: list[Path] = []
    for root in _as_paths(paths):
        if not root.exists():
            raise FileNotFoundError(f"no such folder: {root}")
        stack = [root]
        while stack:
            folder = stack.pop()
            if is_run_dir(folder):
                found.append(folder)
                continue  # a run's own subfolders (checkpoints, mlruns, wandb, ...) are not runs
            stack.extend(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    return sorted(set(found), key=_natural_key)


def _as_paths(paths: str | Path | Iterable[str | Path]) -> list[Path]:
    if isinstance(paths, (str, Path)):
        return [Path(paths)]
    return [Path(p) for p in paths]


def parse_overrides(lines: Iterable[str]) -> dict[str, str]:
    """Hydra command-line overrides -> {key: value text}: `+k=v`, `++k=v` -> k: v; `~k` -> k: '~deleted'."""
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


def parse_value(text: str) -> Any:
    """An override's value text typed as Hydra types it: null, true/false, int, float, else the string.

    `0.05` -> 0.05, `1e-3` -> 0.001 (PyYAML would keep it a string), `10` -> 10, `True` -> True,
    `'abc'` -> abc, `[32,32]` -> "[32,32]" (lists and dicts stay text: a table cell must be hashable).
    """
    text = str(text).strip()
    low = text.lower()
    if low == "null":
        return None
    if low in ("true", "false"):
        return low == "true"
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)  # also inf, -inf, nan, 1e+30
    except ValueError:
        pass
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    return text


def read_history(run_dir: str | Path) -> list[dict[str, Any]]:
    """Per-round metrics: `metrics.jsonl` when present, else the TensorBoard scalars (step = round)."""
    run_dir = Path(run_dir)
    jsonl = run_dir / "metrics.jsonl"
    if jsonl.exists():
        rows = []
        for line in jsonl.read_text().splitlines():
            try:
                rows.append(json.loads(line))  # NaN and Infinity (a diverged round) parse as floats
            except json.JSONDecodeError:
                break  # a torn last line from a killed run
        return rows
    if not any(run_dir.glob("events.out.tfevents.*")):
        return []
    return _tensorboard_history(run_dir)


def _tensorboard_history(run_dir: Path) -> list[dict[str, Any]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    accumulator.Reload()
    by_round: dict[int, dict[str, Any]] = {}
    for tag in accumulator.Tags().get("scalars", []):
        if tag.startswith(("hparam/", "partition/")):
            continue  # final values for the HParams dashboard and partition statistics: not per-round series
        for event in accumulator.Scalars(tag):
            by_round.setdefault(int(event.step), {ROUND: int(event.step)})[tag] = float(event.value)
    return [by_round[r] for r in sorted(by_round)]


def read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text()) if path.exists() else None
    except yaml.YAMLError:
        return None


def load_run(run_dir: str | Path, name: str | None = None) -> Run:
    """Read one run folder (any file may be missing: a failed run still loads)."""
    run_dir = Path(run_dir)
    hydra_dir = run_dir / ".hydra"
    overrides = parse_overrides(read_yaml(hydra_dir / "overrides.yaml") or [])
    # Objects a notebook passed in place of a config group (fedtorch.run(model=...)): the group's
    # setting is the object's type, so runs with different objects are told apart.
    for group, described in (read_yaml(hydra_dir / "components.yaml") or {}).items():
        overrides[group] = str(described)
    hydra_cfg = read_yaml(hydra_dir / "hydra.yaml") or {}
    choices = ((hydra_cfg.get("hydra") or {}).get("runtime") or {}).get("choices") or {}
    choices = {k: v for k, v in choices.items() if not k.startswith("hydra/")}
    config = read_yaml(hydra_dir / "config.yaml") or {}
    summary = None
    if (run_dir / "summary.json").exists():
        try:
            summary = json.loads((run_dir / "summary.json").read_text())
        except json.JSONDecodeError:
            summary = None  # a half-written summary (writes are atomic, so only if edited by hand)
    return Run(run_dir, name or run_dir.name, overrides, choices, config, summary, read_history(run_dir))


def read_runs(paths: str | Path | Iterable[str | Path]) -> list[Run]:
    """Every run at or below `paths`, read (see `find_runs` and `load_run`), named relative to its root."""
    runs, seen = [], set()
    for root in _as_paths(paths):
        for folder in find_runs([root]):
            if folder.resolve() in seen:
                continue  # found under two of the paths
            seen.add(folder.resolve())
            name = folder.name if folder == root else folder.relative_to(root).as_posix()
            runs.append(load_run(folder, name))
    return runs


# -- DataFrames -------------------------------------------------------------------------------------
def require_pandas():
    try:
        import pandas as pd
    except ImportError:
        raise ImportError("fedtorch.results needs pandas for its DataFrames: pip install -e '.[report]'") from None
    return pd


def override_keys(runs: Sequence[Run]) -> list[str]:
    """Every override key of `runs`, in first-seen order, with `seed` always among them."""
    keys: list[str] = []
    for run in runs:
        keys.extend(k for k in run.overrides if k not in keys)
    return keys if SEED_KEY in keys else [*keys, SEED_KEY]


def settings(run: Run, keys: Sequence[str]) -> dict[str, Any]:
    """{key: the run's value} for `keys` (None where the run has no such key: NaN in a DataFrame)."""
    values = {key: run.setting(key) for key in keys}
    return {key: (None if value is MISSING else value) for key, value in values.items()}


def _check_names(keys: Sequence[str], metrics: Iterable[str], reserved: Sequence[str]) -> None:
    """Refuse a setting or metric named like another column, rather than overwrite one with the other."""
    taken = set(reserved)
    for name in [*keys, *metrics]:
        if name in taken:
            raise ValueError(
                f"fedtorch.results: the name {name!r} is both a setting or metric and a column of its own; "
                f"rename it (reserved: {', '.join(reserved)})"
            )
        taken.add(name)


def _run_row(run: Run) -> dict[str, Any]:
    summary = run.summary or {}
    return {
        "run/name": run.name,
        "run/path": str(run.path),
        "run/status": run.status,
        "run/rounds": run.rounds_done,
        "run/wall_seconds": summary.get("wall_seconds", math.nan),
        "run/diverged_round": summary.get("diverged_round"),
        "run/stop_reason": summary.get("stop_reason"),
    }


def runs_frame(runs: Sequence[Run], keys: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per run: `run/name`, `run/path`, the settings `keys` (default: every override key and
    `seed`), `run/status`, `run/rounds`, `run/wall_seconds`, `run/diverged_round`, `run/stop_reason`,
    then the final metrics (NaN where a run did not log one, or never finished)."""
    pd = require_pandas()
    keys = list(keys) if keys is not None else override_keys(runs)
    metrics = list(dict.fromkeys(m for run in runs for m in run.final))
    _check_names(keys, metrics, RUN_COLUMNS)
    rows = []
    for run in runs:
        info = _run_row(run)
        row = {"run/name": info.pop("run/name"), "run/path": info.pop("run/path"), **settings(run, keys), **info}
        final = run.final
        row.update({m: final.get(m, math.nan) for m in metrics})
        rows.append(row)
    columns = ["run/name", "run/path", *keys, *RUN_COLUMNS[2:], *metrics]
    return pd.DataFrame(rows, columns=columns)


def curves_frame(runs: Sequence[Run], keys: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per (run, logged round): `run/name`, `run/path`, the settings `keys`, `run/status`,
    `round`, then the metrics of that round (NaN where not logged that round, e.g. between
    evaluations)."""
    pd = require_pandas()
    keys = list(keys) if keys is not None else override_keys(runs)
    metrics = list(dict.fromkeys(k for run in runs for row in run.history for k in row if k != ROUND))
    _check_names(keys, metrics, (*RUN_COLUMNS, ROUND))
    rows = []
    for run in runs:
        fixed = {"run/name": run.name, "run/path": str(run.path), **settings(run, keys), "run/status": run.status}
        for logged in run.history:
            rows.append({**fixed, ROUND: int(logged[ROUND]), **{m: logged.get(m, math.nan) for m in metrics}})
    columns = ["run/name", "run/path", *keys, "run/status", ROUND, *metrics]
    return pd.DataFrame(rows, columns=columns)


def load_runs(paths: str | Path | Iterable[str | Path], keys: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per run at or below `paths` (a run folder, a sweep, or folders holding them); see `runs_frame`."""
    return runs_frame(read_runs(paths), keys)


def load_curves(paths: str | Path | Iterable[str | Path], keys: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per (run, round) for the runs at or below `paths`; see `curves_frame`."""
    return curves_frame(read_runs(paths), keys)


# -- per-run statistics over the curves --------------------------------------------------------------
# Words in a metric's last name component that say which way it improves; the lower-is-better
# words win (an `accuracy_std` across clients is better small).
_LOWER_IS_BETTER = ("loss", "error", "perplexity", "mse", "mae", "std", "variance", "epsilon", "bytes", "seconds")
_HIGHER_IS_BETTER = ("acc", "auc", "f1", "precision", "recall", "score", "reward", "r2")


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


def best(curves: pd.DataFrame, metric: str, by: str = "run/path") -> pd.Series:
    """Per run (`by`), the best value `metric` reached in any round (max for accuracy-like names,
    min otherwise), over finite values only; runs that never logged a finite value are absent."""
    values = curves[[by, metric]].copy()
    values[metric] = finite_or_nan(values[metric])
    grouped = values.dropna(subset=[metric]).groupby(by, sort=False)[metric]
    return grouped.max() if higher_is_better(metric) else grouped.min()


def rounds_to(curves: pd.DataFrame, metric: str, target: float, by: str = "run/path") -> pd.Series:
    """Per run (`by`), the first round at which `metric` reached `target` (>= for accuracy-like names,
    <= otherwise); runs that never reached it are absent."""
    values = finite_or_nan(curves[metric])
    reached = values >= target if higher_is_better(metric) else values <= target
    return curves.loc[reached].groupby(by, sort=False)[ROUND].min()


def finite_or_nan(series: pd.Series) -> pd.Series:
    """`series` as floats with inf (a diverged round) replaced by NaN."""
    pd = require_pandas()
    numbers = pd.to_numeric(series, errors="coerce").astype(float)
    return numbers.where(numbers.abs() != math.inf)


__all__ = [
    "BUDGET_STOPPED",
    "COMPLETED",
    "DIVERGED",
    "FAILED",
    "FINISHED",
    "MISSING",
    "Run",
    "best",
    "curves_frame",
    "find_runs",
    "higher_is_better",
    "load_curves",
    "load_run",
    "load_runs",
    "metric_direction",
    "parse_overrides",
    "parse_value",
    "read_history",
    "read_runs",
    "rounds_to",
    "runs_frame",
]
