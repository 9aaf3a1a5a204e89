"""Defenses that survive heterogeneity: each against a hand computation or an independent second
implementation, every one independent of the order its inputs arrive in, each composing with a
FedOpt server optimizer, and the refusals of what they cannot do."""

from __future__ import annotations

import math

import pytest
import torch

from fedtorch.aggregators import CoordinateMedian, GeometricMedian, Krum, MultiKrum, TrimmedMean
from fedtorch.attacks import ALIE, SignFlip
from fedtorch.defenses import Bucketing, CenteredClipping, FLTrust, NearestNeighborMixing, NormBounding
from fedtorch.errors import OptionError
from fedtorch.privacy import SecureAggregation
from fedtorch.seeding import torch_generator
from fedtorch.strategies import FedAdam, FedAvg
from tests._server import Server


def reduce(aggregator, rows, weights=None, ids=None, step=1):
    """Feed `rows` (client ids `ids`, default 0..n-1) through reset / add / result, as one step."""
    rows = torch.as_tensor(rows, dtype=torch.float64)
    ids = list(range(len(rows))) if ids is None else ids
    aggregator.reset(like=rows[0])
    aggregator.begin_step(step)
    for row, weight, k in zip(rows, weights or [1.0] * len(rows), ids):
        aggregator.add(row, weight, client_id=k)
    return aggregator.result()


def randn(n, d, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize(
    "inner", [CoordinateMedian, lambda: TrimmedMean(beta=0.2), lambda: Krum(f=2), GeometricMedian, MultiKrum]
)
def test_bucketing_with_buckets_of_one_is_the_wrapped_reducer(inner):
    x = randn(11, 7)
    got, expected = reduce(Bucketing(inner(), bucket_size=1), x), reduce(inner(), x)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)  # a relabelling only: float rounding


def test_bucketing_averages_seeded_random_buckets_before_the_reducer():
    x = randn(7, 3)
    bucketing = Bucketing(CoordinateMedian(), bucket_size=3)
    bucketing.setup(seed=5)
    got = reduce(bucketing, x, step=4)
    # A second implementation: the same (seed, "bucketing", step) permutation, buckets by hand.
    order = torch.randperm(7, generator=torch_generator(5, "bucketing", 4)).tolist()
    means = [x[order[0:3]].mean(0), x[order[3:6]].mean(0), x[order[6:7]].mean(0)]
    torch.testing.assert_close(got, torch.stack(means).median(dim=0).values)  # 3 buckets: the middle one
    other_step = reduce(bucketing, x, step=5)
    assert not torch.equal(got, other_step)  # a fresh permutation every step
    # Declarations: enough updates for Krum's 2f + 3 buckets; f attackers spoil at most f buckets.
    krum = Bucketing(Krum(f=2), bucket_size=2)
    assert krum.min_updates == 13 and math.ceil(13 / 2) == Krum(f=2).min_updates
    assert Bucketing(CoordinateMedian(), bucket_size=2).tolerates(20) == 4  # median of 10 bucket means
    assert krum.bucket_size == 2 and krum.needs_all_updates


def test_centered_clipping_is_the_mean_for_a_huge_radius_and_clips_by_hand():
    x = randn(6, 4) * 3
    torch.testing.assert_close(reduce(CenteredClipping(tau=1e9), x), x.mean(0), rtol=1e-12, atol=1e-12)
    # 1-D, centre 0, tau = 1: the differences 0.5, 3, -4 clip to 0.5, 1, -1 -> v = 0.5 / 3.
    cc = CenteredClipping(tau=1.0)
    assert float(reduce(cc, [[0.5], [3.0], [-4.0]])) == pytest.approx(0.5 / 3)
    assert cc.step_metrics() == {"defense/clipped_fraction": pytest.approx(2 / 3)}
    # The next step clips around the previous aggregate 1/6: 2 - 1/6 clips to 1, 1/6 - 1/6 stays 0.
    assert float(reduce(cc, [[2.0], [1.0 / 6]])) == pytest.approx(1.0 / 6 + 0.5)
    # Two iterations: a second pass from the first's result (a loop written out by hand).
    v, rows = 0.0, [0.5, 3.0, -4.0]
    for _ in range(2):
        v += sum(max(-1.0, min(1.0, r - v)) for r in rows) / 3
    assert float(reduce(CenteredClipping(tau=1.0, iterations=2), [[r] for r in rows])) == pytest.approx(v)


