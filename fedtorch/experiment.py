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
from omegaconf.errors import MissingMandatoryValue

from fedtorch.asynchronous import AsynchronousSimulation
from fedtorch.backends.distributed import (
    agree_on_output_dir,
    init_process_group,
    launched_by_torchrun,
    rank,
    world_size,
)
from fedtorch.callbacks import Checkpoint, MetricsFile, ProgressBar, TensorBoard
from fedtorch.callbacks.base import Callback, RunView
from fedtorch.callbacks.virtual_time import VirtualTimeTensorBoard
from fedtorch.checkpoint import (
    CheckpointError,
    ResumePlan,
    RunFolderLock,
    config_digest,
    plan_resume,
    remove_temporaries,
)
from fedtorch.client_state import ClientStateStore
from fedtorch.compatibility import check_async_sampler
from fedtorch.compression import CommunicationMeter
from fedtorch.data.auto import Auto
from fedtorch.data.base import DatasetSplits, FederatedDataset, Federation
from fedtorch.data.partitions import Natural, partition_stats
from fedtorch.data.splits import ClientSplit, SplitFederation
from fedtorch.defenses.fltrust import attach_root_dataset
from fedtorch.errors import OptionError
from fedtorch.io import atomic_torch_save, atomic_write_json
from fedtorch.pipeline import UpdateTransform
from fedtorch.privacy.mechanisms import PrivacyMechanism
from fedtorch.provenance import collect as collect_provenance
from fedtorch.results import parse_overrides
from fedtorch.seeding import derive_seed, numpy_rng
from fedtorch.servers import Synchronous
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
    try:
        current = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as error:
        raise ConfigError(error.full_key, "???", "a value this option needs: set it on the command line") from error
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


def _optional(cfg: DictConfig, group: str, **kwargs: Any) -> Any:
    """The object of an optional group (attack, compression, privacy, secagg, clock, server), or None when off."""
    node = cfg.get(group)
    if not node or node.get("_target_") is None:
        return None
    return _build(node, group, **kwargs)


def load_dataset(cfg: DictConfig) -> DatasetSplits | Federation:
    """The configured dataset (a generated or prepared one is a federation already); a missing data
    folder is a one-line config error on `data_dir`."""
    try:
        return instantiate(cfg.dataset)
    except InstantiationException as error:
        # A missing data folder is a config error (data_dir), reported as one line.
        if isinstance(error.__cause__, FileNotFoundError):
            raise data_error(cfg, error.__cause__) from error
        if isinstance(error.__cause__, ImportError):  # an optional extra (torchvision) is missing
            name = str(cfg.dataset.get("_target_", "dataset")).rsplit(".", 1)[-1]
            raise ConfigError("dataset", name, " ".join(str(error.__cause__).split())) from error
        raise instantiation_error("dataset", error) or error from error
    except FileNotFoundError as error:
        raise data_error(cfg, error) from error


def build_federation(cfg: DictConfig, partitioner: Any = None) -> tuple[DatasetSplits | Federation, Federation]:
    """Load the dataset and split it across clients with the configured partitioner (a generated or
    prepared dataset is a federation already: then it is returned twice)."""
    data = load_dataset(cfg)
    return data, federate(
        data, partitioner if partitioner is not None else _build(cfg.partition, "partition"), cfg.seed
    )


def federate(data: DatasetSplits | Federation, partitioner: Any, seed: int) -> Federation:
    """Split `data` across clients; the partition is checked for exact coverage when it is built."""
    return federate_split(data, partitioner, seed, None)[0]


def federate_split(
    data: DatasetSplits | Federation, partitioner: Any, seed: int, split: ClientSplit | None
) -> tuple[Federation, SplitFederation | None]:
    """`federate`, then (when `split` is active) per-client test splits and unseen clients
    (`fedtorch.data.splits`, from the `(seed, "client_split")` stream): the training clients'
    federation, and what the split set aside for evaluation.

    A dataset that is a federation already (generated clients, a prepared folder) keeps its own
    clients: only `partition=auto` or `natural` fits it, and it has no samples to split.
    """
    if isinstance(data, Federation):
        if not isinstance(partitioner, (Auto, Natural)):
            name = type(partitioner).__name__.lower()
            allowed = f"dataset {data.name!r} has its own {data.num_clients} clients: use partition=auto or natural"
            raise ConfigError("partition", name, allowed)
        if split is not None and split.active:
            key, value = ("test_fraction", split.test_fraction) if split.test_fraction else ("holdout", split.holdout)
            raise ConfigError(key, value, f"dataset {data.name!r} is generated client by client: 0 (no split)")
        return data, None
    try:
        partition = partitioner(data, numpy_rng(seed, "partition"))
    except OptionError:
        raise
    except ValueError as error:
        raise ConfigError("partition", type(partitioner).__name__, " ".join(str(error).split())) from error
    if split is None or not split.active:
        return FederatedDataset.from_partition(data, partition), None
    result = split(data, partition, numpy_rng(seed, "client_split"))
    return FederatedDataset.from_partition(result.data, result.partition), result


