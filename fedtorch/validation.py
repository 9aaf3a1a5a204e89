"""Config validation: every bad value fails before any work starts, as one clear line.

`validate(cfg)` is the single entry point for the checks that need no data; it runs before any
dataset is loaded or any file is written. `validate_federation` and `validate_cohort` check what
only the data and the built objects know (clients per round against the federation's size, a
robust aggregator's minimum number of updates against the cohort), still before any file is
written. All raise `ConfigError`, whose message names the key, the value and what is allowed;
the CLI prints it as one line and exits with status 2.

The other half: errors that Hydra raises before fedtorch sees the config (an unknown group option,
an unknown key, an override that does not parse), errors of `_target_` constructors, and missing
data folders, are turned into the same kind of one-line message by `describe_hydra_error`,
`instantiation_error` and `data_error`.

To add a check for a new option, add a line to the matching `_check_*` function below.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf


class ConfigError(ValueError):
    """A bad configuration value: the message names the key, the value and what is allowed."""

    def __init__(self, key: str, value: Any, allowed: str) -> None:
        super().__init__(f"{key}={value!r} is invalid: {allowed}")
        self.key, self.value, self.allowed = key, value, allowed


# -- predicates (bool is an int in Python, but `rounds=true` is a typo, not 1 round) --------------
def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def require(cfg: DictConfig, key: str, ok: bool, allowed: str) -> None:
    """Raise ConfigError for `key` (with its current value) unless `ok`."""
    if not ok:
        raise ConfigError(key, OmegaConf.select(cfg, key), allowed)


_require = require  # the name experiment.py used before validation moved here


def _positive_number(cfg: DictConfig, key: str) -> None:
    value = OmegaConf.select(cfg, key)
    require(cfg, key, is_number(value) and value > 0, "a finite number > 0")


def _int_at_least(cfg: DictConfig, key: str, low: int, extra: str = "") -> None:
    value = OmegaConf.select(cfg, key)
    require(cfg, key, is_int(value) and value >= low, f"an integer >= {low}{extra}")


def resolve_device(requested: str) -> torch.device:
    """'auto' picks CUDA when available, else CPU; anything else is taken as given."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested)
    except (RuntimeError, TypeError) as error:
        raise ConfigError("device", requested, "use auto, cpu, cuda or cuda:N") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device", requested, "CUDA is not available on this machine; use device=auto or cpu")
    return device


# -- the checks, one function per config group -----------------------------------------------------
def _check_run(cfg: DictConfig) -> None:
    _int_at_least(cfg, "rounds", 1)
    _int_at_least(cfg, "eval_every", 1)
    _int_at_least(cfg, "seed", 0)
    if "checkpoint_every" in cfg:
        _int_at_least(cfg, "checkpoint_every", 0, " (0: no checkpoints)")
    if cfg.get("eval_max_samples") is not None:
        _int_at_least(cfg, "eval_max_samples", 1, ", or null for the whole test set")
    if "resume" in cfg:
        resume = cfg.resume
        require(cfg, "resume", resume is None or isinstance(resume, str), "auto, null, or a run folder path")
    threads = cfg.get("num_threads", "auto")
    require(cfg, "num_threads", threads == "auto" or (is_int(threads) and threads >= 1), "auto, or an integer >= 1")
    require(cfg, "device", isinstance(cfg.device, str), "auto, cpu, cuda or cuda:N")
    resolve_device(cfg.device)


def _check_trainer(cfg: DictConfig) -> None:
    trainer = cfg.trainer
    _positive_number(cfg, "trainer.lr")
    _int_at_least(cfg, "trainer.epochs", 1)
    require(
        cfg,
        "trainer.batch_size",
        is_int(trainer.batch_size) and (trainer.batch_size >= 1 or trainer.batch_size == -1),
        "an integer >= 1, or -1 for the whole client dataset",
    )
    if trainer.get("max_steps") is not None:
        _int_at_least(cfg, "trainer.max_steps", 1, ", or null")
    optimizer = trainer.get("optimizer")
    if isinstance(optimizer, DictConfig):
        if optimizer.get("momentum") is not None:
            m = optimizer.momentum
            require(cfg, "trainer.optimizer.momentum", is_number(m) and 0 <= m < 1, "a number in [0, 1)")
        if optimizer.get("weight_decay") is not None:
            wd = optimizer.weight_decay
            require(cfg, "trainer.optimizer.weight_decay", is_number(wd) and wd >= 0, "a number >= 0")