def test_centered_clippings_centre_is_checkpointed():
    cc = CenteredClipping(tau=0.5)
    reduce(cc, randn(5, 3))
    restored = CenteredClipping(tau=0.5)
    restored.load_state_dict(cc.state_dict())
    x = randn(5, 3, seed=1)
    assert torch.equal(reduce(restored, x), reduce(cc, x))
    assert not torch.equal(reduce(CenteredClipping(tau=0.5), x), reduce(restored, x))  # the centre matters


def test_nearest_neighbour_mixing_by_hand_and_on_identical_updates():
    same = torch.tensor([[0.25, -1.0, 3.0]] * 6, dtype=torch.float64)
    mixed, _ = NearestNeighborMixing(CoordinateMedian(), f=2).mix(same, torch.ones(6, dtype=torch.float64))
    torch.testing.assert_close(mixed, same)
    nnm = NearestNeighborMixing(CoordinateMedian(), f=1)
    rows = torch.tensor([[0.0], [1.0], [3.0], [10.0]], dtype=torch.float64)
    mixed, _ = nnm.mix(rows, torch.ones(4, dtype=torch.float64))
    # n - f = 3 nearest (itself included): 0 -> {0, 1, 3}; 1 -> {1, 0, 3}; 3 -> {3, 1, 0}; 10 -> {10, 3, 1}.
    assert mixed.flatten().tolist() == pytest.approx([4 / 3, 4 / 3, 4 / 3, 14 / 3])
    assert float(reduce(nnm, rows)) == pytest.approx(4 / 3)
    assert NearestNeighborMixing(Krum(f=2), f=2).tolerates(10) == 2 and nnm.min_updates == 3


def test_norm_bounding_clips_then_averages_and_streams():
    rows = [[3.0, 4.0], [0.3, 0.4], [0.0, -10.0]]  # norms 5, 0.5, 10
    bound = NormBounding(max_norm=1.0)
    got = reduce(bound, rows, weights=[1.0, 2.0, 1.0])
    expected = (torch.tensor([0.6, 0.8]) + 2 * torch.tensor([0.3, 0.4]) + torch.tensor([0.0, -1.0])) / 4
    torch.testing.assert_close(got, expected.double())
    assert bound.step_metrics() == {"defense/clipped": 2.0}
    assert not bound.needs_all_updates  # O(model), like the mean


def test_fltrust_trusts_a_copy_of_the_server_update_and_rescales():
    g0 = torch.tensor([1.0, 2.0, 2.0], dtype=torch.float64)  # norm 3
    fltrust = FLTrust(root_size=10)
    fltrust.bind_server_update(lambda step: g0)
    # A benign copy of g0 (trust 1), its opposite and an orthogonal update (trust 0).
    out = reduce(fltrust, [g0.tolist(), (-5 * g0).tolist(), [2.0, -1.0, 0.0]])
    assert fltrust.trust.tolist() == [1.0, 0.0, 0.0]
    torch.testing.assert_close(out, g0)
    # Two trusted updates by hand: x1 = 10 g0 (cos 1, rescaled to g0), x2 = (3, 0, 0) (cos 1/3, -> (3, 0, 0)).
    out = reduce(fltrust, [(10 * g0).tolist(), [3.0, 0.0, 0.0]])
    assert fltrust.trust.tolist() == pytest.approx([1.0, 1.0 / 3])
    torch.testing.assert_close(out, (g0 + torch.tensor([3.0, 0.0, 0.0]).double() / 3) / (4 / 3))
    assert fltrust.step_metrics()["defense/trusted_clients"] == 2.0
    assert reduce(fltrust, [(-g0).tolist()]).tolist() == [0.0, 0.0, 0.0]  # nobody trusted: no move


