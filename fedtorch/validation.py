"""Config validation at the edge: the run-level keys, and Hydra's errors as one line.

Where a value is checked: a component's options are checked by the component's own constructor
(`fedtorch.errors.check_number` and friends raise `OptionError` naming the key), so a library user
and a CLI user get the same refusal and no rule is written twice. What no constructor owns is
checked here by `validate(cfg)`, before anything is built: the run-level keys (`rounds`, `seed`,
`device`, `checkpoint_every`, `logging.*`, ...), the local optimizer's options (a torch class), and
torchrun without `backend=distributed`. Whether the built components can run together is
`fedtorch.compatibility`'s.

The other half: errors that Hydra raises before fedtorch sees the config (an unknown group option,
an unknown key, an override that does not parse), errors of `_target_` constructors, and missing
data folders, are turned into the same kind of one-line message by `describe_hydra_error`,
`instantiation_error` and `data_error`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from fedtorch.errors import OptionError, is_int, is_number  # noqa: F401  (is_*: used below and re-exported)

#: A bad configuration value: the message names the key, the value and what is allowed. The same
#: type as the library's `OptionError`, so a constructor's refusal is a config error as it stands.
ConfigError = OptionError


def require(cfg: DictConfig, key: str, ok: bool, allowed: str) -> None:
    """Raise ConfigError for `key` (with its current value) unless `ok`."""
    if not ok:
        raise ConfigError(key, OmegaConf.select(cfg, key), allowed)


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
    require(cfg, "eval_train", isinstance(cfg.get("eval_train", False), bool), "true or false")
    if cfg.get("eval_train_max_samples") is not None:
        _int_at_least(cfg, "eval_train_max_samples", 1, ", or null for every training sample")
    if "resume" in cfg:
        resume = cfg.resume
        require(cfg, "resume", resume is None or isinstance(resume, str), "auto, null, or a run folder path")
    require(cfg, "dry_run", isinstance(cfg.get("dry_run", False), bool), "true or false")
    threads = cfg.get("num_threads", "auto")
    require(cfg, "num_threads", threads == "auto" or (is_int(threads) and threads >= 1), "auto, or an integer >= 1")
    require(cfg, "device", isinstance(cfg.device, str), "auto, cpu, cuda or cuda:N")
    resolve_device(cfg.device)


def _check_trainer(cfg: DictConfig) -> None:
    """The local optimizer's options: a torch class, whose own errors are not one line."""
    optimizer = cfg.trainer.get("optimizer")
    if isinstance(optimizer, DictConfig):
        if optimizer.get("momentum") is not None:
            m = optimizer.momentum
            require(cfg, "trainer.optimizer.momentum", is_number(m) and 0 <= m < 1, "a number in [0, 1)")
        if optimizer.get("weight_decay") is not None:
            wd = optimizer.weight_decay
            require(cfg, "trainer.optimizer.weight_decay", is_number(wd) and wd >= 0, "a number >= 0")
        if optimizer.get("dampening") is not None:
            d = optimizer.dampening
            require(cfg, "trainer.optimizer.dampening", is_number(d) and 0 <= d <= 1, "a number in [0, 1]")


def validate_backend(cfg: DictConfig, choice: str | None = None) -> None:
    """backend options, and torchrun only with backend=distributed (else every process would run
    the whole experiment on its own)."""
    from fedtorch.backends.distributed import launched_by_torchrun

    target = str(cfg.backend.get("_target_", ""))
    if launched_by_torchrun() and int(os.environ["WORLD_SIZE"]) > 1 and not target.endswith("DistributedBackend"):
        allowed = f"torchrun started {os.environ['WORLD_SIZE']} processes: use backend=distributed"
        raise ConfigError("backend", choice or target.rsplit(".", 1)[-1], allowed)


def _check_logging(cfg: DictConfig) -> None:
    for key, value in (cfg.get("logging") or {}).items():
        if key in ("tensorboard", "metrics_file", "progress"):
            require(cfg, f"logging.{key}", isinstance(value, bool), "true or false")


def validate(cfg: DictConfig, choices: dict[str, Any] | None = None) -> None:
    """The run-level checks: before anything is built, loaded or written."""
    _check_run(cfg)
    _check_trainer(cfg)
    _check_logging(cfg)
    validate_backend(cfg, (choices or {}).get("backend"))


# -- errors raised outside `validate`, as one line ---------------------------------------------------
def _one_line(text: str) -> str:
    return " ".join(line.strip() for line in str(text).splitlines() if line.strip())


def data_error(cfg: DictConfig, error: BaseException) -> ConfigError:
    """A dataset loader's FileNotFoundError as a ConfigError on `data_dir`."""
    return ConfigError("data_dir", cfg.get("data_dir"), _one_line(str(error)))


def instantiation_error(key: str, error: BaseException) -> ConfigError | None:
    """A `_target_` constructor's ValueError/TypeError (wrapped by Hydra) as a ConfigError on the group.

    An `OptionError` already names its key and is returned as it is. None when the cause is
    something else (a bug, not a config value): that one keeps its traceback.
    """
    cause = error.__cause__
    if isinstance(cause, OptionError):
        return cause
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
