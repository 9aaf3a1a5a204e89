"""Command-line entry point: Hydra composes the config, this module hands it to the experiment.

This is the edge of the system: the only module (with `fedtorch.experiment`'s builders) that
knows about Hydra and OmegaConf. What Hydra knows about the invocation (its output folder, the
overrides, the group choices, the sweep launcher) is read here and passed on as a plain
`fedtorch.experiment.Runtime`.

    python -m fedtorch                                    # the default experiment
    python -m fedtorch strategy=fedavg trainer.lr=0.05    # any value overridden
    python -m fedtorch -m trainer.lr=0.01,0.1 seed=0,1    # a multirun sweep
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from fedtorch.backends.distributed import launched_by_torchrun, shutdown
from fedtorch.checkpoint import CheckpointError, RunFolderLock
from fedtorch.cli_help import register_resolver
from fedtorch.experiment import ConfigError, Runtime, run_experiment
from fedtorch.objective import check_sweep_direction, objective_value

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"

#: Whether the user asked for tracebacks (HYDRA_FULL_ERROR=1). `main` sets HYDRA_FULL_ERROR itself and
#: keeps the user's value in _USER_FULL_ERROR, which launcher workers (joblib, submitit) inherit.
_USER_FULL_ERROR = "FEDTORCH_USER_HYDRA_FULL_ERROR"
_SHOW_TRACEBACK = os.environ.get(_USER_FULL_ERROR, os.environ.get("HYDRA_FULL_ERROR", "")) == "1"


def fail(message: str) -> None:
    """One clear line on stderr, no traceback, exit status 2 (HYDRA_FULL_ERROR=1 shows the traceback).

    Under torchrun every process refuses the same config; rank 0 alone prints, and the others wait
    a moment before exiting, so that torchrun, which stops the remaining processes as soon as one
    has failed, does not stop rank 0 before it has printed."""
    if os.environ.get("RANK", "0") == "0":
        print(f"fedtorch: error: {message}", file=sys.stderr, flush=True)
    else:
        time.sleep(2.0)
    sys.exit(2)


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


def runtime_of_hydra() -> Runtime:
    """This invocation as Hydra knows it: output folder, overrides, choices, the sweep launcher."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hydra_cfg = HydraConfig.get()
    launcher, batch = None, None
    if hydra_cfg.mode == RunMode.MULTIRUN:
        sweeper = hydra_cfg.sweeper
        found = sweeper.get("n_jobs") if "n_jobs" in sweeper else sweeper.get("max_batch_size")
        batch = found if isinstance(found, int) else None
        launcher = OmegaConf.to_container(hydra_cfg.launcher, resolve=False)
    overrides = tuple(hydra_cfg.overrides.task)
    return Runtime(
        output_dir=Path(hydra_cfg.runtime.output_dir),
        overrides=overrides,
        choices={k: v for k, v in hydra_cfg.runtime.choices.items() if not k.startswith("hydra/")},
        launcher=launcher,
        sweeper_batch=batch,
        # Inside a sweep the process's argv is the parent's sweep command: the job's own overrides.
        rerun=(sys.executable, "-m", "fedtorch", *overrides),
        on_run_dir=move_log,
    )


def move_log(to_dir: Path) -> None:
    """Point this job's log file at `to_dir` (a resumed run logs into its own folder)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, logging.FileHandler):
            target = to_dir / Path(handler.baseFilename).name
            replacement = logging.FileHandler(target, mode="a")
            replacement.setFormatter(handler.formatter)
            replacement.setLevel(handler.level)
            root.removeHandler(handler)
            handler.close()
            root.addHandler(replacement)


def remove_if_only_hydra(run_dir: Path) -> None:
    """Remove a run folder that holds only what Hydra wrote (`.hydra/`, the job's log) and our lock:
    a run refused at start, or a dry run, leaves nothing behind. Anything else keeps the folder."""
    if not run_dir.is_dir() or os.environ.get("RANK", "0") != "0":
        return
    if not all(e.name in (".hydra", ".lock") or (e.is_file() and e.suffix == ".log") for e in run_dir.iterdir()):
        return
    try:
        with RunFolderLock(run_dir):  # another process's run that has not written anything yet: keep it
            shutil.rmtree(run_dir, ignore_errors=True)
    except CheckpointError:
        return
    parent, cwd = run_dir.parent.resolve(), Path.cwd().resolve()
    while parent != cwd and parent.is_relative_to(cwd):
        try:
            parent.rmdir()  # only if empty: other runs' folders stay
        except OSError:
            break
        parent = parent.parent


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def _hydra_main(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig

    export_submitit_distributed_env()
    direction = OmegaConf.select(HydraConfig.get(), "sweeper.direction")  # set by an optimizing sweeper (Optuna)
    runtime = runtime_of_hydra()
    try:
        check_sweep_direction(cfg.get("objective"), direction)
        summary = run_experiment(cfg, runtime)
        value = objective_value(summary, cfg.get("objective"), direction)
    except (ConfigError, CheckpointError) as error:
        # Raised inside the job, so it is reported here: Hydra would add a line of its own.
        remove_if_only_hydra(runtime.output_dir)
        if _SHOW_TRACEBACK:
            raise
        fail(str(error))
    output = Path(summary.get("output_dir", runtime.output_dir))
    if summary.get("dry_run") or output != runtime.output_dir:
        # A dry run writes nothing; a run that resumed another folder wrote there: this folder holds
        # only what Hydra wrote.
        remove_if_only_hydra(runtime.output_dir)
    return value


def main() -> None:
    """Console script `fedtorch` and `python -m fedtorch`."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from fedtorch.validation import describe_hydra_error

    global _SHOW_TRACEBACK
    register_resolver(CONF_DIR)  # the help template lists the config groups' options
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
        if launched_by_torchrun():
            shutdown()  # every exit path: a process that exits with a live group can abort (SIGABRT)


if __name__ == "__main__":
    main()
