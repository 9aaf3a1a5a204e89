"""One run, from a composed config to a finished run folder, in four steps.

    plan     validate the run-level keys once, decide how the run starts (fresh, resumed,
             already finished), join torchrun's process group, pick the threads
    build    every component from its config group (`_target_` + options, runtime values passed
             at the call site), the data, the federation, then the `Simulation`, which checks that
             the components compose (`fedtorch.compatibility`): every refusal comes here, before
             any file is written
    run      restore a checkpoint, train (or, with `dry_run=true`, nothing)
    write    summary.json, model.pt, the last line naming the run folder

Hydra stays here and in `fedtorch.cli`: objects are built with `hydra.utils.instantiate`, and what
Hydra knows about the invocation (its output folder, the overrides, the group choices, the sweep
launcher) arrives as a plain `Runtime` that `fedtorch.cli` fills in.

A run folder holds: `.hydra/` (written by Hydra), TensorBoard event files, `metrics.jsonl`,
`summary.json`, `model.pt` (the final global `state_dict`; absent when the run failed),
`partition.json` and `checkpoints/round_NNNNNN.pt` (`resume=auto` continues a folder's run from
its latest checkpoint).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from fedtorch.backends.distributed import agree_on_output_dir, init_process_group, launched_by_torchrun, rank
from fedtorch.callbacks import Checkpoint, MetricsFile, ProgressBar, TensorBoard
from fedtorch.checkpoint import CheckpointError, ResumePlan, RunFolderLock, plan_resume, remove_temporaries
from fedtorch.compression import CommunicationMeter
from fedtorch.data.base import DatasetSplits, FederatedDataset
from fedtorch.data.partitions import partition_stats
from fedtorch.defenses.fltrust import attach_root_dataset
from fedtorch.errors import OptionError
from fedtorch.io import atomic_torch_save, atomic_write_json
from fedtorch.pipeline import UpdateTransform
from fedtorch.privacy.mechanisms import PrivacyMechanism
from fedtorch.provenance import collect as collect_provenance
from fedtorch.seeding import derive_seed, numpy_rng
from fedtorch.simulation import Simulation
from fedtorch.validation import ConfigError, data_error, instantiation_error, resolve_device, validate

log = logging.getLogger("fedtorch")

#: What a run writes into its folder besides `.hydra/`, the log and `checkpoints/`.
RESULT_FILES = ("summary.json", "model.pt", "metrics.jsonl", "partition.json")


@dataclass(frozen=True)
class Runtime:
    """What the launcher knows about this invocation (filled in by `fedtorch.cli` from Hydra).

    Attributes:
        output_dir: the folder Hydra made for this run (or job of a sweep).
        overrides: the command line's overrides (`trainer.lr=0.05`, ...).
        choices: the config-group choices (`strategy: fedavg`, ...), for resume checks and messages.
        launcher: the sweep launcher's config when this run is one job of a parallel sweep.
        sweeper_batch: the most jobs the sweeper hands the launcher at once (Optuna's n_jobs).
        rerun: the command that reruns this job alone.
        on_run_dir: called with the run folder when it is not `output_dir` (resuming another run's
            folder), so that the launcher can move its log there.
    """

    output_dir: Path
    overrides: tuple[str, ...] = ()
    choices: Mapping[str, Any] = field(default_factory=dict)
    launcher: Mapping[str, Any] | None = None
    sweeper_batch: int | None = None
    rerun: tuple[str, ...] = ()
    on_run_dir: Callable[[Path], None] | None = None


# -- step 1: plan ---------------------------------------------------------------------------------
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


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Torch's intra-op thread count set for the duration of a run, then restored."""
    if threads is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@dataclass
class Plan:
    """Step 1's decisions: where the run writes, what it starts from, and how it runs."""

    cfg: DictConfig
    resume: ResumePlan
    device: torch.device
    threads: int | None
    runtime: Runtime

    @property
    def run_dir(self) -> Path:
        return self.resume.run_dir


def plan(cfg: DictConfig, runtime: Runtime) -> Plan:
    """Validate once, decide how the run starts; under torchrun join the group and rank 0's folder."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    choices = dict(runtime.choices)
    validate(cfg, choices)
    output_dir = runtime.output_dir
    if launched_by_torchrun():
        # One process of `torchrun -m fedtorch backend=distributed`: join the group (once; it also
        # picks the rank's GPU), use rank 0's folder.
        init_process_group(resolve_device(cfg.device))
        output_dir = agree_on_output_dir(output_dir)
    keys = [o.key_or_group for o in OverridesParser.create().parse_overrides(list(runtime.overrides))]
    current = OmegaConf.to_container(cfg, resolve=True)
    resume = plan_resume(cfg.get("resume", "auto"), output_dir, current, keys, choices)
    if resume.config is not current:
        cfg = OmegaConf.create(resume.config)
        validate(cfg, resume.choices)  # the checkpoint's config with the allowed changes
    device = resolve_device(cfg.device)
    if launched_by_torchrun():
        device = init_process_group(device)  # the group exists: this only maps the rank to its GPU
    threads = threads_per_run(
        cfg.get("num_threads", "auto"), runtime.launcher, available_cores(), runtime.sweeper_batch
    )
    return Plan(cfg=cfg, resume=resume, device=device, threads=threads, runtime=runtime)


# -- step 2: build --------------------------------------------------------------------------------
def _build(node: Any, key: str, **kwargs: Any) -> Any:
    """`instantiate(node)`; a constructor's bad value becomes a one-line ConfigError on `key`."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as error:
        raise instantiation_error(key, error) or error from error


def _optional(cfg: DictConfig, group: str) -> Any:
    """The object of an optional group (attack, compression, privacy, secagg), or None when off."""
    node = cfg.get(group)
    if not node or node.get("_target_") is None:
        return None
    return _build(node, group)


def build_federation(cfg: DictConfig, partitioner: Any = None) -> tuple[DatasetSplits, FederatedDataset]:
    """Load the dataset and split it across clients with the configured partitioner."""
    try:
        data: DatasetSplits = instantiate(cfg.dataset)
    except InstantiationException as error:
        # A missing data folder is a config error (data_dir), reported as one line.
        if isinstance(error.__cause__, FileNotFoundError):
            raise data_error(cfg, error.__cause__) from error
        raise instantiation_error("dataset", error) or error from error
    except FileNotFoundError as error:
        raise data_error(cfg, error) from error
    return data, federate(
        data, partitioner if partitioner is not None else _build(cfg.partition, "partition"), cfg.seed
    )


def federate(data: DatasetSplits, partitioner: Any, seed: int) -> FederatedDataset:
    """Split `data` across clients; the partition is checked for exact coverage when it is built."""
    try:
        partition = partitioner(data, numpy_rng(seed, "partition"))
    except OptionError:
        raise
    except ValueError as error:
        raise ConfigError("partition", type(partitioner).__name__, " ".join(str(error).split())) from error
    return FederatedDataset.from_partition(data, partition)


def subsample_test_set(fed: FederatedDataset, max_samples: int, rng: np.random.Generator) -> FederatedDataset:
    """`fed` with a fixed random subset of at most `max_samples` of its central test samples (`eval_max_samples`).

    Evaluation then costs at most `max_samples` forward passes (smoke runs, quick looks at big test
    sets). The subset is drawn once, from a stream of its own that does not depend on the run's
    seed, so every round and every seed of a sweep is scored on the same samples (the spread over
    seeds is then seed noise, not test-subset noise); the clients' own test splits keep the samples
    of theirs that fall in it.
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


#: `eval_max_samples`'s subset comes from this fixed stream, never from the run's seed.
EVAL_SUBSET_SEED = 0


def partition_record(fed: FederatedDataset) -> dict[str, Any]:
    """client -> number of samples (per label for classification), for `partition.json`."""
    counts = fed.label_counts() if fed.is_classification else None
    stats = partition_stats(counts if counts is not None else fed.client_sizes().reshape(-1, 1))
    record: dict[str, Any] = {
        "num_clients": fed.num_clients,
        "stats": stats,
        "notes": dict(fed.partition_notes),  # e.g. what Dirichlet's min_size repair moved
        "clients": {},
    }
    for k, ix in enumerate(fed.client_indices):
        name = fed.client_names[k] if fed.client_names else str(k)
        entry: dict[str, Any] = {"num_samples": len(ix)}
        if counts is not None:
            entry["label_counts"] = counts[k].tolist()
        record["clients"][name] = entry
    return record


@dataclass
class Built:
    """Step 2's result: the simulation and what the run folder is written from."""

    sim: Simulation
    federation: FederatedDataset  # the clean federation (before any data poisoning)
    checkpointer: Checkpoint | None
    writer: bool  # this process writes the run folder (rank 0)


def build(p: Plan, components: Mapping[str, Any] | None = None) -> Built:
    """Every component, the data and the simulation; every refusal comes before any file is written.

    `components` replaces the object of a config group with one of the caller's (keys "dataset"
    (a `DatasetSplits`), "partition", "model" (an `nn.Module`), "strategy", "sampler", "trainer",
    "backend"), for `fedtorch.run` from a notebook.
    """
    cfg = p.cfg
    given = dict(components or {})
    unknown = set(given) - {"dataset", "partition", "model", "strategy", "sampler", "trainer", "backend"}
    if unknown:
        raise ConfigError(
            "components", sorted(unknown), "dataset, partition, model, strategy, sampler, trainer, backend"
        )

    def part(group: str) -> Any:
        return given[group] if group in given else _build(cfg[group], group)

    # The components that need no data first: their options are checked before anything is loaded.
    strategy = part("strategy")
    sampler = part("sampler")
    trainer = part("trainer")
    backend = part("backend")
    attack = _optional(cfg, "attack")
    compression = _optional(cfg, "compression")
    privacy: PrivacyMechanism = _optional(cfg, "privacy") or PrivacyMechanism()
    secagg = _optional(cfg, "secagg")
    partitioner = part("partition")

    if "dataset" in given:
        data = given["dataset"]
        fed = federate(data, partitioner, cfg.seed)
    else:
        data, fed = build_federation(cfg, partitioner)
    if cfg.get("eval_max_samples") is not None:
        fed = subsample_test_set(fed, cfg.eval_max_samples, numpy_rng(EVAL_SUBSET_SEED, "eval_subset"))
    if "model" in given:
        model = given["model"]
    else:
        torch.manual_seed(derive_seed(cfg.seed, "model_init"))
        model = _build(cfg.model, "model", input_shape=data.input_shape, num_classes=data.num_classes)

    # Pipeline order, client side first: attack -> compression -> DP clipping -> secure aggregation
    # -> DP noise and accounting -> byte meter (always on, so every run logs comm/bytes_*).
    train_fed = fed
    transforms: list[UpdateTransform] = []
    if attack is not None:
        attack.bind(fed.num_clients, cfg.seed)
        train_fed = attack.poison(fed)  # data poisoning changes what the malicious clients train on
        transforms.append(attack)
    if compression is not None:
        transforms.append(compression)
    trainer = privacy.wrap_trainer(trainer)
    transforms += privacy.client_transforms()
    if secagg is not None:
        transforms.append(secagg)
    transforms += [*privacy.server_transforms(), CommunicationMeter()]

    writer = rank() == 0  # rank 0 alone writes the run folder (distributed backend)
    run_dir = p.run_dir
    callbacks: list[Any] = list(privacy.callbacks())
    resolved = OmegaConf.to_container(cfg, resolve=True)
    if cfg.logging.tensorboard:
        counts = fed.label_counts() if fed.is_classification else fed.client_sizes().reshape(-1, 1)
        config_text = OmegaConf.to_yaml(cfg, resolve=True)
        callbacks.append(TensorBoard(run_dir, hparams=resolved, config_text=config_text, partition_counts=counts))
    if cfg.logging.metrics_file:
        callbacks.append(MetricsFile(run_dir / "metrics.jsonl"))
    if cfg.logging.progress:
        callbacks.append(ProgressBar())
    checkpointer = None
    if cfg.get("checkpoint_every", 0):
        # Last, so it saves the other callbacks' state after they have seen the round.
        checkpointer = Checkpoint(run_dir, cfg.checkpoint_every, config=resolved, choices=p.resume.choices)
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
        device=p.device,
        eval_every=cfg.eval_every,
        backend=backend,
        transforms=transforms,
        callbacks=callbacks,
        names=p.resume.choices,
    )
    # A reducer that compares the clients with the server's own update (FLTrust) gets its root
    # dataset, drawn from the clean federation, and the server's training on it.
    attach_root_dataset(sim, fed)
    return Built(sim=sim, federation=fed, checkpointer=checkpointer, writer=writer)