def _fltrust():
    fltrust = FLTrust(root_size=10)
    fltrust.bind_server_update(lambda step: torch.linspace(-1, 1, 6, dtype=torch.float64) + step)
    return fltrust


@pytest.mark.parametrize(
    "make",
    [
        lambda: Bucketing(CoordinateMedian(), bucket_size=2),
        lambda: Bucketing(Krum(f=1), bucket_size=2),
        lambda: NearestNeighborMixing(TrimmedMean(beta=0.2), f=2),
        lambda: NearestNeighborMixing(Krum(f=2), f=2),
        lambda: CenteredClipping(tau=0.7, iterations=3),
        lambda: NormBounding(max_norm=1.5),
        _fltrust,
    ],
    ids=["bucketing_median", "bucketing_krum", "nnm_trimmed_mean", "nnm_krum", "cc", "norm_bounding", "fltrust"],
)
def test_every_defense_is_independent_of_arrival_order(make):
    x = randn(12, 6, seed=2)
    weights = [float(w) for w in range(1, 13)]
    results = []
    for arrival in (list(range(12)), [5, 11, 0, 7, 3, 9, 1, 10, 2, 8, 4, 6]):
        aggregator = make()
        aggregator.setup(seed=3)
        results.append(reduce(aggregator, x[arrival], weights=[weights[k] for k in arrival], ids=arrival, step=2))
    torch.testing.assert_close(results[0], results[1], rtol=1e-12, atol=1e-12)  # streaming sums: float64 rounding


@pytest.mark.parametrize(
    "defense",
    [
        lambda: CenteredClipping(tau=1e9),
        lambda: Bucketing(TrimmedMean(beta=0.0), bucket_size=1),
        lambda: NormBounding(max_norm=1e9),
    ],
    ids=["cc", "bucketing", "norm_bounding"],
)
def test_a_defense_that_changes_nothing_leaves_fedadams_step_unchanged(defense):
    """Composition with a FedOpt server optimizer: with a radius / bound that clips nothing (and
    buckets of one around a plain mean), FedAdam's moments and steps are those of its mean."""
    deltas = [randn(4, 5, seed=r).float() for r in range(3)]
    uniform = dict(weighted=False)  # the robust reducers ignore sample counts
    servers = [Server(FedAdam(server_lr=0.1, **uniform), torch.zeros(5)),
               Server(FedAdam(server_lr=0.1, aggregator=defense(), **uniform), torch.zeros(5))]  # fmt: skip
    for r, step in enumerate(deltas, start=1):
        for server in servers:
            server.round(r, list(step), clients=[0, 1, 2, 3])
    torch.testing.assert_close(servers[1].vector, servers[0].vector, rtol=1e-5, atol=1e-7)
    assert not torch.equal(servers[0].vector, torch.zeros(5))


