"""The lab's experiment tracker, optional: MLflow (`logging=mlflow`) and Weights & Biases (`logging=wandb`).

Both log what TensorBoard gets: every per-round scalar (step = round), the flattened config as
parameters, the job's overrides as a tag, the final metrics, and the run folder's files as
artifacts (`metrics.jsonl`, `partition.json`, `.hydra/*.yaml`; the summary as `summary.json`).
A diverged run ends as failed. Both work offline by default:

- MLflow writes a local file store under the run folder (`<run>/mlruns`; `mlflow ui
  --backend-store-uri <run>/mlruns` shows it), or any `tracking_uri` (a server, a shared store
  for a whole sweep). Needs the `mlflow` extra (mlflow-skinny).
- W&B runs in offline mode, writing `<run>/wandb/offline-run-*` (`wandb sync <that folder>`
  uploads it later); `mode: online` logs live. Needs the `wandb` extra.

A resumed run continues the same tracker run: its id is part of the checkpoint (`state_dict`).
Only the round loop's `RunView` and the constructor's arguments are used.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fedtorch.callbacks.base import Callback, RunView
from fedtorch.callbacks.tensorboard import flatten

#: Run-folder files logged as artifacts at the end of the run, where present. (summary.json and
#: model.pt are written by the caller after the callbacks have finished: the summary is logged
#: from memory instead.)
ARTIFACTS = ("metrics.jsonl", "partition.json", ".hydra/config.yaml", ".hydra/overrides.yaml", ".hydra/hydra.yaml")


def _missing_extra(what: str, extra: str) -> ValueError:
    # A ValueError, so the command line reports it as one line on the `logging.<name>` key.
    return ValueError(f"{what} is not installed: pip install -e '.[{extra}]' (or choose another logging option)")


def overrides_text(overrides: Mapping[str, Any]) -> str:
    """The job's overrides as they would be typed: `trainer.lr=0.05 seed=1`."""
    return " ".join(f"{key}={value}" for key, value in overrides.items())


class MLflowTracker(Callback):
    """Log the run to MLflow.

    Args:
        run_dir: the run folder.
        run_config: the resolved config (nested dict), logged as flattened parameters.
        overrides: the job's command-line overrides ({key: value}), logged as the tag
            `fedtorch.overrides` and first among the parameters.
        tracking_uri: where to log; None: a file store in `<run_dir>/mlruns`.
        experiment: the MLflow experiment's name.
        run_name: the MLflow run's name; None: the run folder's name.
        artifacts: run-folder files to log at the end (those that exist).
    """

    def __init__(
        self,
        run_dir: str | Path,
        run_config: Mapping[str, Any] | None = None,
        overrides: Mapping[str, Any] | None = None,
        tracking_uri: str | None = None,
        experiment: str = "fedtorch",
        run_name: str | None = None,
        artifacts: Sequence[str] = ARTIFACTS,
    ) -> None:
        try:
            import mlflow  # noqa: F401
        except ImportError:
            raise _missing_extra("mlflow", "mlflow") from None
        self.run_dir = Path(run_dir)
        self.tracking_uri = tracking_uri or (self.run_dir / "mlruns").resolve().as_uri()
        self.experiment = experiment
        self.run_name = run_name or self.run_dir.name
        self.overrides = dict(overrides or {})
        self.params = {**self.overrides, **flatten(run_config or {})}  # overrides first, with the config's values
        self.artifacts = tuple(artifacts)
        self.run_id: str | None = None

    def on_run_start(self, run: RunView) -> None:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        if self.tracking_uri.startswith("file:"):
            # MLflow 3 keeps its file store in maintenance mode and refuses it unless told: the
            # local default needs no server or database, which is what an offline run wants.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(self.tracking_uri)
        if self.run_id is not None:  # resumed: continue the same MLflow run
            self.client.update_run(self.run_id, status="RUNNING")
            return
        found = self.client.get_experiment_by_name(self.experiment)
        experiment_id = found.experiment_id if found else self.client.create_experiment(self.experiment)
        tags = {"fedtorch.overrides": overrides_text(self.overrides), "fedtorch.run_dir": str(self.run_dir.resolve())}
        self.run_id = self.client.create_run(experiment_id, run_name=self.run_name, tags=tags).info.run_id
        params = [Param(key, str(value)) for key, value in self.params.items()]
        for start in range(0, len(params), 100):  # MLflow takes at most 100 parameters per batch
            self.client.log_batch(self.run_id, params=params[start : start + 100])

    def on_round_end(self, run: RunView, round_idx: int, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(key, float(value), now, round_idx) for key, value in metrics.items()]
        if batch:
            self.client.log_batch(self.run_id, metrics=batch)

    def on_run_end(self, run: RunView, summary: dict[str, Any]) -> None:
        self.client.log_dict(self.run_id, _jsonable(summary), "summary.json")
        for name in self.artifacts:
            path = self.run_dir / name
            if path.is_file():
                folder = str(Path(name).parent) if Path(name).parent != Path(".") else None
                self.client.log_artifact(self.run_id, str(path), artifact_path=folder)
        self.client.set_tag(self.run_id, "fedtorch.stop_reason", str(summary.get("stop_reason")))
        self.client.set_terminated(self.run_id, status="FAILED" if summary.get("diverged") else "FINISHED")

    def state_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.run_id = state.get("run_id")