# -- step 3: run ----------------------------------------------------------------------------------
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


def execute(p: Plan, built: Built) -> dict[str, Any]:
    """Restore the checkpoint (if resuming), write partition.json, train."""
    sim = built.sim
    if p.resume.checkpoint is not None:
        try:
            sim.load_state_dict(p.resume.checkpoint["simulation"])
        except (KeyError, ValueError, RuntimeError, TypeError, IndexError) as error:
            path = p.resume.checkpoint_path
            raise CheckpointError(f"checkpoint {path} does not fit this run: {error}") from error
        log.info("resuming from round %d (%s)", p.resume.round, p.resume.checkpoint_path)
    if built.writer:
        p.run_dir.mkdir(parents=True, exist_ok=True)
        _clear_stale_results(p.run_dir, fresh=p.resume.checkpoint is None)
        atomic_write_json(p.run_dir / "partition.json", partition_record(built.federation))
    fed = built.federation
    log.info(
        "%s: %d clients, %d parameters, device %s", fed.name, fed.num_clients, sim.flat.layout.num_params, p.device
    )
    # Collected before training: the code and tree as they were when the run started.
    provenance = collect_provenance(p.device, fed.client_indices, list(p.runtime.rerun) or [sys.executable, *sys.argv])
    summary = sim.run()
    summary["provenance"] = provenance
    summary["output_dir"] = str(p.run_dir)
    if p.resume.checkpoint is not None:
        summary["resumed_from_round"] = p.resume.round
    return summary


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


