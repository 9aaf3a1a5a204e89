"""The value a Hydra sweeper (Optuna) optimizes, and the check of its direction.

(Placeholder while the data-correctness work lands: issue 18 rewrites this module.)
"""

from __future__ import annotations

import math
from typing import Any

from omegaconf import OmegaConf

from fedtorch.errors import OptionError
from fedtorch.report import metric_direction


def _direction_name(direction: Any) -> str | None:
    if direction is None or isinstance(direction, (list, tuple)) or OmegaConf.is_list(direction):
        return None
    return str(getattr(direction, "name", direction))


def objective_value(summary: dict, objective: str | None, direction: Any = None) -> float | None:
    """The run's final `objective` metric; a diverged run scores the worst value for the sweeper's
    declared direction (+inf when minimizing, -inf when maximizing)."""
    if not objective or summary.get("dry_run"):
        return None
    value = summary.get("metrics", {}).get(objective)
    failed = summary.get("diverged") or (value is not None and not math.isfinite(value))
    name = _direction_name(direction)
    if failed and name is not None:
        return -math.inf if name == "maximize" else math.inf
    if value is None:
        return None
    return float(value) if not failed else math.nan


def check_sweep_direction(objective: str | None, direction: object) -> None:
    """Refuse a sweeper direction that contradicts the objective's name (maximizing a loss)."""
    name = _direction_name(direction)
    if not objective or name is None:
        return
    expected = metric_direction(objective)
    if expected is not None and name != expected:
        raise OptionError("hydra.sweeper.direction", name, f"objective={objective} should be {expected}d")
