"""Client samplers: distributions against their definitions, system heterogeneity, and what the
simulation does with empty rounds, dropouts and stragglers."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from fedtorch.client import LocalTrainer
from fedtorch.errors import OptionError
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


# -- a million clients: O(cohort) draws with the same distributions ------------------------------------

MILLION = 1_000_000


def _exact_subset_frequencies(sampler, rounds: int) -> dict[tuple[int, ...], float]:
    counts: dict[tuple[int, ...], int] = {}
    for r in range(1, rounds + 1):
        key = tuple(sampler.sample(r, numpy_rng(5, "sampler", r)).tolist())
        counts[key] = counts.get(key, 0) + 1
    return {k: v / rounds for k, v in counts.items()}


def _successive_sampling_probability(subset: tuple[int, ...], p: np.ndarray) -> float:
    """P(successive sampling in proportion to p draws exactly `subset`), summed over its orders."""
    total = 0.0
    for order in itertools.permutations(subset):
        prob, left = 1.0, 1.0
        for k in order:
            prob *= p[k] / left
            left -= p[k]
        total += prob
    return total


def _availability_probability(subset: tuple[int, ...], p: np.ndarray, cap: int) -> float:
    """P(the availability sampler returns `subset`): over every online set, m uniform among it."""
    total = 0.0
    for online in itertools.product([0, 1], repeat=len(p)):
        chance = float(np.prod(np.where(np.array(online) == 1, p, 1 - p)))
        ids = tuple(k for k, on in enumerate(online) if on)
        if len(ids) <= cap:
            total += chance * (ids == subset)
        elif set(subset) <= set(ids) and len(subset) == cap:
            total += chance / math.comb(len(ids), cap)
    return total


@pytest.mark.parametrize("kind", ["poisson", "size_weighted", "availability"])
def test_large_federation_algorithms_draw_exactly_the_small_federation_distribution(kind, monkeypatch):
    """The O(cohort) algorithms (forced here on 6 clients) against the exact subset probabilities."""
    import fedtorch.samplers as samplers

    monkeypatch.setattr(samplers, "SMALL_FEDERATION", 0)
    sizes = np.array([1, 2, 3, 4, 5, 15])
    if kind == "poisson":
        sampler = _setup(PoissonSampler(q=0.3), sizes)
        exact = lambda s: 0.3 ** len(s) * 0.7 ** (6 - len(s))  # noqa: E731
    elif kind == "size_weighted":
        sampler = _setup(SizeWeightedSampler(clients_per_round=3), sizes)
        assert sampler._alias is not None  # the alias-table path
        exact = lambda s: _successive_sampling_probability(s, sizes / sizes.sum()) if len(s) == 3 else 0.0  # noqa: E731
    else:
        sampler = _setup(AvailabilitySampler(availability=0.5, amplitude=0.4, period=1, clients_per_round=2), sizes)
        p = sampler.online_probability(1)  # period 1: every round has the same pattern
        exact = lambda s: _availability_probability(s, p, 2)  # noqa: E731
    rounds = 12_000
    seen = _exact_subset_frequencies(sampler, rounds)
    subsets = set(seen) | {s for n in range(7) for s in itertools.combinations(range(6), n) if exact(s) > 0}
    for subset in subsets:
        expected = exact(subset)
        sigma = math.sqrt(max(expected * (1 - expected), 1e-12) / rounds)
        assert abs(seen.get(subset, 0.0) - expected) < 5 * sigma + 1e-9, (subset, seen.get(subset), expected)


@pytest.mark.parametrize(
    "make",
    [
        lambda: UniformSampler(clients_per_round=1000),
        lambda: PoissonSampler(q=0.001),
        lambda: SizeWeightedSampler(clients_per_round=1000),
        lambda: AvailabilitySampler(availability=0.5, amplitude=0.4, clients_per_round=1000),
    ],
    ids=["uniform", "poisson", "size_weighted", "availability"],
)
def test_million_client_samplers_draw_distinct_ids_at_the_right_inclusion_rate(make):
    """A million clients, 1000 a round: distinct sorted ids, per-decile inclusion counts as
    `inclusion_probabilities` says, and a cost per round that does not scan the federation."""
    sizes = 1 + np.arange(MILLION) % 10  # ten size classes, by id mod 10
    sampler = _setup(make(), sizes)
    rounds = 60
    counts = np.zeros(10)
    for r in range(1, rounds + 1):
        ids = sampler.cohort(r, numpy_rng(0, "sampler", r)).ids
        assert len(np.unique(ids)) == len(ids) and np.all(np.diff(ids) > 0)
        assert ids.min() >= 0 and ids.max() < MILLION
        counts += np.bincount(ids % 10, minlength=10)
    pi = sampler.inclusion_probabilities()
    assert pi.shape == (MILLION,) and pi.sum() == pytest.approx(sampler.expected_cohort_size(), rel=1e-6)
    expected = rounds * np.bincount(np.arange(MILLION) % 10, weights=pi, minlength=10)
    assert np.all(np.abs(counts - expected) < 5 * np.sqrt(expected) + 1), (counts, expected)


def test_a_cohort_larger_than_the_federation_is_refused_in_one_line():
    for sampler in (UniformSampler(clients_per_round=MILLION + 1), SizeWeightedSampler(clients_per_round=MILLION + 1)):
        with pytest.raises(OptionError, match=r"sampler\.clients_per_round=1000001 is invalid: at most") as error:
            sampler.setup(np.ones(MILLION, dtype=np.int64))
        assert "\n" not in str(error.value) and "1000000" in str(error.value)