def subsample_test_set(fed: Federation, max_samples: int, rng: np.random.Generator) -> Federation:
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
    return fed.with_test_subset(keep)


#: `eval_max_samples`'s subset comes from this fixed stream, never from the run's seed.
EVAL_SUBSET_SEED = 0


#: `partition.json` lists every client of a federation up to this size; a larger one gets
#: histograms and quantiles of the client sizes (over every client) and label statistics over a
#: fixed random sample of this many clients, so the file stays small at a million clients.
PARTITION_RECORD_MAX_CLIENTS = 10_000

#: The quantiles of the client sizes a large federation's `partition.json` records.
SIZE_QUANTILES = (0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 1.0)


def partition_sample(fed: Federation, limit: int = PARTITION_RECORD_MAX_CLIENTS) -> np.ndarray | None:
    """The clients whose label counts summarize a federation of more than `limit` clients (a fixed
    stream of its own, sorted), or None when every client is listed."""
    if fed.num_clients <= limit:
        return None
    return np.sort(numpy_rng(0, "partition_record").choice(fed.num_clients, size=limit, replace=False))


def partition_record(fed: Federation) -> dict[str, Any]:
    """What `partition.json` holds: every client's size (and label counts for classification) up to
    `PARTITION_RECORD_MAX_CLIENTS` clients; beyond, exact size statistics, quantiles and a log2
    histogram over every client, and label statistics over a fixed random sample of clients."""
    sample = partition_sample(fed)
    counts = fed.label_counts(sample) if fed.is_classification else None
    sizes = fed.client_sizes()
    if sample is not None:
        return _large_partition_record(fed, sizes, sample, counts)
    stats = partition_stats(counts if counts is not None else sizes.reshape(-1, 1))
    record: dict[str, Any] = {
        "num_clients": fed.num_clients,
        "stats": stats,
        "notes": dict(fed.partition_notes),  # e.g. what Dirichlet's min_size repair moved
        "clients": {},
    }
    for k, size in enumerate(sizes.tolist()):
        name = fed.client_names[k] if fed.client_names else str(k)
        entry: dict[str, Any] = {"num_samples": size}
        if counts is not None:
            entry["label_counts"] = counts[k].tolist()
        record["clients"][name] = entry
    return record


def _large_partition_record(
    fed: Federation, sizes: np.ndarray, sample: np.ndarray, counts: np.ndarray | None
) -> dict[str, Any]:
    """`partition_record` of a federation too large to list: a few kilobytes at any size."""
    as_float = sizes.astype(np.float64)
    mean = float(as_float.mean())
    top = int(sizes.max()) if len(sizes) else 0
    edges = [0, 1] + [2**e for e in range(1, max(1, top).bit_length() + 1)]
    histogram, _ = np.histogram(sizes, bins=np.asarray(edges, dtype=np.float64))
    record: dict[str, Any] = {
        "num_clients": fed.num_clients,
        "num_samples": int(sizes.sum()),
        "clients_listed": False,
        "size_stats": {
            "size_mean": mean,
            "size_std": float(as_float.std()),
            "size_min": float(sizes.min()),
            "size_max": float(top),
            "size_cv": float(as_float.std() / mean) if mean > 0 else 0.0,
            "empty_clients": float((sizes == 0).sum()),
        },
        "size_quantiles": {f"{q:g}": float(v) for q, v in zip(SIZE_QUANTILES, np.quantile(sizes, SIZE_QUANTILES))},
        # Client sizes in [edges[i], edges[i+1]) (the last bin includes its upper edge).
        "size_histogram": {"edges": edges, "counts": histogram.tolist()},
        "label_sample": {"clients": len(sample), "of": fed.num_clients, "stream": "numpy_rng(0, 'partition_record')"},
        "notes": dict(fed.partition_notes),
    }
    if counts is not None:
        record["stats"] = partition_stats(counts)  # label statistics over the sample
        record["label_totals_in_sample"] = counts.sum(axis=0).tolist()
    return record


