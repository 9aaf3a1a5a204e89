"""Build a simulation from a composed config and run it, writing the run folder.

Hydra stays here and in `fedtorch.cli`: objects are built with `hydra.utils.instantiate` from
their config group (`_target_` + options, runtime values such as the model's input shape passed
at the call site), then handed to the plain-Python `Simulation`.

A run folder holds: `.hydra/` (written by Hydra), TensorBoard event files, `metrics.jsonl`,
`summary.json`, `model.pt` (the final global `state_dict`; absent when the run diverged),
`partition.json` and `checkpoints/round_NNNNNN.pt` (see `fedtorch.checkpoint`: `resume=auto`
continues a folder's run from its latest checkpoint).
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import math
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from fedtorch.backends.distributed import (
    agree_on_output_dir,
    init_process_group,
    is_main_process,
    launched_by_torchrun,
)
from fedtorch.callbacks import Checkpoint, MetricsFile, ProgressBar, TensorBoard
from fedtorch.checkpoint import CheckpointError, ResumePlan, plan_resume, remove_temporaries
from fedtorch.data.base import DatasetSplits, FederatedDataset
from fedtorch.data.partitions import Natural, natural_partition, partition_stats
from fedtorch.io import atomic_torch_save, atomic_write_json
from fedtorch.provenance import collect as collect_provenance
from fedtorch.results import parse_overrides
from fedtorch.seeding import derive_seed, numpy_rng
from fedtorch.simulation import Simulation
from fedtorch.validation import (  # noqa: F401  (re-exported: validation lived here before)
    ConfigError,
    _require,
    data_error,
    instantiation_error,
    resolve_device,
    validate,
    validate_backend,
    validate_cohort,
    validate_federation,
)

log = logging.getLogger("fedtorch")


def available_cores() -> int:
    """CPU cores this process may use (its affinity mask where the OS has one, e.g. under SLURM)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def threads_per_run(
    requested: int | str, launcher: Mapping[str, Any] | None, cores: int, batch: int | None = None
) -> int | None:
    """Torch intra-op threads for one run, or None to keep torch's default.

    An integer is taken as given. `auto` shares the machine between the runs a launcher runs at
    once, so parallel jobs do not oversubscribe the cores (each would otherwise start one thread
    per core, and N jobs x all cores threads run slower than N jobs x cores/N): a submitit
    launcher's `cpus_per_task` when set, else cores // (jobs at once) under joblib, where the jobs
    at once are `n_jobs` (-1 means all cores, -2 all but one, as in joblib), capped by `batch`, the
    most jobs the sweeper hands the launcher at a time (Optuna's `n_jobs`). Outside a parallel
    sweep `auto` keeps torch's default, which honours OMP_NUM_THREADS (torchrun sets it to 1).
    """
    if requested != "auto":
        return int(requested)
    if not launcher:
        return None
    cpus = launcher.get("cpus_per_task")
    if isinstance(cpus, int) and cpus >= 1:
        return cpus
    n_jobs = launcher.get("n_jobs")
    if isinstance(n_jobs, int) and n_jobs != 0:
        jobs = n_jobs if n_jobs > 0 else max(1, cores + 1 + n_jobs)
        if batch is not None and batch >= 1:
            jobs = min(jobs, batch)
        if jobs > 1:
            return max(1, cores // jobs)
    return None


def _sweep_launcher() -> tuple[Mapping[str, Any] | None, int | None]:
    """(the Hydra launcher config, the sweeper's batch size) when this run is one job of a multirun."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None, None
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return None, None
    sweeper = hydra_cfg.sweeper
    batch = sweeper.get("n_jobs") if "n_jobs" in sweeper else sweeper.get("max_batch_size")
    return OmegaConf.to_container(hydra_cfg.launcher, resolve=False), batch if isinstance(batch, int) else None


def rerun_command() -> list[str]:
    """The command that reruns this job alone: `python -m fedtorch <its overrides>`.

    Inside a sweep the process's own argv is the parent's sweep command (or a joblib/submitit
    worker's), so the job's overrides come from Hydra; outside Hydra, the process's argv.
    """
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return [sys.executable, *sys.argv]
    return [sys.executable, "-m", "fedtorch", *HydraConfig.get().overrides.task]


def build_federation(cfg: DictConfig) -> tuple[DatasetSplits, FederatedDataset]:
    """Load the dataset and split it across clients with the configured partitioner."""
    data: DatasetSplits = instantiate(cfg.dataset)
    partitioner = instantiate(cfg.partition)
    parts = partitioner(data, numpy_rng(cfg.seed, "partition"))
    test_parts = None
    names = None
    if isinstance(partitioner, Natural):
        names = data.group_names
        if data.test_groups is not None:
            test_parts = natural_partition(data.test_groups, num_groups=len(parts))
    return data, FederatedDataset.from_partition(data, parts, test_parts, names)


def subsample_test_set(fed: FederatedDataset, max_samples: int, rng: np.random.Generator) -> FederatedDataset:
    """`fed` with a fixed random subset of at most `max_samples` of its central test samples (`eval_max_samples`).

    Evaluation then costs at most `max_samples` forward passes (smoke runs, quick looks at big test
    sets). The subset is drawn once from the seed, so every round is scored on the same samples; the
    clients' own test splits keep the samples of theirs that fall in it.
    """
    total = len(fed.test_y)
    if max_samples >= total:
        return fed
    keep = torch.from_numpy(np.sort(rng.choice(total, size=max_samples, replace=False)))
    client_test = None
    if fed.client_test_indices is not None:
        position = torch.full((total,), -1, dtype=torch.int64)  # old test index -> new one (-1: dropped)
        position[keep] = torch.arange(max_samples)
        client_test = [position[ix.cpu()][position[ix.cpu()] >= 0] for ix in fed.client_test_indices]
    keep = keep.to(fed.test_y.device)
    return dataclasses.replace(fed, test_x=fed.test_x[keep], test_y=fed.test_y[keep], client_test_indices=client_test)


def partition_record(fed: FederatedDataset) -> dict[str, Any]:
    """client -> number of samples (per label for classification), for `partition.json`."""
    counts = fed.label_counts() if fed.is_classification else None
    stats = partition_stats(counts if counts is not None else fed.client_sizes().reshape(-1, 1))
    record: dict[str, Any] = {"num_clients": fed.num_clients, "stats": stats, "clients": {}}
    for k, ix in enumerate(fed.client_indices):
        name = fed.client_names[k] if fed.client_names else str(k)
        entry: dict[str, Any] = {"num_samples": len(ix)}
        if counts is not None:
            entry["label_counts"] = counts[k].tolist()
        record["clients"][name] = entry
    return record


def _build(node: DictConfig, key: str, **kwargs: Any) -> Any:
    """`instantiate(node)`; a constructor's ValueError/TypeError becomes a one-line ConfigError on `key`."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as error:
        raise _build_error(key, error) from error


def _build_error(key: str, error: Exception) -> Exception:
    """The one-line ConfigError for a constructor's bad value, else the error itself (a bug keeps its traceback)."""
    if isinstance(error, InstantiationException):
        return instantiation_error(key, error) or error
    return error


def _runtime_kwargs(node: DictConfig, **candidates: Any) -> dict[str, Any]:
    """The runtime values (seed, num_clients, model, ...) that `node`'s `_target_` constructor takes."""
    from hydra.utils import get_class

    accepted = inspect.signature(get_class(node._target_)).parameters
    return {k: v for k, v in candidates.items() if k in accepted}


def build_pipeline(
    cfg: DictConfig, fed: FederatedDataset, model: Any, sampler: Any, strategy: Any, trainer: Any
) -> tuple[FederatedDataset, Any, list[Any], list[Any]]:
    """Update transforms from the `attack`, `compression`, `privacy` and `secagg` groups.

    Pipeline order, client side first: attack -> compression -> DP clipping -> secure aggregation
    -> DP noise and accounting -> byte meter (always on, so every run logs comm/bytes_*). Returns
    the federation to train on (data poisoning changes it), the trainer (local DP-SGD replaces it),
    the transforms and extra callbacks (the privacy budget).
    """
    from fedtorch.compression import CommunicationMeter
    from fedtorch.privacy import PrivacyOptionError, build_privacy
    from fedtorch.strategies.base import Strategy

    sampler.setup(fed.client_sizes())  # idempotent; the cohort size and the sampling scheme need it
    runtime = {
        "seed": cfg.seed,
        "num_clients": fed.num_clients,
        "expected_cohort_size": sampler.expected_cohort_size(),
        "model": model,
    }
    transforms: list[Any] = []
    if cfg.get("attack") and cfg.attack.get("_target_"):
        attack = _build(cfg.attack, "attack", **_runtime_kwargs(cfg.attack, **runtime))
        fed = attack.poison(fed)
        transforms.append(attack)
    if cfg.get("compression") and cfg.compression.get("_target_"):
        transforms.append(_build(cfg.compression, "compression", **_runtime_kwargs(cfg.compression, **runtime)))
    secagg = []
    if cfg.get("secagg") and cfg.secagg.get("_target_"):
        sum_only = not strategy.aggregator.needs_all_updates and type(strategy).on_update is Strategy.on_update
        _require(
            cfg,
            "secagg._target_",
            sum_only,
            f"secure aggregation reveals only the sum; {type(strategy).__name__} with "
            f"{type(strategy.aggregator).__name__} needs individual updates (use a FedAvg/FedOpt-family strategy "
            "with the mean, or secagg=none)",
        )
        secagg.append(_build(cfg.secagg, "secagg", **_runtime_kwargs(cfg.secagg, **runtime)))
    options = OmegaConf.to_container(cfg.privacy, resolve=True) if cfg.get("privacy") else {}
    try:
        privacy = build_privacy(
            options,
            sampler=sampler,
            strategy=strategy,
            trainer=trainer,
            client_sizes=fed.client_sizes().tolist(),
            rounds=cfg.rounds,
            seed=cfg.seed,
        )
    except PrivacyOptionError as error:
        raise ConfigError(error.key, error.value, error.allowed) from error
    transforms += [*privacy.client_side, *secagg, *privacy.server_side, CommunicationMeter()]
    return fed, privacy.trainer, transforms, privacy.callbacks


def plan_run(
    cfg: DictConfig, output_dir: Path, overrides: Sequence[str] = (), choices: Mapping[str, Any] | None = None
) -> tuple[ResumePlan, DictConfig]:
    """Where the run writes and what it starts from (`resume`: auto, null or a run folder), and its config.

    See `fedtorch.checkpoint.plan_resume`: a resumed run keeps its checkpoint's config (only
    `RESUMABLE_KEYS` such as `rounds` may change), so the returned config may differ from `cfg`.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    keys = [o.key_or_group for o in OverridesParser.create().parse_overrides(list(overrides))] if overrides else []
    current = OmegaConf.to_container(cfg, resolve=True)
    plan = plan_resume(cfg.get("resume", "auto"), output_dir, current, keys, dict(choices or {}))
    return plan, (cfg if plan.config is current else OmegaConf.create(plan.config))


#: What a run writes into its folder besides `.hydra/`, the log and `checkpoints/`.
RESULT_FILES = ("summary.json", "model.pt", "metrics.jsonl", "partition.json")


def _clear_stale_results(run_dir: Path, fresh: bool) -> None:
    """Before training: a fresh start removes what an earlier, unresumable attempt left in the folder
    (no mixed TensorBoard curves); a resumed run removes the previous end's `summary.json` and `model.pt`,
    which no longer describe the folder until the run ends again."""
    names = RESULT_FILES if fresh else ("summary.json", "model.pt")
    for name in names:
        (run_dir / name).unlink(missing_ok=True)
    if fresh:
        for events in run_dir.glob("events.out.tfevents.*"):
            events.unlink()
    remove_temporaries(run_dir)


def divergence_message(cfg: DictConfig, summary: dict[str, Any], last_row: dict[str, Any],
                       checkpoint_round: int | None) -> str:  # fmt: skip
    """What happened, what was kept, and which knobs to turn."""
    bad = [k for k, v in last_row.items() if isinstance(v, float) and not math.isfinite(v)]
    what = f"non-finite {', '.join(bad)}" if bad else "non-finite global model"
    kept = (
        f"the last good checkpoint is round {checkpoint_round} (checkpoints/round_{checkpoint_round:06d}.pt)"
        if checkpoint_round
        else "no checkpoint was written before it"
    )
    knobs = f"trainer.lr={cfg.trainer.lr}"
    if "server_lr" in cfg.strategy:
        knobs += f" or strategy.server_lr={cfg.strategy.server_lr}"
    return (
        f"run diverged at round {summary['diverged_round']} ({what}); summary.json records diverged: true, "
        f"no model.pt was written, {kept}. Lower {knobs}."
    )


def run_experiment(
    cfg: DictConfig,
    output_dir: str | Path,
    overrides: Sequence[str] = (),
    choices: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Validate, build, run, and write every artifact of one run into `output_dir`.

    `overrides` (the command line's) and `choices` (config-group choices) let a resumed run check
    that it continues the same experiment; see `plan_run`.
    """
    output_dir = Path(output_dir)
    validate(cfg)
    if launched_by_torchrun():
        # One process of `torchrun -m fedtorch backend=distributed`: join the group, use rank 0's folder.
        init_process_group(resolve_device(cfg.device))
        output_dir = agree_on_output_dir(output_dir)
    plan, cfg = plan_run(cfg, output_dir, overrides, choices)
    if plan.finished is not None:
        state = plan.finished
        ended = f"diverged at round {state.get('diverged_round')}" if state.get("diverged") else "completed"
        log.info("run folder %s already holds a finished run (%s, %s rounds): nothing to do", plan.run_dir, ended,
                 state.get("rounds"))  # fmt: skip
        print(f"run folder: {plan.run_dir}", flush=True)
        return state
    if plan.run_dir != output_dir:
        validate(cfg)
        log.info("resuming run folder %s; this invocation's Hydra folder is %s", plan.run_dir, output_dir)
        output_dir = plan.run_dir
    device = resolve_device(cfg.device)
    if launched_by_torchrun():
        device = init_process_group(device)  # the group exists; this picks the rank's GPU (cuda:LOCAL_RANK)
    launcher, batch = _sweep_launcher()
    threads = threads_per_run(cfg.get("num_threads", "auto"), launcher, available_cores(), batch)
    if threads is not None:
        torch.set_num_threads(threads)

    try:
        data, fed = build_federation(cfg)
    except (FileNotFoundError, InstantiationException) as error:
        # A missing data folder is a config error (data_dir), reported as one line.
        cause = error if isinstance(error, FileNotFoundError) else error.__cause__
        if not isinstance(cause, FileNotFoundError):
            raise _build_error("dataset", error) from error
        raise data_error(cfg, cause) from error
    validate_federation(cfg, fed.num_clients)
    if cfg.get("eval_max_samples") is not None:
        fed = subsample_test_set(fed, cfg.eval_max_samples, numpy_rng(cfg.seed, "eval_subset"))
    torch.manual_seed(derive_seed(cfg.seed, "model_init"))
    model = _build(cfg.model, "model", input_shape=data.input_shape, num_classes=data.num_classes)
    trainer = _build(cfg.trainer, "trainer")
    strategy = _build(cfg.strategy, "strategy")
    sampler = _build(cfg.sampler, "sampler")
    backend = _build(cfg.backend, "backend")
    # Attacks, compression, privacy, secure aggregation (+ the byte meter): see build_pipeline.
    train_fed, trainer, transforms, pipeline_callbacks = build_pipeline(cfg, fed, model, sampler, strategy, trainer)
    writer = is_main_process()  # rank 0 alone writes the run folder (distributed backend)

    callbacks = list(pipeline_callbacks)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    job_overrides = parse_overrides(overrides)  # {key: value text}: what this job's command line set
    if cfg.logging.tensorboard:
        # The clean federation's label counts (`fed`, not the poisoned `train_fed`), as partition.json's.
        counts = fed.label_counts() if fed.is_classification else fed.client_sizes().reshape(-1, 1)
        callbacks.append(
            TensorBoard(
                output_dir,
                hparams=resolved,
                config_text=OmegaConf.to_yaml(cfg, resolve=True),
                overrides=job_overrides,
                objective=cfg.get("objective"),
                partition_counts=counts,
                client_names=fed.client_names,
            )
        )
    if cfg.logging.metrics_file:
        callbacks.append(MetricsFile(output_dir / "metrics.jsonl"))
    for key, node in cfg.logging.items():  # trackers (logging=mlflow, logging=wandb): a node with a _target_
        if isinstance(node, DictConfig) and node.get("_target_"):
            make = _build(node, f"logging.{key}", _partial_=True)  # so the config below is passed, not instantiated
            try:
                callbacks.append(make(run_dir=output_dir, run_config=resolved, overrides=job_overrides))
            except ValueError as error:  # a missing extra or a bad option: one line naming the key
                raise ConfigError(f"logging.{key}", node._target_, str(error)) from error
    if cfg.logging.progress:  # after the trackers, whose start-up (W&B: a second or two) is not a round's time
        callbacks.append(ProgressBar())
    checkpointer = None
    if cfg.get("checkpoint_every", 0):
        # Last, so it saves the other callbacks' state after they have seen the round.
        checkpointer = Checkpoint(output_dir, cfg.checkpoint_every, config=resolved, choices=plan.choices)
        callbacks.append(checkpointer)
    if not writer:
        callbacks = []  # logs, checkpoints and the progress bar are rank 0's; its stop decision binds all

    sim = Simulation(
        train_fed,
        model,
        strategy,
        sampler,
        trainer,
        rounds=cfg.rounds,
        seed=cfg.seed,
        device=device,
        eval_every=cfg.eval_every,
        backend=backend,
        transforms=transforms,
        callbacks=callbacks,
    )
    validate_cohort(sim.sampler, sim.strategy)
    if plan.checkpoint is not None:
        try:
            sim.load_state_dict(plan.checkpoint["simulation"])
        except (KeyError, ValueError, RuntimeError, TypeError, IndexError) as error:
            raise CheckpointError(f"checkpoint {plan.checkpoint_path} does not fit this run: {error}") from error
        log.info("resuming from round %d (%s)", plan.round, plan.checkpoint_path)
    if writer:
        output_dir.mkdir(parents=True, exist_ok=True)
        _clear_stale_results(output_dir, fresh=plan.checkpoint is None)
        atomic_write_json(output_dir / "partition.json", partition_record(fed))
    log.info(
        "%s: %d clients, %d parameters, device %s", fed.name, fed.num_clients, sim.flat.layout.num_params, device
    )
    # Collected before training: the code and tree as they were when the run started.
    provenance = collect_provenance(device, fed.client_indices, rerun_command())
    summary = sim.run()
    summary["provenance"] = provenance
    summary["output_dir"] = str(output_dir)
    if plan.checkpoint is not None:
        summary["resumed_from_round"] = plan.round
    if summary["diverged"]:
        # No model.pt: a diverged model is not a result. The newest checkpoint is the last good round.
        last = checkpointer.last_round if checkpointer is not None else None
        summary["last_checkpoint_round"] = last
        summary["message"] = divergence_message(cfg, summary, sim.state.history[-1], last)
        log.warning(summary["message"])
    if writer:
        if not summary["diverged"]:
            atomic_torch_save(output_dir / "model.pt", sim.global_state_dict())
        atomic_write_json(output_dir / "summary.json", summary)
        print(f"run folder: {output_dir}", flush=True)
    return summary


def summary_of(output_dir: str | Path) -> dict[str, Any]:
    """Read a run folder's `summary.json`."""
    return json.loads((Path(output_dir) / "summary.json").read_text())


__all__ = ["ConfigError", "build_federation", "resolve_device", "run_experiment", "summary_of", "validate"]
