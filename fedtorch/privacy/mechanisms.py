"""The privacy config group's objects: what a privacy choice adds to a run.

A mechanism is built from its config group like every other component (`_target_` + options) and
checks its options when it is built, before any data is loaded. It then contributes, at
assembly:

- `wrap_trainer(trainer)`: the local trainer to use (DP-SGD for local DP);
- `client_transforms()` / `server_transforms()`: update transforms that run before secure
  aggregation (clipping) and after it (noise, accounting);
- `callbacks()`: the privacy budget (no round past the target; epsilon into the summary).

    DPFedAvg    user-level central DP: clip, noise the sum, adaptive clipping  (central.py)
    LocalDPSGD  sample-level DP-SGD on every client, per-client accounting      (dpsgd.py)

The accountant's sampling is read off the sampler at set-up (`PipelineContext.sampling`), so a
sampler it cannot model is refused instead of misreported.
"""

from __future__ import annotations

from fedtorch.callbacks.base import Callback
from fedtorch.client import LocalTrainer
from fedtorch.errors import OptionError, check_number
from fedtorch.pipeline import UpdateTransform
from fedtorch.privacy.accounting import require_library
from fedtorch.privacy.budget import PrivacyBudget
from fedtorch.privacy.central import Accounting, CentralDP, check_accountant
from fedtorch.privacy.dpsgd import DPSGDTrainer, LocalDPAccounting


def _delta(delta: float | None) -> float | None:
    if delta is not None:
        check_number("privacy.delta", delta, 0.0, 1.0, low_open=True, high_open=True, none=True)
    return None if delta is None else float(delta)


def _library(mode: str) -> None:
    try:
        require_library()
    except ImportError as error:
        raise OptionError("privacy", mode, str(error)) from error


class PrivacyMechanism:
    """Base: what a privacy choice adds (nothing here)."""

    mode = "none"

    def wrap_trainer(self, trainer: LocalTrainer) -> LocalTrainer:
        return trainer

    def client_transforms(self) -> list[UpdateTransform]:
        return []

    def server_transforms(self) -> list[UpdateTransform]:
        return []

    def callbacks(self) -> list[Callback]:
        return []


class DPFedAvg(PrivacyMechanism):
    """DP-FedAvg (McMahan et al. 2018) with fixed or adaptive clipping (Andrew et al. 2021).

    Args:
        clip_norm: C (the initial C when adaptive).
        noise_multiplier: z (ignored with `calibrate`).
        delta: the target delta; None: N^-1.1 for N clients.
        target_epsilon: no round starts that would exceed it; None: no limit.
        calibrate: pick z so that the planned rounds spend exactly `target_epsilon`.
        accountant: "rdp" (any supported sampler) or "pld" (Poisson or full participation).
        adaptive, target_quantile, clip_lr, clipped_count_stddev: adaptive clipping (see `CentralDP`).
    """

    mode = "central"

    def __init__(
        self,
        clip_norm: float = 1.0,
        noise_multiplier: float = 1.0,
        delta: float | None = None,
        target_epsilon: float | None = None,
        calibrate: bool = False,
        accountant: str = "rdp",
        adaptive: bool = False,
        target_quantile: float = 0.5,
        clip_lr: float = 0.2,
        clipped_count_stddev: float | None = None,
    ) -> None:
        _library(self.mode)
        target = check_number("privacy.target_epsilon", target_epsilon, 0.0, low_open=True, none=True)
        if calibrate and target is None:
            raise OptionError("privacy.calibrate", calibrate, "calibration needs privacy.target_epsilon")
        accounting = Accounting(check_accountant(accountant), _delta(delta), target, bool(calibrate))
        self.target_epsilon = target
        self.mechanism = CentralDP(
            clip_norm=clip_norm,
            noise_multiplier=noise_multiplier,
            accounting=accounting,
            adaptive=adaptive,
            target_quantile=target_quantile,
            clip_lr=clip_lr,
            clipped_count_stddev=clipped_count_stddev,
        )

    def client_transforms(self) -> list[UpdateTransform]:
        return [self.mechanism.clipper]

    def server_transforms(self) -> list[UpdateTransform]:
        return [self.mechanism]

    def callbacks(self) -> list[Callback]:
        return [PrivacyBudget(self.mechanism, self.target_epsilon, mode=self.mode)]


class LocalDPSGD(PrivacyMechanism):
    """DP-SGD (Abadi et al. 2016) on every client; sample-level epsilon of the worst client.

    Args:
        noise_multiplier: sigma.
        max_grad_norm: C, the per-sample clipping norm.
        delta: every client's target delta.
        target_epsilon: no round starts that could take any client past it.
        accountant: "rdp" or "pld".
    """

    mode = "local"

    def __init__(
        self,
        noise_multiplier: float = 1.0,
        max_grad_norm: float = 1.0,
        delta: float = 1e-5,
        target_epsilon: float | None = None,
        accountant: str = "rdp",
    ) -> None:
        _library(self.mode)
        self.noise_multiplier = check_number("privacy.noise_multiplier", noise_multiplier, 0.0)
        self.max_grad_norm = check_number("privacy.max_grad_norm", max_grad_norm, 0.0, low_open=True)
        self.delta = _delta(delta) or 1e-5
        self.target_epsilon = check_number("privacy.target_epsilon", target_epsilon, 0.0, low_open=True, none=True)
        self.method = check_accountant(accountant)
        self.ledger: LocalDPAccounting | None = None

    def wrap_trainer(self, trainer: LocalTrainer) -> LocalTrainer:
        if type(trainer) is not LocalTrainer:
            raise OptionError("trainer", type(trainer).__name__, "local DP-SGD replaces the plain LocalTrainer")
        dp_trainer = DPSGDTrainer.from_trainer(trainer, self.noise_multiplier, self.max_grad_norm)
        self.ledger = LocalDPAccounting(
            dp_trainer, delta=self.delta, method=self.method, target_epsilon=self.target_epsilon
        )
        return dp_trainer

    def server_transforms(self) -> list[UpdateTransform]:
        if self.ledger is None:
            raise RuntimeError("LocalDPSGD.wrap_trainer must come first")
        return [self.ledger]

    def callbacks(self) -> list[Callback]:
        assert self.ledger is not None
        return [PrivacyBudget(self.ledger, self.target_epsilon, mode=self.mode)]