# -- step 4: write --------------------------------------------------------------------------------
def write(p: Plan, built: Built, summary: dict[str, Any]) -> None:
    """summary.json and, for a run that did not fail, model.pt; the last line names the folder."""
    sim = built.sim
    last = built.checkpointer.last_round if built.checkpointer is not None else None
    if summary["diverged"]:
        # No model.pt: a diverged model is not a result. The newest checkpoint is the last good round.
        summary["last_checkpoint_round"] = last
        summary["message"] = divergence_message(p.cfg, summary, sim.state.history[-1], last)
        log.warning(summary["message"])
    elif sim.failed:
        summary["last_checkpoint_round"] = last
    if built.writer:
        if not sim.failed:
            atomic_torch_save(p.run_dir / "model.pt", sim.global_state_dict())
        atomic_write_json(p.run_dir / "summary.json", summary)
        print(f"run folder: {p.run_dir}", flush=True)


def run_experiment(
    cfg: DictConfig,
    runtime: Runtime | str | Path,
    overrides: Sequence[str] = (),
    choices: Mapping[str, Any] | None = None,
    components: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Plan, build, run and write one run; returns its summary.

    `runtime` is what the launcher knows (`fedtorch.cli` builds it from Hydra); a bare output
    folder (with `overrides` and `choices`) is accepted for library use. `components` replaces
    config groups' objects with the caller's (see `build`).
    """
    if not isinstance(runtime, Runtime):
        runtime = Runtime(output_dir=Path(runtime), overrides=tuple(overrides), choices=dict(choices or {}))
    p = plan(cfg, runtime)
    if p.resume.finished is not None:
        state = p.resume.finished
        reason = state.get("stop_reason")
        ended = f"diverged at round {state.get('diverged_round')}" if state.get("diverged") else (reason or "completed")
        log.info("run folder %s already holds a finished run (%s, %s rounds): nothing to do", p.run_dir, ended,
                 state.get("rounds"))  # fmt: skip
        print(f"run folder: {p.run_dir}", flush=True)
        return state
    if p.run_dir != runtime.output_dir:
        if runtime.on_run_dir is not None and rank() == 0:
            runtime.on_run_dir(p.run_dir)
        log.info("resuming run folder %s; this invocation's Hydra folder is %s", p.run_dir, runtime.output_dir)
    lock = RunFolderLock(p.run_dir) if rank() == 0 and not p.cfg.get("dry_run", False) else None
    with contextlib.ExitStack() as stack:
        if lock is not None:
            stack.enter_context(lock)
        stack.enter_context(torch_threads(p.threads))
        built = build(p, components)
        if p.cfg.get("dry_run", False):
            return dry_run_summary(p, built)
        summary = execute(p, built)
        write(p, built, summary)
    return summary


def dry_run_summary(p: Plan, built: Built) -> dict[str, Any]:
    """`dry_run=true`: everything was built and composes; nothing trained, nothing written."""
    sim = built.sim
    summary = {
        "dry_run": True,
        "num_clients": sim.federation.num_clients,
        "num_parameters": sim.flat.layout.num_params,
        "backend": sim.backend.name,
        "device": str(p.device),
        "transforms": [type(t).__name__ for t in sim.pipeline.transforms],
    }
    print(
        f"dry run: {summary['num_clients']} clients, {summary['num_parameters']} parameters, backend "
        f"{summary['backend']}, transforms {', '.join(summary['transforms'])}: every component composes",
        flush=True,
    )
    return summary


def summary_of(output_dir: str | Path) -> dict[str, Any]:
    """Read a run folder's `summary.json`."""
    return json.loads((Path(output_dir) / "summary.json").read_text())


__all__ = ["ConfigError", "Runtime", "build_federation", "resolve_device", "run_experiment", "summary_of", "validate"]
