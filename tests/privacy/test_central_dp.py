"""DP-FedAvg: clipping bounds every update, the noise has std z*C on the sum, the estimator is
sum / E[m], adaptive clipping follows Andrew et al.'s update, and the budget stops the run."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fedtorch.aggregators import CoordinateMedian
from fedtorch.client import ClientUpdate, LocalTrainer
from fedtorch.errors import OptionError
from fedtorch.models import LogisticRegression
from fedtorch.privacy import (
    CentralDP,
    DPFedAvg,
    PrivacyAccountant,
    PrivacyBudget,
    Sampling,
    SecureAggregation,
    clip_by_norm,
    sampling_of,
)
from fedtorch.samplers import PoissonSampler, UniformSampler
from fedtorch.simulation import Simulation
from fedtorch.strategies import FedAvg
from tests._server import Server
from tests.privacy.helpers import blob_federation, metric


class _Bound:
    """A FedAvg server with DP transforms, addressed like the old strategy objects in these tests."""

    def __init__(self, size: int, transforms, **options) -> None:
        self.server = Server(FedAvg(), torch.zeros(size), transforms, **options)
        self.global_vector = self.server.vector


def _strategy(size: int, transforms, **options) -> _Bound:
    return _Bound(size, transforms, **options)


def _round(bound: _Bound, round_idx: int, deltas: list[torch.Tensor], samples=None) -> dict[str, float]:
    samples = [10] * len(deltas) if samples is None else samples
    return bound.server.round(round_idx, deltas, samples)


def test_clipping_bounds_every_update_and_leaves_small_ones_alone():
    gen = torch.Generator().manual_seed(0)
    for scale in (1e-3, 0.5, 3.0, 1e4):
        v = torch.randn(1000, generator=gen) * scale / math.sqrt(1000)
        clipped, within = clip_by_norm(v, 1.0)
        assert float(clipped.norm()) <= 1.0 * (1 + 1e-6)
        if float(v.norm()) <= 1.0:
            assert bool(within) and torch.equal(clipped, v)
        else:
            assert not bool(within)
            assert torch.allclose(clipped, v / v.norm(), atol=1e-7)  # same direction, norm C


def test_noiseless_dp_fedavg_is_the_clipped_sum_over_the_expected_cohort():
    dp = CentralDP(clip_norm=1.0, noise_multiplier=0.0, expected_cohort_size=4.0)
    strategy = _strategy(3, dp.transforms())
    deltas = [torch.tensor([0.3, 0.0, 0.0]), torch.tensor([0.0, 6.0, 8.0]), torch.tensor([0.1, 0.1, 0.1])]
    _round(strategy, 1, deltas, samples=[1, 1000, 5])  # weights must not matter
    assert strategy.server.pipeline.weighting(ClientUpdate(0, deltas[0], 1000, 1)) == 1.0
    assert strategy.server.strategy.weighted is True  # the pipeline weights uniformly; the strategy is untouched
    expected = (deltas[0] + deltas[1] / 10 + deltas[2]) / 4.0
    assert torch.allclose(strategy.global_vector, expected, atol=1e-6)


def test_noise_on_the_sum_has_std_z_times_c():
    z, clip, cohort, size = 1.3, 0.7, 5.0, 200_000
    dp = CentralDP(clip_norm=clip, noise_multiplier=z, expected_cohort_size=cohort, seed=3)
    strategy = _strategy(size, dp.transforms())
    _round(strategy, 1, [torch.zeros(size), torch.zeros(size)])
    noise = strategy.global_vector.double() * cohort  # the noise added to the sum
    # Sample std of n normals: relative standard error 1/sqrt(2n) = 0.16%; 1% is > 6 standard errors.
    assert float(noise.std()) == pytest.approx(z * clip, rel=0.01)
    assert abs(float(noise.mean())) < 6 * z * clip / math.sqrt(size)
    # Kurtosis 3 (Gaussian, not e.g. uniform or Laplace): standard error sqrt(24/n) = 0.011.
    standardized = (noise - noise.mean()) / noise.std()
    assert float((standardized**4).mean()) == pytest.approx(3.0, abs=0.07)
    # A different round draws fresh noise; the same (seed, round) the same noise.
    first = strategy.global_vector.clone()
    _round(strategy, 2, [torch.zeros(size)])
    fresh = strategy.global_vector - first
    assert abs(float(torch.corrcoef(torch.stack([fresh, first]))[0, 1])) < 0.02
    again = CentralDP(clip_norm=clip, noise_multiplier=z, expected_cohort_size=cohort, seed=3)
    replay = _strategy(size, again.transforms())
    _round(replay, 1, [torch.zeros(size), torch.zeros(size)])
    assert torch.equal(replay.global_vector, first)


def test_a_round_without_clients_still_releases_noise_and_is_accounted():
    accountant = PrivacyAccountant(Sampling.poisson(0.1, 100), noise_multiplier=1.0, delta=1e-5)
    dp = CentralDP(clip_norm=2.0, noise_multiplier=1.0, expected_cohort_size=10.0, accountant=accountant)
    strategy = _strategy(50_000, dp.transforms())
    metrics = _round(strategy, 1, [])
    assert "skipped_rounds" not in metrics and accountant.steps == 1
    assert float(strategy.global_vector.std()) == pytest.approx(1.0 * 2.0 / 10.0, rel=0.03)


def test_adaptive_clipping_follows_the_geometric_update():
    # No noise: the unclipped fraction is exact, so C_{t+1} = C_t * exp(-eta * (b - gamma)).
    dp = CentralDP(
        clip_norm=1.0,
        noise_multiplier=0.0,
        expected_cohort_size=4.0,
        adaptive=True,
        clipped_count_stddev=0.0,
        target_quantile=0.5,
        clip_lr=0.2,
    )
    strategy = _strategy(2, dp.transforms())
    norms = [0.5, 0.9, 2.0, 3.0]  # 2 of 4 within C = 1
    metrics = _round(strategy, 1, [torch.tensor([n, 0.0]) for n in norms])
    assert metrics["privacy/unclipped_fraction"] == pytest.approx(0.5)
    assert dp.clip_norm == pytest.approx(1.0)
    _round(strategy, 2, [torch.tensor([0.1, 0.0])] * 4)  # all within: b = 1
    assert dp.clip_norm == pytest.approx(math.exp(-0.2 * 0.5))


def test_adaptive_clipping_splits_the_noise_as_andrew_et_al():
    dp = CentralDP(clip_norm=0.1, noise_multiplier=1.0, expected_cohort_size=100.0, adaptive=True)
    assert dp.count_stddev == pytest.approx(5.0)  # E[m] / 20
    assert dp.update_noise_multiplier == pytest.approx((1.0 - 1 / 100) ** -0.5)
    # A small cohort: E[m] / 20 = 0.5 would not exceed z / 2, so the default raises sigma_b to z.
    small = CentralDP(clip_norm=0.1, noise_multiplier=1.0, expected_cohort_size=10.0, adaptive=True)
    assert small.count_stddev == 1.0 and small.update_noise_multiplier == pytest.approx((1.0 - 1 / 4) ** -0.5)
    with pytest.raises(ValueError, match=r"privacy.clipped_count_stddev=0.5 is invalid: more than"):
        CentralDP(clip_norm=0.1, noise_multiplier=1.0, adaptive=True, clipped_count_stddev=0.5)


def test_robust_reducers_are_refused():
    dp = CentralDP(clip_norm=1.0, noise_multiplier=1.0, expected_cohort_size=4.0)
    with pytest.raises(OptionError, match=r"aggregator='CoordinateMedian' is invalid: central DP needs the mean"):
        Server(FedAvg(aggregator=CoordinateMedian()), torch.zeros(3), dp.transforms())


def test_strategies_with_per_update_server_state_are_refused():
    from fedtorch.strategies.scaffold import Scaffold

    dp = DPFedAvg(clip_norm=1.0)
    with pytest.raises(OptionError, match="individual"):
        Server(Scaffold(), torch.zeros(3), [*dp.client_transforms(), *dp.server_transforms()])


def test_simulation_logs_epsilon_every_round_and_stops_at_the_target():
    fed = blob_federation(num_clients=20)
    sampler = PoissonSampler(q=0.25)
    sampler.setup(fed.client_sizes())
    sampling = sampling_of(sampler)
    accountant = PrivacyAccountant(sampling, noise_multiplier=1.0, delta=1e-3)
    target = accountant.epsilon_after(3) + 1e-9  # exactly three rounds fit
    dp = CentralDP(clip_norm=0.5, noise_multiplier=1.0, expected_cohort_size=5.0, accountant=accountant, seed=1)
    budget = PrivacyBudget(dp, target_epsilon=target)
    torch.manual_seed(0)
    sim = Simulation(
        fed,
        LogisticRegression((8,), 3),
        FedAvg(),
        sampler,
        LocalTrainer(lr=0.1, batch_size=10),
        rounds=6,
        seed=0,
        transforms=dp.transforms(),
        callbacks=[budget],
    )
    summary = sim.run()
    assert summary["stop_reason"] == "privacy_budget" and summary["rounds"] == 3
    for row in sim.state.history:
        independent = PrivacyAccountant(Sampling.poisson(0.25, 20), 1.0, 1e-3).epsilon_after(row["round"])
        assert metric(row, "privacy/epsilon") == pytest.approx(independent, rel=1e-12)
    assert summary["privacy"]["epsilon"] <= target
    assert summary["privacy"]["delta"] == 1e-3


def test_uniform_sampler_builds_a_replace_one_accountant():
    fed = blob_federation(num_clients=20)
    dp = DPFedAvg(clip_norm=1.0, noise_multiplier=1.0)
    torch.manual_seed(0)
    Simulation(
        fed, LogisticRegression((8,), 3), FedAvg(), UniformSampler(clients_per_round=5), LocalTrainer(), rounds=3,
        transforms=[*dp.client_transforms(), *dp.server_transforms()],
    )  # fmt: skip
    (mechanism,) = dp.server_transforms()
    assert mechanism.accountant.sampling.kind == "without_replacement"
    assert mechanism.accountant.delta == pytest.approx(20**-1.1)
    assert mechanism.expected_cohort_size == 5.0


def test_the_normalizer_counts_every_source_of_dropout():
    """Secure aggregation's dropouts are a dropout source too: E[m] = cohort x P(report) over both.

    30 clients send the same update d (well within C); 30% of them drop out of secure aggregation.
    Without noise DP-FedAvg releases sum_{survivors} d / E[m], whose mean over rounds must be d
    (dividing by the whole cohort, as before, releases 0.70 d)."""
    d = torch.tensor([0.3, -0.1])
    releases = []
    for round_idx in range(1, 41):
        dp = CentralDP(clip_norm=1.0, noise_multiplier=0.0)
        secagg = SecureAggregation(seed=round_idx, dropout=0.3, threshold=0.2)
        server = Server(FedAvg(), torch.zeros(2), [dp.clipper, secagg, dp], num_clients=30)
        assert dp.expected_cohort_size == pytest.approx(30 * 0.7)
        server.round(round_idx, [d] * 30)
        releases.append(server.vector.clone())
    mean = torch.stack(releases).mean(0)
    # Survivors ~ Binomial(30, 0.7): the release's relative std is sqrt(0.3 / (0.7 * 30)) = 0.12 per
    # round, 0.019 over 40 rounds; 5 standard errors.
    torch.testing.assert_close(mean, d, rtol=0.1, atol=0)


def test_adaptive_clipping_tracks_its_quantile_under_secure_aggregation_dropouts():
    # Norms 0.2, 0.4, ..., 4.0 (20 clients): the 0.8-quantile is 3.2. No noise, an exact count.
    norms = [0.2 * (k + 1) for k in range(20)]
    dp = CentralDP(clip_norm=1.0, noise_multiplier=0.0, adaptive=True, clipped_count_stddev=0.0,
                   target_quantile=0.8, clip_lr=0.2)  # fmt: skip
    secagg = SecureAggregation(seed=0, dropout=0.3, threshold=0.2)
    server = Server(FedAvg(), torch.zeros(2), [dp.clipper, secagg, dp], num_clients=20)
    quantiles = []
    for round_idx in range(1, 81):
        server.round(round_idx, [torch.tensor([n, 0.0]) for n in norms])
        quantiles.append(sum(n <= dp.clip_norm for n in norms) / 20)
    # The quantile C sits at, averaged once it has settled: 0.8 (normalizing by the whole cohort
    # instead of the expected survivors settles near 0.93).
    assert np.mean(quantiles[40:]) == pytest.approx(0.8, abs=0.06)
