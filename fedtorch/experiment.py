"""Build a simulation from a composed config and run it, writing the run folder.

Hydra stays here and in `fedtorch.cli`: objects are built with `hydra.utils.instantiate` from
their config group (`_target_` + options, runtime values such as the model's input shape passed
at the call site), then handed to the plain-Python `Simulation`.

A run folder holds: `.hydra/` (written by Hydra), TensorBoard event files, `metrics.jsonl`,
`summary.json`, `model.pt` (the final global `state_dict`) and `partition.json`.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from fedtorch.callbacks import MetricsFile, ProgressBar, TensorBoard
from fedtorch.data.base import DatasetSplits, FederatedDataset
from fedtorch.data.partitions import Natural, natural_partition, partition_stats
from fedtorch.io import atomic_torch_save, atomic_write_json
from fedtorch.provenance import collect as collect_provenance
from fedtorch.seeding import derive_seed, numpy_rng
from fedtorch.simulation import Simulation

log = logging.getLogger("fedtorch")


class ConfigError(ValueError):
    """A bad configuration value: the message names the key, the value and what is allowed."""

    def __init__(self, key: str, value: Any, allowed: str) -> None:
        super().__init__(f"{key}={value!r} is invalid: {allowed}")
        self.key, self.value, self.allowed = key, value, allowed


def resolve_device(requested: str) -> torch.device:
    """'auto' picks CUDA when available, else CPU; anything else is taken as given."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested)
    except RuntimeError as error:
        raise ConfigError("device", requested, "use auto, cpu, cuda or cuda:N") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device", requested, "CUDA is not available on this machine; use device=auto or cpu")
    return device


def _require(cfg: DictConfig, key: str, ok: bool, allowed: str) -> None:
    if not ok:
        raise ConfigError(key, OmegaConf.select(cfg, key), allowed)


def validate(cfg: DictConfig) -> None:
    """Checks that need no data: fail before any work or file writing."""
    _require(cfg, "rounds", isinstance(cfg.rounds, int) and cfg.rounds >= 1, "an integer >= 1")
    _require(cfg, "eval_every", isinstance(cfg.eval_every, int) and cfg.eval_every >= 1, "an integer >= 1")
    _require(cfg, "seed", isinstance(cfg.seed, int) and cfg.seed >= 0, "an integer >= 0")
    trainer = cfg.trainer
    _require(cfg, "trainer.lr", isinstance(trainer.lr, (int, float)) and trainer.lr > 0, "a number > 0")
    _require(cfg, "trainer.epochs", isinstance(trainer.epochs, int) and trainer.epochs >= 1, "an integer >= 1")
    _require(
        cfg,
        "trainer.batch_size",
        isinstance(trainer.batch_size, int) and (trainer.batch_size >= 1 or trainer.batch_size == -1),
        "an integer >= 1, or -1 for the whole client dataset",
    )
    if "server_lr" in cfg.strategy:
        lr = cfg.strategy.server_lr
        _require(cfg, "strategy.server_lr", isinstance(lr, (int, float)) and lr > 0, "a number > 0")
    if "alpha" in cfg.partition:
        alpha = cfg.partition.alpha
        _require(cfg, "partition.alpha", isinstance(alpha, (int, float)) and alpha > 0, "a number > 0")
    if "num_clients" in cfg.partition:
        n = cfg.partition.num_clients
        _require(cfg, "partition.num_clients", isinstance(n, int) and n >= 1, "an integer >= 1")
    sampler = cfg.sampler
    if sampler.get("fraction") is not None:
        f = sampler.fraction
        _require(cfg, "sampler.fraction", isinstance(f, (int, float)) and 0 < f <= 1, "a number in (0, 1]")
    elif sampler.get("clients_per_round") is not None:
        m = sampler.clients_per_round
        _require(cfg, "sampler.clients_per_round", isinstance(m, int) and m >= 1, "an integer >= 1")
    threads = cfg.get("num_threads", "auto")
    _require(
        cfg,
        "num_threads",
        threads == "auto" or (isinstance(threads, int) and not isinstance(threads, bool) and threads >= 1),
        "auto, or an integer >= 1",
    )
    resolve_device(cfg.device)