def _check_strategy(cfg: DictConfig) -> None:
    strategy = cfg.strategy
    if "server_lr" in strategy:
        _positive_number(cfg, "strategy.server_lr")
    if strategy.get("mu") is not None:  # FedProx's proximal weight
        mu = strategy.mu
        require(cfg, "strategy.mu", is_number(mu) and mu >= 0, "a number >= 0")
    aggregator = strategy.get("aggregator")
    if isinstance(aggregator, DictConfig):
        if aggregator.get("beta") is not None:  # trimmed mean: the fraction cut at each end
            beta = aggregator.beta
            require(cfg, "strategy.aggregator.beta", is_number(beta) and 0 <= beta < 0.5, "a number in [0, 0.5)")
        if aggregator.get("f") is not None:  # Krum, Bulyan: assumed attackers
            _int_at_least(cfg, "strategy.aggregator.f", 0)
        if aggregator.get("m") is not None:  # Multi-Krum: updates averaged
            _int_at_least(cfg, "strategy.aggregator.m", 1, ", or null")
        if aggregator.get("max_iter") is not None:  # geometric median (Weiszfeld)
            _int_at_least(cfg, "strategy.aggregator.max_iter", 1)
    _check_strategy_options(cfg)


def _check_strategy_options(cfg: DictConfig) -> None:
    """The algorithm options of fedtorch.strategies (FedOpt family, FedDyn, q-FFL, Ditto, FedNova)."""
    strategy = cfg.strategy
    unit = "a number in [0, 1)"
    for key, ok, allowed in (
        ("momentum", lambda v: 0 <= v < 1, unit),  # FedAvgM
        ("beta1", lambda v: 0 <= v < 1, unit),  # FedAdam, FedYogi
        ("beta2", lambda v: 0 <= v < 1, unit),
        ("tau", lambda v: v > 0, "a number > 0"),  # adaptivity (the optimizer's eps)
        ("alpha", lambda v: v > 0, "a number > 0"),  # FedDyn
        ("q", lambda v: v >= 0, "a number >= 0"),  # q-FFL
        ("lam", lambda v: v >= 0, "a number >= 0"),  # Ditto
        ("local_lr", lambda v: v > 0, "a number > 0, or null for trainer.lr"),  # SCAFFOLD
        ("lipschitz", lambda v: v > 0, "a number > 0, or null for 1/trainer.lr"),  # q-FFL
        ("local_momentum", lambda v: 0 <= v < 1, "a number in [0, 1), or null"),  # FedNova
    ):
        value = strategy.get(key)
        if value is not None:
            require(cfg, f"strategy.{key}", is_number(value) and ok(value), allowed)
    if strategy.get("nesterov"):
        require(cfg, "strategy.nesterov", (strategy.get("momentum") or 0) > 0, "true only with strategy.momentum > 0")


def _check_partition(cfg: DictConfig) -> None:
    partition = cfg.partition
    if "alpha" in partition:
        _positive_number(cfg, "partition.alpha")
    if "num_clients" in partition:
        _int_at_least(cfg, "partition.num_clients", 1)


def _check_sampler(cfg: DictConfig) -> None:
    sampler = cfg.sampler
    if sampler.get("fraction") is not None:
        f = sampler.fraction
        require(cfg, "sampler.fraction", is_number(f) and 0 < f <= 1, "a number in (0, 1]")
    elif sampler.get("clients_per_round") is not None:
        _int_at_least(cfg, "sampler.clients_per_round", 1)
    for key, ok, allowed in (  # fedtorch.samplers: Poisson rate, availability, system heterogeneity
        ("q", lambda v: 0 < v <= 1, "a number in (0, 1]"),
        ("availability", lambda v: 0 <= v <= 1, "a number in [0, 1]"),
        ("amplitude", lambda v: 0 <= v <= 1, "a number in [0, 1]"),
        ("dropout", lambda v: 0 <= v < 1, "a number in [0, 1)"),
        ("stragglers", lambda v: 0 <= v <= 1, "a number in [0, 1]"),
        ("min_work", lambda v: 0 <= v <= 1, "a number in [0, 1]"),
    ):
        value = sampler.get(key)
        if value is not None:
            require(cfg, f"sampler.{key}", is_number(value) and ok(value), allowed)
    if sampler.get("period") is not None:
        _int_at_least(cfg, "sampler.period", 1)


def validate_backend(cfg: DictConfig) -> None:
    """backend options, and torchrun only with backend=distributed (else every process would run
    the whole experiment on its own)."""
    from fedtorch.backends.distributed import launched_by_torchrun

    backend = cfg.backend
    target = str(backend.get("_target_", ""))
    if "chunk_size" in backend:
        size = backend.chunk_size
        require(
            cfg,
            "backend.chunk_size",
            size is None or (is_int(size) and size >= 1),
            "an integer >= 1, or null for the whole round",
        )
    if "inner" in backend:
        require(cfg, "backend.inner", backend.inner in ("sequential", "vectorized"), "sequential or vectorized")
    if launched_by_torchrun() and int(os.environ["WORLD_SIZE"]) > 1 and not target.endswith("DistributedBackend"):
        allowed = f"torchrun started {os.environ['WORLD_SIZE']} processes: use backend=distributed"
        raise ConfigError("backend", target.rsplit(".", 1)[-1], allowed)


