"""Central, user-level differential privacy: DP-FedAvg with fixed or adaptive clipping.

DP-FedAvg (McMahan, Ramage, Talwar and Zhang 2018, "Learning Differentially Private Recurrent
Language Models"): every client's update is clipped to L2 norm C, the server adds Gaussian noise
with standard deviation z*C to the *sum* of the clipped updates, and divides by the *expected*
cohort size E[m] (a public constant, so one user changes the estimate by at most C / E[m]):

    Delta = (sum_k clip(Delta_k, C) + N(0, (z C)^2 I)) / E[m]

The core aggregator is a (sample-)weighted mean; DP-FedAvg needs uniform weights, so the clipping
transform switches the strategy to unweighted aggregation (`strategy.weighted = False`), turns the
uniform mean back into the sum (times the number of updates received), adds the noise and
divides by E[m]. Strategies with their own `client_weight` and reducers other than the mean
(median, Krum) are refused: their sensitivity is not C.

Adaptive clipping (Andrew, Thakkar, McMahan and Ramaswamy 2021, "Differentially Private Learning
with Adaptive Clipping") tracks a quantile gamma of the update norms: each client reports
b_k = 1[||Delta_k|| <= C]; the server releases the noised fraction
b = (sum_k (b_k - 1/2) + N(0, sigma_b^2)) / E[m] + 1/2 and moves C <- C * exp(-eta (b - gamma)).
The count release uses part of the budget: the update noise multiplier becomes
z_Delta = (z^-2 - (2 sigma_b)^-2)^(-1/2), so that both releases together are exactly a Gaussian
mechanism with multiplier z, which is what the accountant composes.

The mechanism is two transforms: `DPClip` (client side: clip, count) and `CentralDP` (server side:
noise, adaptive C, accounting). With secure aggregation between them the server only sees the
sum, as in the real protocol; `CentralDP` then reads the number of updates that really arrived
from the secure aggregator (clients that drop out contribute nothing).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from fedtorch.aggregators import WeightedMean
from fedtorch.client import ClientUpdate
from fedtorch.privacy.accounting import PrivacyAccountant
from fedtorch.seeding import torch_generator
from fedtorch.strategies.base import Strategy, UpdateTransform


def clip_by_norm(vector: Tensor, clip_norm: float | Tensor) -> tuple[Tensor, Tensor]:
    """`vector * min(1, C / ||vector||)` and whether it was within C (0-d bool), without a host sync."""
    norm = vector.norm()
    within = norm <= clip_norm
    factor = torch.clamp(clip_norm / torch.clamp(norm, min=1e-12), max=1.0)
    return vector * factor.to(vector.dtype), within


class DPClip(UpdateTransform):
    """Client side of DP-FedAvg: clip each update to norm C (and count the unclipped ones)."""

    def __init__(self, mechanism: CentralDP) -> None:
        self.mechanism = mechanism
        self.within: dict[int, Tensor] = {}

    def setup(self, strategy: Strategy) -> None:
        if not isinstance(strategy.aggregator, WeightedMean):
            raise ValueError(
                f"central DP needs the mean aggregator (its sensitivity is C / E[m]); "
                f"{type(strategy.aggregator).__name__} is not supported"
            )
        if type(strategy).client_weight is not Strategy.client_weight:
            raise ValueError(f"central DP needs uniform client weights; {type(strategy).__name__} sets its own")
        if type(strategy).on_update is not Strategy.on_update:
            # SCAFFOLD, FedDyn, FedNova keep server state from individual updates (or their
            # extras), which the noise does not cover.
            raise ValueError(
                f"central DP covers only the noised aggregate; {type(strategy).__name__} reads individual updates"
            )
        # DP-FedAvg's estimator is sum_k clip(Delta_k) / E[m]: every client counts the same.
        strategy.weighted = False

    def begin_round(self, round_idx: int, client_ids: Any) -> None:
        self.within: dict[int, Tensor] = {}

    def on_update(self, round_idx: int, update: ClientUpdate) -> ClientUpdate:
        update.delta, within = clip_by_norm(update.delta, self.mechanism.clip_norm)
        self.within[update.client_id] = within
        return update

    def merge(self, group: dist.ProcessGroup | None = None) -> None:
        # Every process learns which clients reported and which were within C (the server's count).
        parts: list[Any] = [None] * dist.get_world_size(group)
        dist.all_gather_object(parts, {k: bool(v) for k, v in self.within.items()}, group=group)
        self.within = {k: torch.tensor(v) for part in parts for k, v in part.items()}


class CentralDP(UpdateTransform):
    """Server side of DP-FedAvg: noise on the sum, normalization by E[m], adaptive C, accounting.

    A round in which no client reports (Poisson sampling) still releases noise / E[m]
    (`releases_empty_rounds`): skipping it would tell the world the cohort was empty.

    Args:
        clip_norm: C (the initial C with adaptive clipping).
        noise_multiplier: z, the total noise multiplier the accountant sees.
        expected_cohort_size: E[m], the public normalizer (`sampler.expected_cohort_size()` times
            the probability of reporting back).
        accountant: composes one release per round; None reports no epsilon.
        seed: root seed; the noise of round r comes from (seed, "dp_noise", r).
        adaptive: track the `target_quantile` of update norms (Andrew et al. 2021).
        target_quantile: gamma; 0.5 tracks the median norm.
        clip_lr: eta, the geometric learning rate of C.
        clipped_count_stddev: sigma_b; None uses E[m] / 20 (Andrew et al.'s choice).
    """

    def __init__(
        self,
        clip_norm: float,
        noise_multiplier: float,
        expected_cohort_size: float,
        accountant: PrivacyAccountant | None = None,
        seed: int = 0,
        adaptive: bool = False,
        target_quantile: float = 0.5,
        clip_lr: float = 0.2,
        clipped_count_stddev: float | None = None,
    ) -> None:
        if clip_norm <= 0:
            raise ValueError(f"clip_norm={clip_norm} must be > 0")
        if noise_multiplier < 0:
            raise ValueError(f"noise_multiplier={noise_multiplier} must be >= 0")
        if expected_cohort_size <= 0:
            raise ValueError(f"expected cohort size {expected_cohort_size} must be > 0")
        if not 0.0 <= target_quantile <= 1.0:
            raise ValueError(f"target_quantile={target_quantile} must be in [0, 1]")
        self.clip_norm = float(clip_norm)
        self.noise_multiplier = float(noise_multiplier)
        self.expected_cohort_size = float(expected_cohort_size)
        self.accountant = accountant
        self.seed = seed
        self.adaptive = adaptive
        self.target_quantile = target_quantile
        self.clip_lr = clip_lr
        self.count_stddev = 0.0
        self.update_noise_multiplier = self.noise_multiplier
        if adaptive:
            self.count_stddev = expected_cohort_size / 20 if clipped_count_stddev is None else clipped_count_stddev
            if self.noise_multiplier > 0:
                if 2 * self.count_stddev <= self.noise_multiplier:
                    raise ValueError(
                        f"clipped_count_stddev={self.count_stddev:g} must exceed noise_multiplier / 2 "
                        f"= {self.noise_multiplier / 2:g} (Andrew et al. 2021 split z between the update and the count)"
                    )
                self.update_noise_multiplier = (self.noise_multiplier**-2 - (2 * self.count_stddev) ** -2) ** -0.5
        self.clipper = DPClip(self)
        self.releases_empty_rounds = True
        self._metrics: dict[str, float] = {}

    def transforms(self) -> list[UpdateTransform]:
        """Client-side clipping, then server-side noise (other transforms may go in between)."""
        return [self.clipper, self]

    def setup(self, strategy: Strategy) -> None:
        # Updates that really reached the server: a secure aggregator upstream knows about dropouts.
        self._arrivals = None
        for transform in strategy.transforms:
            if transform is self:
                break
            if hasattr(transform, "received_clients"):
                self._arrivals = transform

    def begin_round(self, round_idx: int, client_ids: Any) -> None:
        self._metrics = {}

    def on_aggregate(self, round_idx: int, aggregate: Tensor, num_updates: int) -> Tensor:
        source = self._arrivals.received_clients if self._arrivals is not None else self.clipper.within
        arrived = list(source)
        # The uniform mean over the arrived updates, turned back into their sum.
        total = aggregate * float(len(arrived))
        generator = torch_generator(self.seed, "dp_noise", round_idx)
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

    def round_metrics(self) -> dict[str, float]:
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
            "accountant": None if self.accountant is None else self.accountant.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.clip_norm = float(state["clip_norm"])
        if self.accountant is not None and state.get("accountant") is not None:
            self.accountant.load_state_dict(state["accountant"])