def client_state_store(cfg: DictConfig, run_dir: Path, fresh: bool) -> ClientStateStore:
    """The per-client state store of `client_state:` (memory first, then memory-mapped files under
    `client_state.dir`, default `<run folder>/client_state`, one sub-folder per process of a
    distributed run). A fresh run starts it empty; a resumed run keeps its files for the checkpoint."""
    node = cfg.get("client_state") or {}
    memory_mb = node.get("memory_mb", 1024)
    if not isinstance(memory_mb, (int, float)) or isinstance(memory_mb, bool) or not memory_mb >= 0:
        raise ConfigError("client_state.memory_mb", memory_mb, "a number of MiB >= 0 (0: every row on disk)")
    folder = Path(node.get("dir") or run_dir / "client_state").expanduser()
    if world_size() > 1:
        folder = folder / f"rank{rank()}"
    return ClientStateStore(path=folder, memory_bytes=int(memory_mb * 2**20), fresh=fresh)


class CommitClientState(Callback):
    """On the processes that do not write checkpoints: mark the client state at the rounds rank 0
    checkpoints (`Checkpoint`'s schedule), so every process's files commit the same rows."""

    def __init__(self, store: ClientStateStore, every: int) -> None:
        self.store, self.every, self.last = store, every, None

    def on_round_end(self, run: RunView, round_idx: int, metrics: dict[str, float]) -> None:
        final = round_idx >= run.rounds or run.stop_reason is not None
        if run.stop_reason != "diverged" and (round_idx % self.every == 0 or final):
            self.store.mark_checkpoint()
            self.last = round_idx

    def on_run_end(self, run: RunView, summary: dict[str, Any]) -> None:
        if not (summary.get("diverged") or "message" in summary or run.round == 0) and self.last != run.round:
            self.store.mark_checkpoint()


def probe_model(model: Any, fed: Federation, choices: Mapping[str, Any]) -> None:
    """One forward pass and loss on two samples of the first client that has any, so that a model
    that cannot take the dataset's inputs (shape, dtype) or produce its targets is refused now, in
    one line, and not with a traceback in the middle of round 1. In eval mode and without
    gradients: nothing about the model or any random stream changes. Only that one client is
    materialized (a lazy federation generates nothing else)."""
    from fedtorch.client import default_loss

    holders = np.flatnonzero(fed.client_sizes())
    if len(holders) == 0:
        return
    x, y = fed.client_tensors(int(holders[0]))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(x[:2])
            default_loss(fed.num_classes)(out, y[:2])
    except (RuntimeError, TypeError, ValueError, IndexError) as error:
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ConfigError(
            "model",
            choices.get("model", type(model).__name__),
            f"cannot take dataset={choices.get('dataset', fed.name)}'s samples (shape {tuple(fed.input_shape)}, "
            f"{x.dtype}, {fed.num_classes or 'regression'} targets): {reason[:200]}",
        ) from error
    finally:
        model.train(was_training)