def _check_logging(cfg: DictConfig) -> None:
    for key, value in (cfg.get("logging") or {}).items():
        if key in ("tensorboard", "metrics_file", "progress"):
            require(cfg, f"logging.{key}", isinstance(value, bool), "true or false")


def validate(cfg: DictConfig) -> None:
    """Checks that need no data: fail before any work or file writing."""
    _check_run(cfg)
    _check_trainer(cfg)
    _check_strategy(cfg)
    _check_partition(cfg)
    _check_sampler(cfg)
    _check_logging(cfg)
    validate_backend(cfg)


def validate_federation(cfg: DictConfig, num_clients: int) -> None:
    """Checks that need the federation's size (after loading the data, before building anything)."""
    m = cfg.sampler.get("clients_per_round")
    if m is not None and cfg.sampler.get("fraction") is None:
        require(
            cfg,
            "sampler.clients_per_round",
            m <= num_clients,
            f"at most the number of clients in the federation ({num_clients})",
        )


def validate_cohort(sampler: Any, strategy: Any) -> None:
    """A robust aggregator's minimum number of updates (Krum: 2f + 3) against the expected cohort.

    `sampler` must be set up (`sampler.setup(client_sizes)`); still before any file is written.
    """
    aggregator = getattr(strategy, "aggregator", None)
    needed = getattr(aggregator, "min_updates", 1)
    if needed <= 1:
        return
    cohort = sampler.expected_cohort_size()
    if cohort < needed:
        f = getattr(aggregator, "f", None)
        assumed = f" with f={f} assumed attackers" if f is not None else ""
        raise ConfigError(
            "strategy.aggregator",
            type(aggregator).__name__,
            f"needs at least {needed} updates per round{assumed}, but the sampler gives {cohort:g} clients per "
            "round: raise sampler.clients_per_round or lower strategy.aggregator.f",
        )


# -- errors raised outside `validate`, as one line ---------------------------------------------------
def _one_line(text: str) -> str:
    return " ".join(line.strip() for line in str(text).splitlines() if line.strip())


def data_error(cfg: DictConfig, error: BaseException) -> ConfigError:
    """A dataset loader's FileNotFoundError as a ConfigError on `data_dir`."""
    return ConfigError("data_dir", cfg.get("data_dir"), _one_line(str(error)))


def instantiation_error(key: str, error: BaseException) -> ConfigError | None:
    """A `_target_` constructor's ValueError/TypeError (wrapped by Hydra) as a ConfigError on the group.

    None when the cause is something else (a bug, not a config value): that one keeps its traceback.
    """
    cause = error.__cause__
    if not isinstance(cause, (ValueError, TypeError)):
        return None
    found = re.search(r"full_key:\s*(\S+)", str(error))
    where = found.group(1) if found else key
    target = re.search(r"target '([^']+)'", str(error))
    value = target.group(1) if target else key
    return ConfigError(where, value, _one_line(str(cause)))


def describe_hydra_error(error: BaseException, argv: Sequence[str] = ()) -> str:
    """One line for an error Hydra raises while composing the config (`argv`: the command line's overrides)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import MissingConfigException, OverrideParseException

    text = str(error)
    if isinstance(error, OverrideParseException):
        parser = OverridesParser.create()
        for arg in argv:
            if arg.startswith("-") or "=" not in arg:
                continue
            try:
                parser.parse_overrides([arg])
            except OverrideParseException:
                first = _one_line(text.split("See https://")[0])
                return f"cannot parse the override {arg!r} ({first}); the syntax is key=value, and key=a,b sweeps"
    if isinstance(error, MissingConfigException) and error.missing_cfg_file and "/" in error.missing_cfg_file:
        group, _, option = error.missing_cfg_file.rpartition("/")
        options = sorted(error.options or [])
        allowed = f"choose one of {', '.join(options)}" if options else f"no options found in conf/{group}"
        return str(ConfigError(group.replace("/", "."), option, allowed))
    found = re.search(r"Could not override '([^']+)'", text)
    if found:
        key = found.group(1)
        cause = _one_line(str(error.__cause__)) if error.__cause__ is not None else ""
        reason = cause.split(" full_key:")[0] if cause else "no such key"
        return f"{key}: cannot override ({reason}); check the spelling, or add a new key with +{key}=..."
    # Drop Hydra's search-path listing; keep the message itself.
    return _one_line(text.split("Config search path")[0])
