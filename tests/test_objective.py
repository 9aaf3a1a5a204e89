"""The sweeper's objective: diverged trials score the worst value for the sweeper's direction.

The end-to-end tests run a real Optuna study (`hparams_search=fedavg_optuna`) as a subprocess, in
which one learning rate (10.0) diverges before the first evaluation; they need the `sweep` extra.
"""

from __future__ import annotations

import enum
import json
import math
from pathlib import Path

import pytest
import yaml

from fedtorch.objective import check_sweep_direction, direction_name, objective_value, worst_value
from fedtorch.validation import ConfigError
from tests.conftest import run_cli

OK = {"metrics": {"eval/accuracy": 0.75, "eval/loss": 0.5, "attack/backdoor_success": 0.2}, "diverged": False}
# Diverged at round 3 with eval_every=5: the objective was never logged. Or diverged after it was.
DIVERGED_EARLY = {"metrics": {"train/loss": math.nan, "server/update_norm": math.inf}, "diverged": True}
DIVERGED_LATE = {
    "metrics": {"eval/accuracy": 0.6, "eval/loss": math.nan, "attack/backdoor_success": 0.9},
    "diverged": True,
}


class Direction(enum.Enum):  # what the Optuna plugin's structured config gives
    minimize = 1
    maximize = 2


def test_finished_runs_score_their_metric() -> None:
    assert objective_value(OK, "eval/accuracy", "maximize") == 0.75
    assert objective_value(OK, "eval/loss", "minimize") == 0.5
    assert objective_value(OK, "eval/accuracy", Direction.maximize) == 0.75
    assert objective_value(OK, "eval/accuracy", ["maximize"]) == 0.75
    assert objective_value(OK, None, "maximize") is None  # nothing to optimize
    assert objective_value(OK, "eval/accuracy", None) is None  # no optimizing sweeper
    assert objective_value({**OK, "dry_run": True}, "eval/accuracy", "maximize") is None  # nothing trained


@pytest.mark.parametrize("direction", ["minimize", "maximize", Direction.minimize, Direction.maximize])
@pytest.mark.parametrize("objective", ["eval/accuracy", "eval/loss", "attack/backdoor_success", "server/update_norm"])
@pytest.mark.parametrize("summary", [DIVERGED_EARLY, DIVERGED_LATE], ids=["before-first-eval", "after"])
def test_a_diverged_run_scores_worst_for_the_declared_direction(summary: dict, objective: str, direction) -> None:  # noqa: ANN001
    """Bugs 5 and 6: whatever the metric's name, logged or not, the worst value of the sweeper's direction."""
    minimize = direction in ("minimize", Direction.minimize)
    assert objective_value(summary, objective, direction) == (math.inf if minimize else -math.inf)


def test_a_non_finite_objective_scores_worst() -> None:
    nan = {"metrics": {"attack/backdoor_success": math.nan}, "diverged": False}
    assert objective_value(nan, "attack/backdoor_success", "maximize") == -math.inf
    assert objective_value(nan, "attack/backdoor_success", "minimize") == math.inf
    assert worst_value("minimize") == math.inf and worst_value(Direction.maximize) == -math.inf


def test_a_finished_run_without_its_objective_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"objective='eval/acc' is invalid: .*logged: attack/backdoor_success, eval"):
        objective_value(OK, "eval/acc", "maximize")


def test_directions() -> None:
    assert direction_name(None) is None and direction_name("Maximize") == "maximize"
    assert direction_name(Direction.minimize) == "minimize" and direction_name(("minimize",)) == "minimize"
    with pytest.raises(ConfigError, match="one direction"):
        direction_name(["minimize", "maximize"])
    with pytest.raises(ConfigError, match="minimize or maximize"):
        direction_name("sideways")


def test_sweep_direction_must_agree_with_the_objective() -> None:
    check_sweep_direction("eval/accuracy", "maximize")
    check_sweep_direction("eval/loss", Direction.minimize)
    check_sweep_direction("server/update_norm", "maximize")  # the name does not say: allowed
    check_sweep_direction("eval/loss", None)  # no sweeper direction (basic sweeper)
    check_sweep_direction("eval/loss", ["maximize", "minimize"])  # several: refused later, by objective_value
    with pytest.raises(ConfigError, match="objective=eval/loss should be minimized"):
        check_sweep_direction("eval/loss", "maximize")
    with pytest.raises(ConfigError, match="objective=eval/accuracy should be maximized"):
        check_sweep_direction("eval/accuracy", "minimize")


# -- a real Optuna study -----------------------------------------------------------------------------
# trainer.lr=10 diverges at round 3 of 6, before the first evaluation (eval_every=6); 0.05 trains.
STUDY = (
    "hparams_search=fedavg_optuna",
    "hydra.sweeper.n_trials=4",
    "rounds=6",
    "eval_every=6",
    "logging=quiet",
    "checkpoint_every=0",
    "model=mlp",
    "model.hidden=[32,32]",
    "trainer.lr=choice(10.0,0.05)",
)


def _study(tmp_path: Path, *overrides: str) -> tuple[list[dict], dict, object]:
    """Run the study with sqlite storage; return the jobs' summaries, optimization_results.yaml, the trials."""
    optuna = pytest.importorskip("optuna")
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    sweep_dir = tmp_path / "sweep"
    result = run_cli(*STUDY, *overrides, f"hydra.sweep.dir={sweep_dir}", f"hydra.sweeper.storage={storage}")
    assert result.returncode == 0, result.stderr[-3000:]
    summaries = [json.loads((sweep_dir / str(k) / "summary.json").read_text()) for k in range(4)]
    best = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    trials = optuna.load_study(study_name="fedavg_lr_epochs", storage=storage).trials
    return summaries, best, trials


def _check_study(summaries: list[dict], best: dict, trials: list, objective: str) -> None:
    diverged = [s["diverged"] for s in summaries]
    assert any(diverged) and not all(diverged), "the study should hold a diverged and a finished trial"
    assert [t.state.name for t in trials] == ["COMPLETE"] * 4, "a trial did not complete: the study was cut short"
    for summary, trial in zip(summaries, trials, strict=True):
        expected = -math.inf if summary["diverged"] else summary["metrics"][objective]
        assert trial.value == expected
    finite = [s["metrics"][objective] for s in summaries if not s["diverged"]]
    assert best["best_value"] == max(finite) and best["best_params"]["trainer.lr"] == 0.05


def test_a_diverging_trial_does_not_end_the_study(tmp_path: Path) -> None:
    """Bug 5: the lr=10 trial never logs eval/accuracy; it scores -inf and the study runs its 4 trials."""
    summaries, best, trials = _study(tmp_path)
    assert any("eval/accuracy" not in s["metrics"] for s in summaries if s["diverged"])
    _check_study(summaries, best, trials, "eval/accuracy")


def test_a_diverged_trial_never_becomes_best(tmp_path: Path) -> None:
    """Bug 6: maximizing a metric whose name says nothing; the diverged trial scored +inf and won before."""
    summaries, best, trials = _study(tmp_path, "objective=server/update_norm")
    _check_study(summaries, best, trials, "server/update_norm")
