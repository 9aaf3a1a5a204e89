"""Accounting: our epsilon is the library's epsilon for the same mechanism, and the sampler decides the event."""

from __future__ import annotations

import dp_accounting
import numpy as np
import pytest
from dp_accounting.pld import PLDAccountant
from dp_accounting.rdp import RdpAccountant

from fedtorch.privacy import PrivacyAccountant, Sampling, calibrate_noise_multiplier, compute_epsilon, sampling_of
from fedtorch.samplers import AvailabilitySampler, FullParticipation, PoissonSampler, UniformSampler

DELTA = 1e-5


def _setup(sampler, num_clients=100):
    sampler.setup(np.full(num_clients, 50))
    return sampler


def independent_poisson_epsilon(q, z, rounds, delta, accountant=RdpAccountant):
    acc = accountant()
    acc.compose(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z)), rounds)
    return acc.get_epsilon(delta)


def test_poisson_epsilon_equals_library_computation():
    sampling = sampling_of(_setup(PoissonSampler(q=0.1)))
    assert sampling == Sampling("poisson", 100, 0.1)
    accountant = PrivacyAccountant(sampling, noise_multiplier=1.1, delta=DELTA)
    for _ in range(7):
        accountant.step()
    assert accountant.epsilon == pytest.approx(independent_poisson_epsilon(0.1, 1.1, 7, DELTA), rel=1e-9)
    assert accountant.next_epsilon() == pytest.approx(independent_poisson_epsilon(0.1, 1.1, 8, DELTA))
    assert accountant.next_epsilon() > accountant.epsilon > 0


def test_pld_accountant_equals_library_computation():
    accountant = PrivacyAccountant(Sampling.poisson(0.1), noise_multiplier=1.1, delta=DELTA, method="pld")
    accountant.step(3)
    assert accountant.epsilon == pytest.approx(independent_poisson_epsilon(0.1, 1.1, 3, DELTA, PLDAccountant))


def test_fixed_size_sampling_is_accounted_without_replacement_under_replace_one():
    sampling = sampling_of(_setup(UniformSampler(clients_per_round=10)))
    assert (sampling.kind, sampling.population, sampling.sample_size) == ("without_replacement", 100, 10)
    # Independent: Wang et al.'s bound, replace-one adjacency, sensitivity 2C -> multiplier z / 2.
    acc = RdpAccountant(neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE)
    acc.compose(dp_accounting.SampledWithoutReplacementDpEvent(100, 10, dp_accounting.GaussianDpEvent(0.75)), 5)
    assert compute_epsilon(sampling, 1.5, 5, DELTA) == pytest.approx(acc.get_epsilon(DELTA), rel=1e-9)
    with pytest.raises(ValueError, match="only supported by the rdp"):
        PrivacyAccountant(sampling, 1.5, DELTA, method="pld")


def test_full_participation_and_dropouts_map_to_the_right_events():
    assert sampling_of(_setup(FullParticipation())).kind == "full"
    # Independent dropouts of a full cohort are Poisson sampling with rate 1 - dropout.
    assert sampling_of(_setup(FullParticipation(dropout=0.25))) == Sampling("poisson", 100, 0.75)
    assert sampling_of(_setup(PoissonSampler(q=0.2, dropout=0.5))).rate == pytest.approx(0.1)
    acc = RdpAccountant()
    acc.compose(dp_accounting.GaussianDpEvent(2.0), 3)
    assert compute_epsilon(Sampling("full", 100, 1.0), 2.0, 3, DELTA) == pytest.approx(acc.get_epsilon(DELTA))


@pytest.mark.parametrize(
    "sampler", [UniformSampler(clients_per_round=10, dropout=0.1), AvailabilitySampler(availability=0.5)]
)
def test_samplers_the_accountant_cannot_model_are_refused(sampler):
    with pytest.raises(ValueError, match="sampler=poisson"):
        sampling_of(_setup(sampler))


def test_calibrated_noise_spends_the_target_epsilon():
    sampling = Sampling.poisson(0.05)
    z = calibrate_noise_multiplier(sampling, target_epsilon=2.0, delta=DELTA, steps=50)
    spent = independent_poisson_epsilon(0.05, z, 50, DELTA)
    assert 1.98 <= spent <= 2.0
    assert independent_poisson_epsilon(0.05, z * 0.98, 50, DELTA) > 2.0  # not needlessly noisy
