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
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from fedtorch.callbacks import MetricsFile, ProgressBar, TensorBoard
from fedtorch.data.base import DatasetSplits, FederatedDataset
from fedtorch.data.partitions import Natural, natural_partition
from fedtorch.io import atomic_torch_save, atomic_write_json
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
    resolve_device(cfg.device)


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
    record: dict[str, Any] = {"num_clients": fed.num_clients, "clients": {}}
    counts = fed.label_counts() if fed.is_classification else None
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
    summary = sim.run()
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
