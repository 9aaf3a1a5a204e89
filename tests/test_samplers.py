"""Client samplers: distributions against their definitions, system heterogeneity, and what the
simulation does with empty rounds, dropouts and stragglers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fedtorch.client import LocalTrainer
from fedtorch.samplers import (
    AvailabilitySampler,
    CyclicSampler,
    FullParticipation,
    PoissonSampler,
    SizeWeightedSampler,
    UniformSampler,
)
from fedtorch.seeding import numpy_rng
from fedtorch.strategies import FedAvg
from tests.strategies._federations import linear_model, quadratic_federation, simulate

SIZES = np.array([10, 20, 30, 40, 100, 5, 5, 50])


def _setup(sampler, sizes=SIZES):
    sampler.setup(sizes)
    return sampler


def _draws(sampler, rounds, seed=0):
    return [sampler.cohort(r, numpy_rng(seed, "sampler", r)) for r in range(1, rounds + 1)]


def test_uniform_is_a_sorted_distinct_fixed_size_cohort_and_reproducible():
    sampler = _setup(UniformSampler(clients_per_round=3))
    cohorts = _draws(sampler, 300)
    for c in cohorts:
        assert len(c.ids) == 3 and len(set(c.ids.tolist())) == 3 and list(c.ids) == sorted(c.ids)
    assert all(np.array_equal(a.ids, b.ids) for a, b in zip(cohorts, _draws(sampler, 300)))
    counts = np.bincount(np.concatenate([c.ids for c in cohorts]), minlength=8)
    assert counts == pytest.approx(np.full(8, 300 * 3 / 8), rel=0.25)
    assert _setup(UniformSampler(fraction=0.3)).cohort_size == 2  # floor(0.3 * 8)


def test_size_weighted_single_draw_probabilities_are_proportional_to_size():
    sampler = _setup(SizeWeightedSampler(clients_per_round=1))
    n = 2000
    counts = np.bincount(np.concatenate([c.ids for c in _draws(sampler, n)]), minlength=8)
    p = SIZES / SIZES.sum()
    sigma = np.sqrt(n * p * (1 - p))
    assert np.all(np.abs(counts - n * p) < 4 * sigma)
    big = _setup(SizeWeightedSampler(clients_per_round=3))
    cohort = big.cohort(1, numpy_rng(0, "sampler", 1))
    assert len(set(cohort.ids.tolist())) == 3


def test_poisson_includes_each_client_with_probability_q_and_can_be_empty():
    sampler = _setup(PoissonSampler(q=0.25))
    assert sampler.expected_cohort_size() == 2.0 and sampler.fixed_cohort_size() is None
    n = 2000
    cohorts = _draws(sampler, n)
    counts = np.bincount(np.concatenate([c.ids for c in cohorts]), minlength=8)
    assert np.all(np.abs(counts - n * 0.25) < 4 * math.sqrt(n * 0.25 * 0.75))
    sizes = np.array([len(c.ids) for c in cohorts])
    # Binomial(8, 0.25): P(empty) = 0.75^8 ~ 0.100
    assert abs((sizes == 0).mean() - 0.75**8) < 4 * math.sqrt(0.1 * 0.9 / n)


def test_cyclic_round_robin_by_hand():
    sampler = _setup(CyclicSampler(clients_per_round=3), sizes=np.ones(5, dtype=int))
    ids = [c.ids.tolist() for c in _draws(sampler, 4)]
    # round r starts at 3 (r - 1) mod 5: 0 1 2 | 3 4 0 | 1 2 3 | 4 0 1
    assert ids == [[0, 1, 2], [0, 3, 4], [1, 2, 3], [0, 1, 4]]


def test_availability_constant_rate_and_cap():
    sampler = _setup(AvailabilitySampler(availability=0.4, clients_per_round=None))
    n = 2000
    counts = np.bincount(np.concatenate([c.ids for c in _draws(sampler, n)]), minlength=8)
    assert np.all(np.abs(counts - n * 0.4) < 4 * math.sqrt(n * 0.24))
    capped = _setup(AvailabilitySampler(availability=0.9, clients_per_round=3))
    assert max(len(c.ids) for c in _draws(capped, 50)) == 3


def test_diurnal_availability_follows_its_formula():
    sampler = _setup(AvailabilitySampler(availability=0.5, amplitude=0.4, period=4, clients_per_round=None),
                     sizes=np.ones(4, dtype=int))  # fmt: skip
    # round 1: phases 1/4 + k/4 -> sin = 1, 0, -1, 0
    assert sampler.online_probability(1) == pytest.approx([0.9, 0.5, 0.1, 0.5])
    n = 1500
    hits = np.zeros(4)
    for r in range(n):
        round_idx = 1 + 4 * r  # always the same time of day
        hits[sampler.cohort(round_idx, numpy_rng(0, "sampler", round_idx)).ids] += 1
    assert hits / n == pytest.approx([0.9, 0.5, 0.1, 0.5], abs=0.05)
    # The expected cohort size is the exact Poisson-binomial mean: sum of p over a period, uncapped.
    mean_p = np.mean([sampler.online_probability(r).sum() for r in range(1, 5)])
    assert sampler.expected_cohort_size() == pytest.approx(mean_p)
    capped = _setup(AvailabilitySampler(availability=0.5, amplitude=0.4, period=4, clients_per_round=1),
                    sizes=np.ones(4, dtype=int))  # fmt: skip
    # With a cap of 1 the cohort size is 1 unless nobody is online.
    assert capped.expected_cohort_size() == pytest.approx(
        np.mean([1 - np.prod(1 - capped.online_probability(r)) for r in range(1, 5)])
    )


def test_dropout_and_stragglers():
    plain = _setup(UniformSampler(clients_per_round=8))
    hetero = _setup(UniformSampler(clients_per_round=8, stragglers=0.5, min_work=0.2))
    for a, b in zip(_draws(plain, 50), _draws(hetero, 50)):
        assert np.array_equal(a.ids, b.ids)  # stragglers never change who is selected
        assert b.stragglers == 4 and a.stragglers == 0
        slow = b.work[b.work < 1]
        assert np.all((slow >= 0.2) & (slow < 1))
    dropping = _setup(UniformSampler(clients_per_round=8, dropout=0.3))
    cohorts = _draws(dropping, 1000)
    assert all(c.sampled == 8 and c.dropped == 8 - len(c.ids) for c in cohorts)
    rate = np.mean([c.dropped for c in cohorts]) / 8
    assert abs(rate - 0.3) < 4 * math.sqrt(0.21 / 8000)
    assert dropping.fixed_cohort_size() is None and plain.fixed_cohort_size() == 8
    with pytest.raises(ValueError, match="dropout"):
        UniformSampler(dropout=1.0)


def test_an_empty_round_skips_the_server_step():
    fed = quadratic_federation(num_clients=4)
    sim = simulate(fed, linear_model(fed), FedAvg(), LocalTrainer(lr=0.05, epochs=1, batch_size=-1), rounds=12,
                   sampler=PoissonSampler(q=0.2), run=False)  # fmt: skip
    sizes = [len(sim.sample(r).ids) for r in range(1, 13)]
    assert 0 in sizes and max(sizes) > 0  # P(empty) = 0.8^4 = 0.41
    skipped = 0
    for round_idx, size in enumerate(sizes, start=1):
        before = sim.global_vector.clone()
        row = sim.run_round(round_idx)
        sim.state.round = round_idx
        assert row["round/clients"] == size
        if size == 0:
            skipped += 1
            assert torch.equal(sim.global_vector, before)
            assert row["server/update_norm"] == 0.0 and "train/loss" not in row
            assert row["server/skipped_rounds"] == skipped
        else:
            assert not torch.equal(sim.global_vector, before)


def test_stragglers_get_their_share_of_local_steps_and_dropouts_are_logged():
    fed = quadratic_federation(num_clients=6, sizes=[8, 12, 16, 20, 24, 28])
    trainer = LocalTrainer(lr=0.01, epochs=3, batch_size=4)
    sampler = FullParticipation(dropout=0.2, stragglers=0.5, min_work=0.0)
    sim = simulate(fed, linear_model(fed), FedAvg(), trainer, rounds=3, sampler=sampler, run=False)
    sim.run()
    for round_idx, row in enumerate(sim.state.history, start=1):
        cohort = sampler.cohort(round_idx, numpy_rng(0, "sampler", round_idx))
        expected_steps = 0
        for k, work in zip(cohort.ids, cohort.work):
            full = trainer.num_steps(len(fed.client_indices[k]))
            expected_steps += full if work >= 1 else max(1, math.floor(work * full))
        assert row["round/clients"] == len(cohort.ids)
        assert row["round/dropped"] == cohort.dropped and row["round/stragglers"] == cohort.stragglers
        assert row["round/local_steps"] == expected_steps
    # The budget is what the round's jobs carry (and what every backend trains).
    cohort = sim.sample(7)
    jobs = {job.client_id: job for job in sim.jobs(7, cohort)}
    slow = [(int(k), w) for k, w in zip(cohort.ids, cohort.work) if w < 1]
    assert slow
    for k, work in slow:
        budget = jobs[k].max_steps
        assert budget == max(1, math.floor(work * trainer.num_steps(len(fed.client_indices[k]))))
        assert sim.runner.run(jobs[k], sim.global_vector).num_steps == budget
    assert torch.isfinite(sim.global_vector).all()