@dataclass
class Built:
    """Step 2's result: the simulation and what the run folder is written from."""

    sim: Simulation
    federation: Federation  # the clean federation (before any data poisoning)
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
    server = _optional(cfg, "server") or Synchronous()
    partitioner = part("partition")
    split = ClientSplit(cfg.get("test_fraction", 0.0), cfg.get("holdout", 0.0))

    data = given["dataset"] if "dataset" in given else load_dataset(cfg)
    fed, held_out = federate_split(data, partitioner, cfg.seed, split)
    if cfg.get("eval_max_samples") is not None:
        fed = subsample_test_set(fed, cfg.eval_max_samples, numpy_rng(EVAL_SUBSET_SEED, "eval_subset"))
    if "model" in given:
        model = given["model"]
    else:
        torch.manual_seed(derive_seed(cfg.seed, "model_init"))
        model = _build(cfg.model, "model", input_shape=data.input_shape, num_classes=data.num_classes)

    probe_model(model, fed, p.resume.choices)

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
    job_overrides = parse_overrides(p.runtime.overrides)  # {key: value text}: what this job set
    if cfg.logging.tensorboard:
        # The clean federation's label counts (an attack may have poisoned the training labels); a
        # huge federation's picture and statistics come from partition.json's sample of clients.
        sample = partition_sample(fed)
        sizes = fed.client_sizes() if sample is None else fed.client_sizes()[sample]
        counts = fed.label_counts(sample) if fed.is_classification else sizes.reshape(-1, 1)
        callbacks.append(
            TensorBoard(
                run_dir,
                hparams=resolved,
                config_text=OmegaConf.to_yaml(cfg, resolve=True),
                overrides=job_overrides,
                objective=cfg.get("objective"),
                partition_counts=counts,
                client_names=fed.client_names if sample is None else None,
            )
        )
    # The virtual clock needs the federation (one device profile per client).
    clock = _optional(cfg, "clock", num_clients=fed.num_clients, seed=cfg.seed)
    if clock is not None and cfg.logging.tensorboard:
        callbacks.append(VirtualTimeTensorBoard(run_dir))
    if cfg.logging.metrics_file:
        callbacks.append(MetricsFile(run_dir / "metrics.jsonl"))
    for key, node in cfg.logging.items():  # trackers: any logging.<name> node with a _target_
        if isinstance(node, DictConfig) and node.get("_target_"):
            # Partial: `resolved` holds _target_ keys that instantiate would otherwise build.
            make = _build(node, f"logging.{key}", _partial_=True)
            try:
                callbacks.append(make(run_dir=run_dir, run_config=resolved, overrides=job_overrides))
            except ValueError as error:  # e.g. the extra is not installed
                raise ConfigError(f"logging.{key}", node._target_, str(error)) from error
    if cfg.logging.progress:  # after the trackers, whose start-up is not a round
        callbacks.append(ProgressBar())
    checkpointer = None
    if cfg.get("checkpoint_every", 0):
        # Last, so it saves the other callbacks' state after they have seen the round.
        checkpointer = Checkpoint(run_dir, cfg.checkpoint_every, config=resolved, choices=p.resume.choices)
        callbacks.append(checkpointer)
    # Per-client state: memory, then the run folder's disk (a dry run never deletes anything there).
    store = client_state_store(cfg, run_dir, fresh=p.resume.checkpoint is None and not cfg.get("dry_run", False))
    if not writer:
        callbacks = []  # logs, checkpoints and the progress bar are rank 0's; its stop decision binds all
        if cfg.get("checkpoint_every", 0):
            callbacks.append(CommitClientState(store, cfg.checkpoint_every))

    common = dict(
        seed=cfg.seed,
        device=p.device,
        eval_every=cfg.eval_every,
        backend=backend,
        transforms=transforms,
        callbacks=callbacks,
        names=p.resume.choices,
        eval_train=bool(cfg.get("eval_train", False)),
        eval_train_max_samples=cfg.get("eval_train_max_samples"),
        client_state=store,
        client_tests=None if held_out is None else held_out.client_tests,
        unseen=None if held_out is None else held_out.unseen,
    )
    sim: Simulation
    if server.asynchronous:
        check_async_sampler(sampler, server, p.resume.choices)
        sim = AsynchronousSimulation(
            train_fed, model, strategy, trainer, server=server, clock=clock, rounds=cfg.rounds, **common
        )
    else:
        sim = Simulation(
            train_fed, model, strategy, sampler, trainer, rounds=cfg.rounds, clock=clock, server=server, **common
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
    provenance = collect_provenance(p.device, None, list(p.runtime.rerun) or [sys.executable, *sys.argv])
    provenance["partition_sha256"] = fed.partition_sha256()  # provenance.partition_hash, without a loop
    summary = sim.run()
    summary["metrics"].update(best_of(sim.state.history))
    summary["provenance"] = provenance
    summary["output_dir"] = str(p.run_dir)
    summary["config_digest"] = config_digest(OmegaConf.to_container(p.cfg, resolve=True))
    if p.resume.checkpoint is not None:
        summary["resumed_from_round"] = p.resume.round
    return summary


#: The summary's best-of metrics: the accuracy means a results table reports (docs/metrics.md).
BEST_OF_SUFFIXES = ("accuracy", "accuracy_mean", "accuracy_weighted_mean")


def best_of(history: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """`best/<key>` (the highest value over the evaluated rounds) and `best_round/<key>` (the first
    round that reached it) for every logged `eval/` accuracy mean (`eval/accuracy`,
    `eval/personal/accuracy_mean`, ...). The summary's plain `<key>` stays the last round's value.
    """
    best: dict[str, tuple[float, int]] = {}
    for row in history:
        for key, value in row.items():
            if not key.startswith("eval/") or key.rpartition("/")[2] not in BEST_OF_SUFFIXES:
                continue
            if isinstance(value, float) and math.isfinite(value) and (key not in best or value > best[key][0]):
                best[key] = (value, int(row["round"]))
    out: dict[str, float] = {}
    for key, (value, round_idx) in sorted(best.items()):
        out[f"best/{key}"] = value
        out[f"best_round/{key}"] = float(round_idx)
    return out


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
