"""From privacy options (a plain mapping, e.g. the `privacy` config group) to mechanism objects.

Three modes:

- `none`: nothing.
- `central`: DP-FedAvg (`CentralDP`): clipping on the client side, noise and accounting on the
  server side, a `PrivacyBudget` callback. The accountant's sampling is read off the sampler
  (`sampling_of`), so a sampler it cannot model is refused instead of misreported.
- `local`: the trainer becomes a `DPSGDTrainer`; `LocalDPAccounting` counts every client's steps.

A bad option raises `PrivacyOptionError` (key, value, allowed), which the CLI reports as one line.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fedtorch.aggregators import WeightedMean
from fedtorch.callbacks.base import Callback
from fedtorch.client import LocalTrainer
from fedtorch.privacy.accounting import (
    ACCOUNTANTS,
    PrivacyAccountant,
    calibrate_noise_multiplier,
    require_library,
    sampling_of,
)
from fedtorch.privacy.budget import PrivacyBudget
from fedtorch.privacy.central import CentralDP
from fedtorch.privacy.dpsgd import DPSGDTrainer, LocalDPAccounting
from fedtorch.strategies.base import Strategy, UpdateTransform

log = logging.getLogger("fedtorch")
MODES = ("none", "central", "local")


class PrivacyOptionError(ValueError):
    """A bad privacy option: `key` (e.g. "privacy.clip_norm"), its `value`, and what is `allowed`."""

    def __init__(self, key: str, value: Any, allowed: str) -> None:
        super().__init__(f"{key}={value!r} is invalid: {allowed}")
        self.key, self.value, self.allowed = key, value, allowed


@dataclass
class PrivacySetup:
    """What a privacy mode adds to a run.

    Attributes:
        trainer: the local trainer to use (DP-SGD for local DP, else the one given).
        client_side: transforms that run on the client, before any secure aggregation.
        server_side: transforms that run on the server, after secure aggregation.
        callbacks: the privacy budget (stopping rule, epsilon into the summary).
    """

    trainer: LocalTrainer
    client_side: list[UpdateTransform] = field(default_factory=list)
    server_side: list[UpdateTransform] = field(default_factory=list)
    callbacks: list[Callback] = field(default_factory=list)


def _number(options: Mapping[str, Any], key: str, low: float, *, strict: bool, default: Any = None) -> float:
    value = options.get(key, default)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if strict else value >= low)
    if not ok:
        raise PrivacyOptionError(f"privacy.{key}", value, f"a number {'>' if strict else '>='} {low:g}")
    return float(value)


def build_privacy(
    options: Mapping[str, Any],
    *,
    sampler: Any,
    strategy: Strategy,
    trainer: LocalTrainer,
    client_sizes: Sequence[int],
    rounds: int,
    seed: int,
) -> PrivacySetup:
    """Objects for the privacy `options`; `sampler` must be set up (its cohort size is needed)."""
    mode = options.get("mode", "none")
    if mode not in MODES:
        raise PrivacyOptionError("privacy.mode", mode, f"one of {', '.join(MODES)}")
    if mode == "none":
        return PrivacySetup(trainer=trainer)
    try:
        require_library()
    except ImportError as error:
        raise PrivacyOptionError("privacy.mode", mode, str(error)) from error
    method = options.get("accountant", "rdp")
    if method not in ACCOUNTANTS:
        raise PrivacyOptionError("privacy.accountant", method, f"one of {', '.join(ACCOUNTANTS)}")
    target = options.get("target_epsilon")
    if target is not None:
        target = _number(options, "target_epsilon", 0.0, strict=True)
    delta = options.get("delta")
    if delta is not None and not (isinstance(delta, (int, float)) and 0 < delta < 1):
        raise PrivacyOptionError("privacy.delta", delta, "a number in (0, 1), or null for the default")
    if mode == "central":
        return _central(options, sampler, strategy, trainer, len(client_sizes), rounds, seed, method, target, delta)
    return _local(options, trainer, client_sizes, method, target, delta)


def _central(
    options: Mapping[str, Any],
    sampler: Any,
    strategy: Strategy,
    trainer: LocalTrainer,
    num_clients: int,
    rounds: int,
    seed: int,
    method: str,
    target: float | None,
    delta: float | None,
) -> PrivacySetup:
    clip_norm = _number(options, "clip_norm", 0.0, strict=True)
    noise_multiplier = _number(options, "noise_multiplier", 0.0, strict=False, default=1.0)
    if not isinstance(strategy.aggregator, WeightedMean):
        raise PrivacyOptionError(
            "strategy.aggregator",
            type(strategy.aggregator).__name__,
            "central DP needs the mean aggregator (its sensitivity to one client is C / E[m]); "
            "robust reducers such as median or Krum are not covered",
        )
    if type(strategy).client_weight is not Strategy.client_weight:
        raise PrivacyOptionError(
            "strategy", type(strategy).__name__, "central DP needs uniform client weights; this strategy sets its own"
        )
    if type(strategy).on_update is not Strategy.on_update:
        raise PrivacyOptionError(
            "strategy",
            type(strategy).__name__,
            "central DP covers only the noised aggregate, and this strategy keeps server state from individual "
            "updates (use a FedAvg/FedOpt-family strategy: fedavg, fedavgm, fedadam, fedadagrad, fedyogi, fedprox)",
        )
    try:
        sampling = sampling_of(sampler)
    except ValueError as error:
        raise PrivacyOptionError("sampler", type(sampler).__name__, str(error)) from error
    # McMahan et al. 2018 take delta = N^-1.1 for N users: smaller than 1/N, as it must be.
    delta = float(delta) if delta is not None else num_clients**-1.1
    if options.get("calibrate", False):
        if target is None:
            raise PrivacyOptionError("privacy.calibrate", True, "calibration needs privacy.target_epsilon")
        noise_multiplier = calibrate_noise_multiplier(sampling, target, delta, rounds, method)
        log.info("privacy: noise multiplier %.4f spends epsilon %g over %d rounds", noise_multiplier, target, rounds)
    try:
        accountant = PrivacyAccountant(sampling, noise_multiplier, delta, method)
    except ValueError as error:
        raise PrivacyOptionError("privacy.accountant", method, str(error)) from error
    if target is not None and accountant.epsilon_after(1) > target:
        raise PrivacyOptionError(
            "privacy.target_epsilon",
            target,
            f"one round already costs epsilon {accountant.epsilon_after(1):.4g}: raise privacy.noise_multiplier "
            "or the target",
        )
    # E[m] of clients that report back: the sampler's expected cohort times the share that does not drop out.
    normalizer = sampler.expected_cohort_size() * (1.0 - float(getattr(sampler, "dropout", 0.0)))
    adaptive = bool(options.get("adaptive", False))
    try:
        mechanism = CentralDP(
            clip_norm=clip_norm,
            noise_multiplier=noise_multiplier,
            expected_cohort_size=normalizer,
            accountant=accountant,
            seed=seed,
            adaptive=adaptive,
            target_quantile=options.get("target_quantile", 0.5),
            clip_lr=options.get("clip_lr", 0.2),
            clipped_count_stddev=options.get("clipped_count_stddev"),
        )
    except ValueError as error:
        raise PrivacyOptionError("privacy", dict(options), str(error)) from error
    log.info(
        "privacy: DP-FedAvg, %s sampling (q=%.4g), z=%.4g, C=%g%s, E[m]=%g, delta=%.3g, %s accountant",
        sampling.kind,
        sampling.rate,
        noise_multiplier,
        clip_norm,
        " (adaptive)" if adaptive else "",
        normalizer,
        delta,
        method,
    )
    return PrivacySetup(
        trainer=trainer,
        client_side=[mechanism.clipper],
        server_side=[mechanism],
        callbacks=[PrivacyBudget(mechanism, target, mode="central")],
    )


def _local(
    options: Mapping[str, Any],
    trainer: LocalTrainer,
    client_sizes: Sequence[int],
    method: str,
    target: float | None,
    delta: float | None,
) -> PrivacySetup:
    noise_multiplier = _number(options, "noise_multiplier", 0.0, strict=False, default=1.0)
    max_grad_norm = _number(options, "max_grad_norm", 0.0, strict=True, default=1.0)
    try:
        dp_trainer = DPSGDTrainer.from_trainer(trainer, noise_multiplier, max_grad_norm)
    except ValueError as error:
        raise PrivacyOptionError("trainer", type(trainer).__name__, str(error)) from error
    delta = float(delta) if delta is not None else 1e-5
    ledger = LocalDPAccounting(dp_trainer, client_sizes, delta, method)
    if target is not None and ledger.next_epsilon() > target:
        raise PrivacyOptionError(
            "privacy.target_epsilon",
            target,
            f"one round of local DP-SGD already costs epsilon {ledger.next_epsilon():.4g}: raise "
            "privacy.noise_multiplier, lower trainer.epochs or trainer.batch_size, or raise the target",
        )
    return PrivacySetup(
        trainer=dp_trainer,
        server_side=[ledger],
        callbacks=[PrivacyBudget(ledger, target, mode="local")],
    )
