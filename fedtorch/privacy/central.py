"""Central, user-level differential privacy: DP-FedAvg with fixed or adaptive clipping.

DP-FedAvg (McMahan, Ramage, Talwar and Zhang 2018, "Learning Differentially Private Recurrent
Language Models"): every client's update is clipped to L2 norm C, the server adds Gaussian noise
with standard deviation z*C to the *sum* of the clipped updates, and divides by the *expected*
cohort size E[m] (a public constant, so one user changes the estimate by at most C / E[m]):

    Delta = (sum_k clip(Delta_k, C) + N(0, (z C)^2 I)) / E[m]

DP-FedAvg's estimator weights every client the same, so the transforms declare
`needs_uniform_weights` and `needs_mean`: the experiment then builds the pipeline with uniform
weights, and `fedtorch.compatibility` refuses strategies with their own weights or per-update
server state and reducers other than the mean (median, Krum): their sensitivity is not C. E[m]
is the expected number of updates that *reach* the aggregate: the sampler's expected cohort times
the probability of reporting, over every source of dropout (the sampler's, secure
aggregation's), from the pipeline context.

Adaptive clipping (Andrew, Thakkar, McMahan and Ramaswamy 2021, "Differentially Private Learning
with Adaptive Clipping") tracks a quantile gamma of the update norms: each client reports
b_k = 1[||Delta_k|| <= C]; the server releases the noised fraction
b = (sum_k (b_k - 1/2) + N(0, sigma_b^2)) / E[m] + 1/2 and moves C <- C * exp(-eta (b - gamma)).
The count release uses part of the budget: the update noise multiplier becomes
z_Delta = (z^-2 - (2 sigma_b)^-2)^(-1/2), so that both releases together are exactly a Gaussian
mechanism with multiplier z, which is what the accountant composes.

The mechanism is two transforms: `DPClip` (client side: clip, count) and `CentralDP` (server side:
noise, adaptive C, accounting). With secure aggregation between them the server only sees the
sum, as in the real protocol; `CentralDP` then counts the updates that really arrived from the
step record (secure aggregation removes the clients that dropped out).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from fedtorch.client import ClientUpdate
from fedtorch.errors import OptionError, check_number
from fedtorch.pipeline import PipelineContext, StepRecord, UpdateTransform
from fedtorch.privacy.accounting import ACCOUNTANTS, PrivacyAccountant, Sampling, calibrate_noise_multiplier
from fedtorch.seeding import torch_generator

log = logging.getLogger("fedtorch")


def clip_by_norm(vector: Tensor, clip_norm: float | Tensor) -> tuple[Tensor, Tensor]:
    """`vector * min(1, C / ||vector||)` and whether it was within C (0-d bool), without a host sync."""
    norm = vector.norm()
    within = norm <= clip_norm
    factor = torch.clamp(clip_norm / torch.clamp(norm, min=1e-12), max=1.0)
    return vector * factor.to(vector.dtype), within


class DPClip(UpdateTransform):
    """Client side of DP-FedAvg: clip each update to norm C (and count the unclipped ones)."""

    group = "privacy"
    needs_uniform_weights = True
    needs_mean = True

    def __init__(self, mechanism: CentralDP) -> None:
        self.mechanism = mechanism
        self.within: dict[int, Tensor] = {}

    def begin(self, record: StepRecord) -> None:
        self.within = {}

    def on_update(self, update: ClientUpdate, record: StepRecord) -> ClientUpdate:
        update.delta, within = clip_by_norm(update.delta, self.mechanism.clip_norm)
        self.within[update.client_id] = within
        return update

    def merge(self, group: dist.ProcessGroup | None = None) -> None:
        # Every process learns which clients reported and which were within C (the server's count).
        parts: list[Any] = [None] * dist.get_world_size(group)
        dist.all_gather_object(parts, {k: bool(v) for k, v in self.within.items()}, group=group)
        self.within = {k: torch.tensor(v) for part in parts for k, v in part.items()}


@dataclass(frozen=True)
class Accounting:
    """How `CentralDP` builds its accountant once the sampling scheme is known (at set-up).

    Attributes:
        method: "rdp" or "pld".
        delta: the target delta; None takes N^-1.1 for N clients (McMahan et al. 2018: smaller
            than 1/N, as it must be).
        target_epsilon: the budget (None: account without a limit).
        calibrate: choose the noise multiplier so that the planned rounds spend the target.
    """

    method: str = "rdp"
    delta: float | None = None
    target_epsilon: float | None = None
    calibrate: bool = False


class CentralDP(UpdateTransform):
    """Server side of DP-FedAvg: noise on the sum, normalization by E[m], adaptive C, accounting.

    A step in which no client reports (Poisson sampling) still releases noise / E[m]
    (`releases_empty_steps`): skipping it would tell the world the cohort was empty.

    Args:
        clip_norm: C (the initial C with adaptive clipping).
        noise_multiplier: z, the total noise multiplier the accountant sees.
        expected_cohort_size: E[m], the public normalizer; None takes the pipeline context's
            expected number of reports (the sampler's cohort times P(report) over every dropout).
        accountant: composes one release per step; None (and no `accounting`) reports no epsilon.
        accounting: build the accountant at set-up from the run's sampling scheme instead.
        seed: root seed; the noise of step r comes from (seed, "dp_noise", r); None: the run's.
        adaptive: track the `target_quantile` of update norms (Andrew et al. 2021).
        target_quantile: gamma; 0.5 tracks the median norm.
        clip_lr: eta, the geometric learning rate of C.
        clipped_count_stddev: sigma_b; None uses max(E[m] / 20, z): Andrew et al.'s E[m] / 20,
            raised to z where that is smaller, so that 2 sigma_b > z always holds (the split of z
            between the update and the count needs it) at a cost of at most 15% more update noise.
    """

    group = "privacy"
    needs_uniform_weights = True
    needs_mean = True
    releases_empty_steps = True

    def __init__(
        self,
        clip_norm: float,
        noise_multiplier: float,
        expected_cohort_size: float | None = None,
        accountant: PrivacyAccountant | None = None,
        accounting: Accounting | None = None,
        seed: int | None = None,
        adaptive: bool = False,
        target_quantile: float = 0.5,
        clip_lr: float = 0.2,
        clipped_count_stddev: float | None = None,
    ) -> None:
        self.clip_norm = check_number("privacy.clip_norm", clip_norm, 0.0, low_open=True)
        self.noise_multiplier = check_number("privacy.noise_multiplier", noise_multiplier, 0.0)
        self._given_cohort = check_number(
            "privacy.expected_cohort_size", expected_cohort_size, 0.0, low_open=True, none=True
        )
        self.target_quantile = check_number("privacy.target_quantile", target_quantile, 0.0, 1.0)
        self.clip_lr = check_number("privacy.clip_lr", clip_lr, 0.0)
        self._given_count_stddev = check_number("privacy.clipped_count_stddev", clipped_count_stddev, 0.0, none=True)
        given = self._given_count_stddev
        if adaptive and given is not None and self.noise_multiplier > 0 and 2 * given <= self.noise_multiplier:
            raise OptionError(
                "privacy.clipped_count_stddev",
                given,
                f"more than privacy.noise_multiplier / 2 = {self.noise_multiplier / 2:g} (Andrew et al. 2021 "
                "split z between the update and the count), or null",
            )
        self.accountant = accountant
        self.accounting = accounting
        self._seed = seed
        self.seed = 0 if seed is None else int(seed)
        self.adaptive = bool(adaptive)
        self.clipper = DPClip(self)
        self._metrics: dict[str, float] = {}
        if self._given_cohort is not None:
            self._set_normalizer(self._given_cohort)

    def _set_normalizer(self, expected_cohort_size: float) -> None:
        self.expected_cohort_size = float(expected_cohort_size)
        self.count_stddev = 0.0
        self.update_noise_multiplier = self.noise_multiplier
        if self.adaptive:
            given = self._given_count_stddev
            default = max(self.expected_cohort_size / 20, self.noise_multiplier)
            self.count_stddev = default if given is None else given
            if self.noise_multiplier > 0:
                self.update_noise_multiplier = (self.noise_multiplier**-2 - (2 * self.count_stddev) ** -2) ** -0.5

    def transforms(self) -> list[UpdateTransform]:
        """Client-side clipping, then server-side noise (other transforms may go in between)."""
        return [self.clipper, self]

    def setup(self, context: PipelineContext) -> None:
        if self._seed is None:
            self.seed = context.seed
        if self._given_cohort is None:
            if context.expected_reports <= 0:
                raise OptionError("sampler", context.expected_cohort, "central DP needs E[clients per round] > 0")
            self._set_normalizer(context.expected_reports)
        if self.accounting is not None and self.accountant is None:
            self._build_accountant(context)

    def _build_accountant(self, context: PipelineContext) -> None:
        spec = self.accounting
        assert spec is not None
        if isinstance(context.sampling, str) or context.sampling is None:
            raise OptionError("sampler", "this sampler", str(context.sampling or "no sampling scheme"))
        sampling: Sampling = context.sampling
        delta = float(spec.delta) if spec.delta is not None else context.num_clients**-1.1
        if spec.calibrate:
            if spec.target_epsilon is None:
                raise OptionError("privacy.calibrate", True, "calibration needs privacy.target_epsilon")
            self.noise_multiplier = calibrate_noise_multiplier(
                sampling, spec.target_epsilon, delta, context.rounds, spec.method
            )
            self._set_normalizer(self.expected_cohort_size)
            log.info(
                "privacy: noise multiplier %.4f spends epsilon %g over %d rounds",
                self.noise_multiplier,
                spec.target_epsilon,
                context.rounds,
            )
        try:
            self.accountant = PrivacyAccountant(sampling, self.noise_multiplier, delta, spec.method)
        except ValueError as error:
            raise OptionError("privacy.accountant", spec.method, str(error)) from error
        first = self.accountant.epsilon_after(1)
        if spec.target_epsilon is not None and first > spec.target_epsilon:
            raise OptionError(
                "privacy.target_epsilon",
                spec.target_epsilon,
                f"one round already costs epsilon {first:.4g}: raise privacy.noise_multiplier or the target",
            )
        log.info(
            "privacy: DP-FedAvg, %s sampling (q=%.4g), z=%.4g, C=%g%s, E[m]=%g, delta=%.3g, %s accountant",
            sampling.kind,
            sampling.rate,
            self.noise_multiplier,
            self.clip_norm,
            " (adaptive)" if self.adaptive else "",
            self.expected_cohort_size,
            delta,
            spec.method,
        )

    def begin(self, record: StepRecord) -> None:
        self._metrics = {}

    def on_aggregate(self, aggregate: Tensor, record: StepRecord) -> Tensor | None:
        arrived = record.contributors
        # The uniform mean over the arrived updates, turned back into their sum.
        total = aggregate * float(len(arrived))
        generator = torch_generator(self.seed, "dp_noise", record.step)
        std = self.update_noise_multiplier * self.clip_norm
        noise = torch.randn(aggregate.shape, generator=generator, dtype=torch.float64) * std
        result = (total + noise.to(device=aggregate.device, dtype=aggregate.dtype)) / self.expected_cohort_size
        self._metrics = {
            "privacy/clip_norm": self.clip_norm,
            "privacy/noise_std": std / self.expected_cohort_size,
        }
        if self.adaptive:
            within = sum(float(self.clipper.within[k]) for k in arrived if k in self.clipper.within)
            count_noise = float(torch.randn((), generator=generator, dtype=torch.float64)) * self.count_stddev
            fraction = (within - 0.5 * len(arrived) + count_noise) / self.expected_cohort_size + 0.5
            self.clip_norm *= math.exp(-self.clip_lr * (fraction - self.target_quantile))
            self._metrics["privacy/unclipped_fraction"] = fraction
        if self.accountant is not None:
            self.accountant.step()
        return result

    def step_metrics(self) -> dict[str, float]:
        metrics = dict(self._metrics)
        # No noise means no guarantee: epsilon is infinite and not logged (a non-finite metric
        # would read as divergence).
        if self.accountant is not None and math.isfinite(self.accountant.epsilon):
            metrics["privacy/epsilon"] = self.accountant.epsilon
            metrics["privacy/delta"] = self.accountant.delta
        return metrics

    # -- the budget protocol read by `PrivacyBudget` -------------------------------------------
    @property
    def epsilon(self) -> float:
        return self.accountant.epsilon if self.accountant is not None else float("inf")

    @property
    def delta(self) -> float:
        return self.accountant.delta if self.accountant is not None else 1.0

    def next_epsilon(self) -> float:
        return self.accountant.next_epsilon() if self.accountant is not None else float("inf")

    def state_dict(self) -> dict[str, Any]:
        return {
            "clip_norm": self.clip_norm,
            "noise_multiplier": self.noise_multiplier,
            "accountant": None if self.accountant is None else self.accountant.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.clip_norm = float(state["clip_norm"])
        saved_z = state.get("noise_multiplier")
        if saved_z is not None and float(saved_z) != self.noise_multiplier:
            # A calibrated z depends on the planned rounds: a resumed (or extended) run keeps the z
            # it has been releasing with, and its accountant composes that z.
            self.noise_multiplier = float(saved_z)
            self._set_normalizer(self.expected_cohort_size)
            if self.accountant is not None:
                self.accountant = PrivacyAccountant(
                    self.accountant.sampling, self.noise_multiplier, self.accountant.delta, self.accountant.method
                )
        if self.accountant is not None and state.get("accountant") is not None:
            self.accountant.load_state_dict(state["accountant"])


def check_accountant(method: str) -> str:
    """`method` if it names an accountant, else OptionError on privacy.accountant."""
    if method not in ACCOUNTANTS:
        raise OptionError("privacy.accountant", method, f"one of {', '.join(ACCOUNTANTS)}")
    return method