class WandbTracker(Callback):
    """Log the run to Weights & Biases.

    Args:
        run_dir: the run folder (W&B writes `<run_dir>/wandb/`).
        run_config: the resolved config (nested dict), logged flattened as the W&B config.
        overrides: the job's command-line overrides, logged as the W&B run's notes and first in its config.
        project, entity, group, tags: as in `wandb.init`; the group, e.g. the sweep's name, puts
            a sweep's runs together in the W&B interface.
        mode: "offline" (default: nothing leaves the machine until `wandb sync`), "online" or "disabled".
        name: the W&B run's name; None: the run folder's name.
        artifacts: run-folder files to log at the end as one artifact (those that exist).
    """

    def __init__(
        self,
        run_dir: str | Path,
        run_config: Mapping[str, Any] | None = None,
        overrides: Mapping[str, Any] | None = None,
        project: str = "fedtorch",
        entity: str | None = None,
        group: str | None = None,
        tags: Sequence[str] = (),
        mode: str = "offline",
        name: str | None = None,
        artifacts: Sequence[str] = ARTIFACTS,
    ) -> None:
        try:
            import wandb  # noqa: F401
        except ImportError:
            raise _missing_extra("wandb", "wandb") from None
        if mode not in ("offline", "online", "disabled"):
            raise ValueError(f"mode={mode!r}: choose offline, online or disabled")
        self.run_dir = Path(run_dir)
        self.overrides = dict(overrides or {})
        self.config = {**self.overrides, **flatten(run_config or {})}
        self.project, self.entity, self.group, self.tags = project, entity, group, list(tags)
        self.mode = mode
        self.name = name or self.run_dir.name
        self.artifacts = tuple(artifacts)
        self.run_id: str | None = None

    def on_run_start(self, run: RunView) -> None:
        import wandb

        self.run_dir.mkdir(parents=True, exist_ok=True)
        # console="off": W&B would otherwise wrap stdout/stderr, under the progress bar and Hydra's log.
        settings = wandb.Settings(console="off", x_disable_stats=True, save_code=False, quiet=True)
        self.wandb_run = wandb.init(
            project=self.project,
            entity=self.entity,
            group=self.group,
            tags=self.tags,
            mode=self.mode,
            dir=str(self.run_dir),
            name=self.name,
            notes=overrides_text(self.overrides),
            config=self.config,
            id=self.run_id,
            resume="allow" if self.run_id else None,
            reinit="create_new",  # beside any W&B run of the user's (a notebook's), never in place of it
            settings=settings,
        )
        self.run_id = self.wandb_run.id

    def on_round_end(self, run: RunView, round_idx: int, metrics: dict[str, float]) -> None:
        self.wandb_run.log(dict(metrics), step=round_idx)

    def on_run_end(self, run: RunView, summary: dict[str, Any]) -> None:
        import wandb

        final = {k: v for k, v in summary.get("metrics", {}).items() if isinstance(v, (int, float))}
        self.wandb_run.summary.update({**final, "stop_reason": str(summary.get("stop_reason"))})
        artifact = wandb.Artifact(f"run-{self.run_id}", type="run-folder")
        for name in self.artifacts:
            if (self.run_dir / name).is_file():
                artifact.add_file(str(self.run_dir / name), name=name)
        with artifact.new_file("summary.json") as handle:
            json.dump(_jsonable(summary), handle, indent=2)
        self.wandb_run.log_artifact(artifact)
        self.wandb_run.finish(exit_code=1 if summary.get("diverged") else 0)

    def state_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.run_id = state.get("run_id")


def _jsonable(value: Any) -> Any:
    """`value` with non-finite floats as strings (JSON has no NaN) and other objects as text."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return str(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)
