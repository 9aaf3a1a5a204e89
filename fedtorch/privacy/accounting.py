"""Privacy accounting, delegated to Google's `dp-accounting` library (never hand-written bounds).

Each round (or each DP-SGD step) is described as a `dp_accounting.DpEvent`, and the library's
accountant composes the events and converts them to (epsilon, delta):

- the RDP accountant (Mironov 2017, "Renyi Differential Privacy"; Mironov, Talwar and Zhang 2019,
  "Renyi Differential Privacy of the Sampled Gaussian Mechanism"), the default;
- the PLD accountant (privacy loss distributions; Koskela et al. 2020, Doroshenko et al. 2022),
  tighter but slower and Poisson-only.

The event must match how participants are *really* sampled, or the reported epsilon is wrong:

    sampler                         event                                        adjacency
    PoissonSampler(q)               PoissonSampled(q, Gaussian(z))               add/remove one
    FullParticipation               Gaussian(z) (no amplification)               add/remove one
    UniformSampler (m of n, WOR)    SampledWithoutReplacement(n, m, Gaussian(z/2))  replace one

Fixed-size sampling without replacement is analysed by Wang, Balle and Kasiviswanathan 2019
("Subsampled Renyi Differential Privacy and Analytical Moments Accountant") under *replace-one*
adjacency, where the clipped sum's sensitivity is 2C, so the accountant's noise multiplier is z/2
(only the RDP accountant supports it). Client dropouts after Poisson sampling keep the sampling
Poisson with rate q * (1 - dropout), which is what we account. Any other sampler is refused.
"""

from __future__ import annotations

import importlib
import logging
from contextlib import contextmanager
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

from fedtorch import samplers as samplers_module

if TYPE_CHECKING:
    import dp_accounting

ACCOUNTANTS = ("rdp", "pld")
INSTALL_HINT = "differential privacy needs the dp-accounting package: pip install 'fedtorch[privacy]'"


def require_library() -> ModuleType:
    """`dp_accounting`, imported on first use so that runs without DP do not need it."""
    try:
        return importlib.import_module("dp_accounting")
    except ImportError as error:
        raise ImportError(INSTALL_HINT) from error


@dataclass(frozen=True)
class Sampling:
    """How one mechanism invocation picks its participants, as the accountant must model it.

    Attributes:
        kind: "poisson" (each independently with probability `rate`), "without_replacement"
            (exactly `sample_size` of `population`), or "full" (everyone, no amplification).
        population: number of users (clients, or samples for DP-SGD).
        rate: inclusion probability q (m / n for sampling without replacement, 1 for full).
        sample_size: m for sampling without replacement.
    """

    kind: str
    population: int
    rate: float
    sample_size: int | None = None

    @staticmethod
    def poisson(rate: float, population: int = 0) -> Sampling:
        if not 0.0 < rate <= 1.0:
            raise ValueError(f"Poisson sampling rate {rate} must be in (0, 1]")
        return Sampling("full" if rate == 1.0 else "poisson", population, float(rate))

    @staticmethod
    def without_replacement(population: int, sample_size: int) -> Sampling:
        if not 1 <= sample_size <= population:
            raise ValueError(f"sample size {sample_size} must be in [1, {population}]")
        if sample_size == population:
            return Sampling("full", population, 1.0)
        return Sampling("without_replacement", population, sample_size / population, sample_size)


def sampling_of(sampler: Any) -> Sampling:
    """The sampling scheme of a (set-up) client sampler, or ValueError when none can be accounted.

    Exact type checks on purpose: a subclass may sample differently, and a wrong assumption would
    silently misreport epsilon.
    """
    kind = type(sampler)
    dropout = float(getattr(sampler, "dropout", 0.0))
    if getattr(sampler, "straggler_policy", "partial") == "drop" and getattr(sampler, "stragglers", 0.0) > 0:
        raise ValueError(
            "dropping a fixed share of stragglers after selection is neither Poisson nor fixed-size sampling, "
            "and no accountant covers it; use sampler.straggler_policy=partial"
        )
    poisson = getattr(samplers_module, "PoissonSampler", None)
    if poisson is not None and kind is poisson:
        return Sampling.poisson(sampler.q * (1.0 - dropout), sampler.num_clients)
    if kind in (samplers_module.ClientSampler, samplers_module.FullParticipation):
        # Independent dropouts turn full participation into Poisson sampling with rate 1 - dropout.
        return Sampling.poisson(1.0 - dropout, sampler.num_clients)
    if kind is samplers_module.UniformSampler:
        if dropout > 0:
            raise ValueError(
                "fixed-size sampling followed by random dropouts is neither Poisson nor fixed-size sampling, "
                "and no accountant covers it; use sampler=poisson (dropouts keep it Poisson)"
            )
        size = getattr(sampler, "cohort_size", None) or getattr(sampler, "cohort", None)
        return Sampling.without_replacement(sampler.num_clients, int(size))
    raise ValueError(
        f"the privacy accountant cannot model {kind.__name__}: use sampler=poisson (Poisson sampling, "
        "the subsampled-Gaussian analysis), sampler=uniform (fixed size without replacement, RDP "
        "accountant, replace-one adjacency) or sampler=full"
    )