def test_bad_combinations_are_refused_in_one_line():
    # A bucket larger than the cohort.
    with pytest.raises(OptionError, match=r"strategy\.aggregator\.bucket_size=12 is invalid: at most the 10 clients"):
        Server(FedAvg(aggregator=Bucketing(CoordinateMedian(), bucket_size=12)), torch.zeros(2))
    # More attackers than the reducer tolerates: 20% of 10 is 2 > Krum's f = 1 (and > 1 bucket of Krum's).
    for aggregator in (Krum(f=1), Bucketing(Krum(f=1), bucket_size=2)):
        with pytest.raises(OptionError, match=r"attack\.fraction=0\.2 is invalid: .* 2 attackers .* at most 1"):
            Server(FedAvg(aggregator=aggregator), torch.zeros(2), [SignFlip(fraction=0.2)], num_clients=10)
    Server(FedAvg(aggregator=Krum(f=2)), torch.zeros(2), [SignFlip(fraction=0.2)])  # f = 2 tolerates it
    Server(FedAvg(), torch.zeros(2), [SignFlip(fraction=0.2)])  # the mean claims nothing: the attacked baseline
    # FLTrust without a root dataset, and without the server's update on one.
    for size in (0, None):
        with pytest.raises(OptionError, match=r"strategy\.aggregator\.root_size=.* FLTrust needs a root dataset"):
            FLTrust(root_size=size)
    server = Server(FedAvg(aggregator=FLTrust(root_size=10)), torch.zeros(2))
    with pytest.raises(OptionError, match="FLTrust needs the server's update on a root dataset"):
        server.round(1, [[1.0, 0.0]] * 3)
    # An omniscient attack with secure aggregation.
    with pytest.raises(OptionError, match=r"attack='ALIE' is invalid: .*reveals only their sum"):
        Server(FedAvg(), torch.zeros(2), [ALIE(fraction=0.2), SecureAggregation()])


def _simulation(aggregator, attack=True, momentum=0.0, fltrust=False):
    from fedtorch.client import LocalTrainer
    from fedtorch.defenses import attach_root_dataset
    from fedtorch.models import LogisticRegression
    from fedtorch.samplers import UniformSampler
    from fedtorch.simulation import Simulation
    from fedtorch.strategies import FedAvgM
    from tests.privacy.helpers import blob_federation

    fed = blob_federation(num_clients=20, per_client=30)
    torch.manual_seed(0)
    sim = Simulation(
        fed,
        LogisticRegression((8,), 3),
        FedAvgM(momentum=0.5, aggregator=aggregator),
        UniformSampler(clients_per_round=10),
        LocalTrainer(lr=0.05, batch_size=10, optimizer=lambda p, lr: torch.optim.SGD(p, lr=lr, momentum=momentum)),
        rounds=4,
        seed=0,
        transforms=[ALIE(fraction=0.2)] if attack else [],
    )
    if fltrust:
        attach_root_dataset(sim)
    return sim


def test_a_resumed_run_with_centered_clipping_and_an_omniscient_attack_ends_bit_identical():
    straight = _simulation(CenteredClipping(tau=0.05))
    straight.run()
    first = _simulation(CenteredClipping(tau=0.05))
    first.rounds = 2
    first.run()
    resumed = _simulation(CenteredClipping(tau=0.05))
    resumed.load_state_dict(first.state_dict())
    resumed.run()
    assert torch.equal(resumed.global_vector, straight.global_vector)
    assert "aggregator" in first.state_dict()["pipeline"]  # the centre travels with the checkpoint


@pytest.mark.parametrize(
    "make",
    [
        lambda: Bucketing(TrimmedMean(beta=0.4)),
        lambda: NearestNeighborMixing(GeometricMedian(), f=2),
        lambda: FLTrust(50),
    ],
    ids=["bucketing_trimmed_mean", "nnm_geomed", "fltrust"],
)
def test_defenses_learn_with_server_and_client_momentum_under_attack(make):
    """Composition: FedAvgM's server momentum, SGD momentum on the clients, an omniscient attack."""
    sim = _simulation(make(), momentum=0.9, fltrust=isinstance(make(), FLTrust))
    sim.rounds = 8
    sim.run()
    assert sim.state.history[-1]["eval/accuracy"] > 0.8  # 3 classes: chance is 1/3


def test_norm_bounding_streams_but_cannot_follow_secure_aggregation():
    with pytest.raises(OptionError, match=r"aggregator='NormBounding' is invalid: secure aggregation reveals only"):
        Server(FedAvg(aggregator=NormBounding(max_norm=1.0)), torch.zeros(2), [SecureAggregation()])
