"""What a Hydra sweeper (Optuna) optimizes: one number per run, with diverged runs scored worst.

`python -m fedtorch hparams_search=fedavg_optuna` asks Optuna for trials; every trial is an ordinary
run whose Hydra task function returns `objective_value(summary, cfg.objective, direction)`, where
`direction` is the sweeper's own `hydra.sweeper.direction`. Two rules keep one bad trial from
spoiling the study:

* A run that diverged (or ended with a non-finite objective) scores the worst value for the
  direction the sweeper declared: +inf when it minimizes, -inf when it maximizes. The direction
  comes from the sweeper, never from the metric's name: a name says nothing reliable about an
  arbitrary metric (`attack/backdoor_success` is maximized by an attacker, minimized by a defender),
  and guessing it wrong makes the diverged trial the study's best.
* A diverged run is a result, not an error: its objective metric may never have been logged (it
  diverged before its first evaluation), and it still scores the worst value instead of stopping
  the app. An exit there ends the whole Optuna study, with the trial stuck as RUNNING in its storage.

Only a run that finished normally without ever logging its objective is a configuration error
(a misspelled `objective`): that one stops with the metrics the run did log.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from fedtorch.report import metric_direction
from fedtorch.validation import ConfigError

DIRECTIONS = ("minimize", "maximize")


def direction_name(direction: Any) -> str | None:
    """The sweeper's direction as 'minimize' / 'maximize', or None without an optimizing sweeper.

    Accepts what `OmegaConf.select(hydra_cfg, "sweeper.direction")` gives: None (basic sweeper, single
    run), a string, the Optuna plugin's `Direction` enum, or a one-element list of those. fedtorch
    optimizes one objective, so several directions (multi-objective) are refused.
    """
    if direction is None:
        return None
    if (isinstance(direction, Sequence) and not isinstance(direction, str)) or _is_list_config(direction):
        directions = list(direction)
        if len(directions) != 1:
            raise ConfigError(
                "hydra.sweeper.direction", [direction_name(d) for d in directions], "one direction (one objective)"
            )
        return direction_name(directions[0])
    name = getattr(direction, "name", direction)  # Direction.maximize -> "maximize"
    name = str(name).lower()
    if name not in DIRECTIONS:
        raise ConfigError("hydra.sweeper.direction", name, " or ".join(DIRECTIONS))
    return name


def _is_list_config(value: Any) -> bool:
    try:
        from omegaconf import OmegaConf
    except ImportError:  # pragma: no cover - omegaconf comes with hydra
        return False
    return OmegaConf.is_list(value)


def worst_value(direction: Any) -> float:
    """The worst score for `direction`: +inf when minimizing, -inf when maximizing."""
    name = direction_name(direction)
    if name is None:
        raise ValueError("worst_value needs the sweeper's direction ('minimize' or 'maximize')")
    return math.inf if name == "minimize" else -math.inf


def objective_value(summary: Mapping[str, Any], objective: str | None, direction: Any) -> float | None:
    """The value the sweeper optimizes for one run: its final `objective` metric.

    Args:
        summary: the run's summary (`summary.json`): `metrics` and `diverged`.
        objective: the metric to optimize (`cfg.objective`, e.g. "eval/accuracy"); None: nothing.
        direction: the sweeper's `hydra.sweeper.direction`; None when no sweeper optimizes.

    Returns None when there is nothing to optimize (no objective, no optimizing sweeper, a dry run); the
    worst value for `direction` when the run diverged or its objective is not finite (logged or
    not); else the metric as a float. Raises ConfigError on `objective` when a run that did not
    diverge never logged the metric: a misspelled objective, not a bad trial.
    """
    name = direction_name(direction)
    if not objective or name is None or summary.get("dry_run"):
        return None  # nothing to optimize, no optimizing sweeper, or a dry run (nothing trained)
    value = summary.get("metrics", {}).get(objective)
    if summary.get("diverged"):
        return worst_value(name)
    if value is None:
        logged = ", ".join(sorted(summary.get("metrics", {}))) or "none"
        raise ConfigError("objective", objective, f"the sweeper needs a metric the run logged: {logged}")
    value = float(value)
    return value if math.isfinite(value) else worst_value(name)


def check_sweep_direction(objective: str | None, direction: Any) -> None:
    """Refuse a sweeper direction that contradicts the objective's name (maximizing a loss).

    A guard against a typo only, used before the run: where the name does not say (most metrics),
    any direction is allowed, and the score of a diverged run never depends on the name.
    """
    if not objective or direction is None:
        return
    if isinstance(direction, (list, tuple)) or _is_list_config(direction):
        return  # several directions: `objective_value` refuses them with their own message
    name = direction_name(direction)
    expected = metric_direction(objective)
    if expected is not None and name != expected:
        raise ConfigError("hydra.sweeper.direction", name, f"objective={objective} should be {expected}d")