@contextmanager
def _quiet_absl():
    # The RDP accountant logs a warning for every fractional order whose series does not converge
    # (it then excludes that order, which is sound); one line per order per call drowns the run log.
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def round_event(sampling: Sampling, noise_multiplier: float) -> dp_accounting.DpEvent:
    """The DpEvent of one subsampled Gaussian release with noise std = `noise_multiplier` * C."""
    dp_accounting = require_library()
    gaussian = dp_accounting.GaussianDpEvent(noise_multiplier)
    if sampling.kind == "full":
        return gaussian
    if sampling.kind == "poisson":
        return dp_accounting.PoissonSampledDpEvent(sampling.rate, gaussian)
    # Replace-one adjacency: one user's clipped update (norm <= C) swapped for another's moves the
    # sum by up to 2C, so std z*C is a multiplier of z/2 relative to the sensitivity.
    return dp_accounting.SampledWithoutReplacementDpEvent(
        sampling.population, sampling.sample_size, dp_accounting.GaussianDpEvent(noise_multiplier / 2)
    )


def make_accountant(sampling: Sampling, method: str = "rdp") -> dp_accounting.PrivacyAccountant:
    """A fresh library accountant whose adjacency matches `sampling`."""
    if method not in ACCOUNTANTS:
        raise ValueError(f"accountant {method!r} is not one of {ACCOUNTANTS}")
    dp_accounting = require_library()
    if sampling.kind == "without_replacement":
        if method != "rdp":
            raise ValueError("fixed-size sampling without replacement is only supported by the rdp accountant")
        return dp_accounting.rdp.RdpAccountant(neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE)
    return dp_accounting.rdp.RdpAccountant() if method == "rdp" else dp_accounting.pld.PLDAccountant()


def compute_epsilon(
    sampling: Sampling, noise_multiplier: float, steps: int, delta: float, method: str = "rdp"
) -> float:
    """Epsilon after `steps` identical releases, at `delta`, by the library's accountant."""
    if steps <= 0:
        return 0.0
    if noise_multiplier <= 0:
        return float("inf")
    accountant = make_accountant(sampling, method)
    with _quiet_absl():
        accountant.compose(round_event(sampling, noise_multiplier), steps)
        return float(accountant.get_epsilon(delta))


def calibrate_noise_multiplier(
    sampling: Sampling, target_epsilon: float, delta: float, steps: int, method: str = "rdp"
) -> float:
    """The smallest noise multiplier whose `steps` releases stay within `target_epsilon` (library search)."""
    if target_epsilon <= 0 or steps <= 0:
        raise ValueError("calibration needs target_epsilon > 0 and steps >= 1")
    dp_accounting = require_library()

    def event(z: float) -> dp_accounting.DpEvent:
        return dp_accounting.SelfComposedDpEvent(round_event(sampling, z), steps)

    with _quiet_absl():
        z = dp_accounting.calibrate_dp_mechanism(
            lambda: make_accountant(sampling, method),
            event,
            target_epsilon,
            delta,
            dp_accounting.LowerEndpointAndGuess(1e-3, 1.0),
            tol=1e-4,
        )
    # Brent's method returns a point within tol of the boundary, possibly on the wrong side.
    return float(z) + 1e-4


class PrivacyAccountant:
    """(epsilon, delta) of a mechanism repeated once per round, with cached compositions.

    Every round is the same event, so epsilon after t rounds is one library call (the library
    multiplies the per-event RDP by t); the value for t + 1, needed to decide whether a target
    epsilon allows another round, is cached and becomes the next round's value.

    Args:
        sampling: how the participants of each release are sampled.
        noise_multiplier: noise std divided by the clipping norm (z).
        delta: the target delta.
        method: "rdp" or "pld".
    """

    def __init__(self, sampling: Sampling, noise_multiplier: float, delta: float, method: str = "rdp") -> None:
        if not 0.0 < delta < 1.0:
            raise ValueError(f"delta={delta} must be in (0, 1)")
        if noise_multiplier < 0:
            raise ValueError(f"noise_multiplier={noise_multiplier} must be >= 0")
        make_accountant(sampling, method)  # fails now on an unsupported combination
        self.sampling = sampling
        self.noise_multiplier = float(noise_multiplier)
        self.delta = float(delta)
        self.method = method
        self.steps = 0
        self._cache: dict[int, float] = {}

    def epsilon_after(self, steps: int) -> float:
        if steps not in self._cache:
            self._cache[steps] = compute_epsilon(self.sampling, self.noise_multiplier, steps, self.delta, self.method)
        return self._cache[steps]

    def step(self, count: int = 1) -> None:
        self.steps += count

    @property
    def epsilon(self) -> float:
        return self.epsilon_after(self.steps)

    def next_epsilon(self) -> float:
        """Epsilon if one more release happens."""
        return self.epsilon_after(self.steps + 1)

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps = int(state["steps"])
