"""Command-line entry point: Hydra composes the config, this module turns it into objects.

This is the edge of the system: the only module (with `fedtorch.experiment`'s builders) that
knows about Hydra and OmegaConf. Everything it builds is a plain Python object.

    python -m fedtorch                                    # the default experiment
    python -m fedtorch strategy=fedavg trainer.lr=0.05    # any value overridden
    python -m fedtorch -m trainer.lr=0.01,0.1 seed=0,1    # a multirun sweep
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from fedtorch.checkpoint import CheckpointError
from fedtorch.cli_help import register_resolver
from fedtorch.experiment import ConfigError, run_experiment
from fedtorch.report import higher_is_better, metric_direction

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"

#: Whether the user asked for tracebacks (HYDRA_FULL_ERROR=1). `main` sets HYDRA_FULL_ERROR itself and
#: keeps the user's value in _USER_FULL_ERROR, which launcher workers (joblib, submitit) inherit.
_USER_FULL_ERROR = "FEDTORCH_USER_HYDRA_FULL_ERROR"
_SHOW_TRACEBACK = os.environ.get(_USER_FULL_ERROR, os.environ.get("HYDRA_FULL_ERROR", "")) == "1"


def fail(message: str) -> None:
    """One clear line on stderr, no traceback, exit status 2 (HYDRA_FULL_ERROR=1 shows the traceback)."""
    print(f"fedtorch: error: {message}", file=sys.stderr)
    sys.exit(2)


def objective_value(summary: dict, objective: str | None) -> float | None:
    """The value a Hydra sweeper (Optuna) optimizes: the run's final `objective` metric.

    A diverged run, or a non-finite value, scores the worst value for the metric's direction
    (-inf when higher is better, else +inf): Optuna then records a bad trial and steers away,
    where a NaN would fail the trial and, with Hydra's default max_failure_rate, the whole study.
    """
    if not objective:
        return None
    value = summary["metrics"].get(objective)
    if value is None:
        return None
    if summary.get("diverged") or not math.isfinite(value):
        return -math.inf if higher_is_better(objective) else math.inf
    return float(value)


def check_sweep_direction(objective: str | None, direction: object) -> None:
    """Refuse a sweeper direction that contradicts the objective's name (maximizing a loss)."""
    if not objective or direction is None or isinstance(direction, (list, tuple)) or OmegaConf.is_list(direction):
        return
    name = getattr(direction, "name", str(direction))
    expected = metric_direction(objective)
    if expected is not None and name != expected:
        raise ConfigError("hydra.sweeper.direction", name, f"objective={objective} should be {expected}d")


def export_submitit_distributed_env() -> None:
    """Give the processes of a multi-task submitit job (SLURM tasks_per_node > 1) torchrun's environment.

    Such a job is one distributed run whose processes SLURM (not torchrun) started: export RANK,
    WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR and MASTER_PORT from submitit's job
    environment, so torch.distributed's env:// initialization works as under torchrun.
    """
    if "SUBMITIT_EXECUTOR" not in os.environ or "RANK" in os.environ:
        return
    try:
        from submitit import JobEnvironment
        from submitit.helpers import TorchDistributedEnvironment
    except ImportError:
        return
    if JobEnvironment().num_tasks > 1:
        TorchDistributedEnvironment().export(set_cuda_visible_devices=False)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def _hydra_main(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig

    hydra_cfg = HydraConfig.get()
    output_dir = Path(hydra_cfg.runtime.output_dir)
    export_submitit_distributed_env()
    direction = OmegaConf.select(hydra_cfg, "sweeper.direction")  # set by an optimizing sweeper (Optuna)
    try:
        check_sweep_direction(cfg.get("objective"), direction)
        choices = {k: v for k, v in hydra_cfg.runtime.choices.items() if not k.startswith("hydra/")}
        summary = run_experiment(cfg, output_dir, overrides=list(hydra_cfg.overrides.task), choices=choices)
        value = objective_value(summary, cfg.get("objective"))
        if value is None and direction is not None:
            logged = ", ".join(sorted(summary["metrics"]))
            raise ConfigError("objective", cfg.get("objective"), f"the sweeper needs a metric the run logged: {logged}")
    except (ConfigError, CheckpointError) as error:
        # Raised inside the job, so it is reported here: Hydra would add a line of its own.
        if _SHOW_TRACEBACK:
            raise
        fail(str(error))
    return value


def main() -> None:
    """Console script `fedtorch` and `python -m fedtorch`."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from fedtorch.validation import describe_hydra_error

    global _SHOW_TRACEBACK
    register_resolver(CONF_DIR)  # the option list of --help (conf/hydra/help/fedtorch.yaml)
    previous = os.environ.get("HYDRA_FULL_ERROR")
    _SHOW_TRACEBACK = previous == "1"
    os.environ[_USER_FULL_ERROR] = previous or ""
    # With HYDRA_FULL_ERROR=1 Hydra re-raises the errors of config composition (an unknown group
    # option, an unknown key, an override that does not parse) instead of printing them over
    # several lines, so that they can be reported here as one line.
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        _hydra_main()
    except (HydraException, OmegaConfBaseException, ConfigError, CheckpointError) as error:
        if _SHOW_TRACEBACK:
            raise
        hydra_error = isinstance(error, (HydraException, OmegaConfBaseException))
        fail(describe_hydra_error(error, sys.argv[1:]) if hydra_error else str(error))
    finally:
        os.environ.pop(_USER_FULL_ERROR, None)
        if previous is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = previous


if __name__ == "__main__":
    main()