def available_cores() -> int:
    """CPU cores this process may use (its affinity mask where the OS has one, e.g. under SLURM)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def threads_per_run(requested: int | str, launcher: Mapping[str, Any] | None, cores: int) -> int | None:
    """Torch intra-op threads for one run, or None to keep torch's default.

    An integer is taken as given. `auto` shares the machine between the runs a launcher runs at
    once, so parallel jobs do not oversubscribe the cores (each would otherwise start one thread
    per core, and N jobs x all cores threads run slower than N jobs x cores/N): a submitit
    launcher's `cpus_per_task` when set, else cores // `n_jobs` under joblib (`n_jobs` -1 means
    all cores, -2 all but one, as in joblib). Outside a parallel sweep `auto` keeps torch's default,
    which honours OMP_NUM_THREADS (torchrun sets it to 1 per process).
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
        if jobs > 1:
            return max(1, cores // jobs)
    return None


def _sweep_launcher() -> Mapping[str, Any] | None:
    """The Hydra launcher config when this run is one job of a multirun, else None."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return None
    return OmegaConf.to_container(hydra_cfg.launcher, resolve=False)


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


def run_experiment(cfg: DictConfig, output_dir: str | Path) -> dict[str, Any]:
    """Validate, build, run, and write every artifact of one run into `output_dir`."""
    output_dir = Path(output_dir)
    validate(cfg)
    device = resolve_device(cfg.device)
    threads = threads_per_run(cfg.get("num_threads", "auto"), _sweep_launcher(), available_cores())
    if threads is not None:
        torch.set_num_threads(threads)

    data, fed = build_federation(cfg)
    _require(
        cfg,
        "sampler.clients_per_round",
        cfg.sampler.get("clients_per_round") is None
        or cfg.sampler.get("fraction") is not None
        or cfg.sampler.clients_per_round <= fed.num_clients,
        f"at most the number of clients in the federation ({fed.num_clients})",
    )
    torch.manual_seed(derive_seed(cfg.seed, "model_init"))
    model = instantiate(cfg.model, input_shape=data.input_shape, num_classes=data.num_classes)
    trainer = instantiate(cfg.trainer)
    strategy = instantiate(cfg.strategy)
    sampler = instantiate(cfg.sampler)
    backend = instantiate(cfg.backend)

    callbacks = []
    resolved = OmegaConf.to_container(cfg, resolve=True)
    if cfg.logging.tensorboard:
        callbacks.append(TensorBoard(output_dir, hparams=resolved, config_text=OmegaConf.to_yaml(cfg, resolve=True)))
    if cfg.logging.metrics_file:
        callbacks.append(MetricsFile(output_dir / "metrics.jsonl"))
    if cfg.logging.progress:
        callbacks.append(ProgressBar())

    sim = Simulation(
        fed,
        model,
        strategy,
        sampler,
        trainer,
        rounds=cfg.rounds,
        seed=cfg.seed,
        device=device,
        eval_every=cfg.eval_every,
        backend=backend,
        callbacks=callbacks,
    )
    output_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(output_dir / "partition.json", partition_record(fed))
    log.info(
        "%s: %d clients, %d parameters, device %s", fed.name, fed.num_clients, sim.flat.layout.num_params, device
    )
    # Collected before training: the code and tree as they were when the run started.
    provenance = collect_provenance(device, fed.client_indices, rerun_command())
    summary = sim.run()
    summary["provenance"] = provenance
    if summary["diverged"]:
        log.warning("run diverged at round %d: lower trainer.lr or strategy.server_lr", summary["rounds"])
    atomic_torch_save(output_dir / "model.pt", sim.global_state_dict())
    summary["output_dir"] = str(output_dir)
    atomic_write_json(output_dir / "summary.json", summary)
    print(f"run folder: {output_dir}", flush=True)
    return summary


def summary_of(output_dir: str | Path) -> dict[str, Any]:
    """Read a run folder's `summary.json`."""
    return json.loads((Path(output_dir) / "summary.json").read_text())


__all__ = ["ConfigError", "build_federation", "resolve_device", "run_experiment", "summary_of", "validate"]
