"""fedtorch from Python: a notebook or a script runs exactly what the command line runs.

    import fedtorch

    summary = fedtorch.run(["strategy=fedprox", "trainer.lr=0.05", "rounds=20"])
    summary["metrics"]["eval/accuracy"], summary["output_dir"]

`run` composes the packaged `conf/` with Hydra's compose API and the same overrides as
`python -m fedtorch ...`, then runs it as the command line's single run does: the same validation
(a bad value raises `ValueError` with the one line the CLI would print), the same run folder
(`outputs/<date>/<time>/`, or `output_dir`), with `.hydra/`, TensorBoard events, `metrics.jsonl`
and `summary.json`, so `fedtorch.results` and `fedtorch.report` read it like any other run. It
returns the run's summary (what `summary.json` holds).

Your own objects in place of a config group: pass them by the group's name,

    fedtorch.run(["rounds=20"], model=MyNet(), dataset=my_splits, strategy=FedAvg(server_lr=0.5))

- `model`: an `nn.Module` for the dataset's inputs and classes (it replaces `model=...`);
- `dataset`: a `fedtorch.data.base.DatasetSplits` (train and test tensors, `num_classes`, optional
  natural client ids; it replaces `dataset=...` and is partitioned by `partition=...` as usual);
- `strategy`: a `fedtorch.strategies` object such as `FedAvg(server_lr=0.5)` (replaces `strategy=...`);
- likewise `sampler`, `trainer`, `backend`, `partition` and the other groups.

The overrides still configure everything else. An object's type is recorded in the run folder
(`.hydra/components.yaml`), so `fedtorch.results` shows it in that group's column. Objects are
handed to `fedtorch.experiment.run_experiment(..., components={...})`, the assembly the command
line uses.

A sweep from Python is a loop: give each run its own `output_dir` under one folder and load the
folder with `fedtorch.results.load_runs` (see `experiments/notebooks/sweep.ipynb`).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
#: The config groups an object cannot replace: presets and switches, not components.
NOT_COMPONENTS = ("debug", "experiment", "hparams_search", "hydra", "logging")


def component_groups(conf_dir: Path = CONF_DIR) -> list[str]:
    """The config groups an object may replace (`model`, `dataset`, `strategy`, ...)."""
    return sorted(p.name for p in conf_dir.iterdir() if p.is_dir() and p.name not in NOT_COMPONENTS)


def accepts_components() -> bool:
    """Whether this fedtorch's assembly (`run_experiment`) takes objects in place of config groups."""
    from fedtorch.experiment import run_experiment

    return "components" in inspect.signature(run_experiment).parameters


def describe(obj: Any) -> str:
    """How an object shows in the run folder and in `fedtorch.results`: `<module.Class object>`."""
    kind = type(obj)
    return f"<{kind.__module__}.{kind.__qualname__} object>"


def run(overrides: Sequence[str] = (), *, output_dir: str | Path | None = None, **objects: Any) -> dict[str, Any]:
    """Run one experiment, as `python -m fedtorch OVERRIDES` would; returns its summary.

    Args:
        overrides: command-line overrides, e.g. `["strategy=fedprox", "trainer.lr=0.05", "debug=smoke"]`.
        output_dir: the run folder (default: the CLI's `outputs/<date>/<time>`, relative to the
            working directory). Same as the override `hydra.run.dir=...`.
        **objects: objects in place of config groups, by group name (`model=`, `dataset=`,
            `strategy=`, ...; see the module docstring).

    Raises:
        ValueError: a bad override or config value (the message is the CLI's one line).
        TypeError: an object for a name that is no replaceable config group.
        NotImplementedError: objects were given but this fedtorch's `run_experiment` does not
            take them yet.
    """
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from fedtorch.cli import runtime_of_hydra
    from fedtorch.cli_help import register_resolver
    from fedtorch.experiment import run_experiment
    from fedtorch.validation import describe_hydra_error

    groups = component_groups()
    unknown = sorted(set(objects) - set(groups))
    if unknown:
        allowed = ", ".join(groups)
        raise TypeError(f"fedtorch.run() got objects for {', '.join(unknown)}: pass objects only for {allowed}")
    if objects and not accepts_components():
        raise NotImplementedError(
            f"fedtorch.run({', '.join(f'{k}=...' for k in objects)}): this fedtorch's "
            "fedtorch.experiment.run_experiment does not take objects yet (components=...); "
            "use the config groups (overrides) for now"
        )
    overrides = [str(o) for o in overrides]
    if output_dir is not None:
        overrides.append(f"hydra.run.dir='{Path(output_dir).as_posix()}'")
    register_resolver(CONF_DIR)  # the help template's list, so the whole Hydra config resolves

    summaries: list[dict[str, Any]] = []
    started: list[bool] = []  # whether composition succeeded and the task ran

    def task(cfg: Any) -> None:
        """The command line's single run (`fedtorch.cli`), returning the summary instead of exiting."""
        started.append(True)
        runtime = runtime_of_hydra()  # the CLI's own view of the invocation (provenance, resume checks)
        run_dir = runtime.output_dir
        extra: dict[str, Any] = {}
        if objects:
            (run_dir / ".hydra").mkdir(parents=True, exist_ok=True)
            described = {group: describe(obj) for group, obj in objects.items()}
            (run_dir / ".hydra" / "components.yaml").write_text(yaml.safe_dump(described))
            extra["components"] = dict(objects)
        summaries.append(run_experiment(cfg, runtime, **extra))

    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), job_name="fedtorch", version_base="1.3"):
            # The CLI's single-run path: the run folder, .hydra/, Hydra's logging, then the task.
            GlobalHydra.instance().hydra.run(config_name="config", task_function=task, overrides=overrides)
    except (HydraException, OmegaConfBaseException) as error:
        if started:
            raise  # from inside the run (a component's constructor, say): keep it as it is
        raise ValueError(describe_hydra_error(error, overrides)) from error  # composing: a bad override
    return summaries[0]
