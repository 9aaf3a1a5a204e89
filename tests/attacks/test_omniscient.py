"""Full-knowledge attacks: each crafts the perturbation its paper defines on hand-built benign
updates, and the update pipeline gives them the whole step (sorted by client id, on every backend)
while FedAvg without such an attacker still streams."""

from __future__ import annotations

import math
from statistics import NormalDist

import pytest
import torch
import torch.distributed as dist

from fedtorch.aggregators import CoordinateMedian, Krum, TrimmedMean, WeightedMean
from fedtorch.attacks import ALIE, IPM, FangKrum, FangTrimmedMean, MinMax, MinSum, SignFlip, Silent, alie_z_max
from fedtorch.attacks.min_max import largest_gamma
from fedtorch.client import ClientUpdate
from fedtorch.pipeline import PipelineContext, StepRecord, UpdatePipeline, UpdateTransform
from fedtorch.strategies import FedAvg
from tests._gloo import run_two_processes
from tests._server import Server, flat_layout

BENIGN = [[1.0, 2.0], [3.0, 2.0], [5.0, 8.0]]


def attack_on(cls, benign, malicious=2, **options):
    """`cls` with `malicious` attackers (ids after the benign ones); on_step over one hand-built step.
    Returns the attack and the updates the attackers send (float64, in client-id order)."""
    n = len(benign) + malicious
    attack = cls(fraction=0.0, **options)
    attack.attackers = frozenset(range(len(benign), n))
    honest = [[float(k), -float(k)] + [0.0] * (len(benign[0]) - 2) for k in range(malicious)]
    updates = [ClientUpdate(k, torch.tensor(row, dtype=torch.float64), 10, 1) for k, row in enumerate(benign + honest)]
    record = StepRecord(step=3, cohort=tuple(range(n)))
    attack.begin(record)
    out = attack.on_step(updates, record)
    for k, row in enumerate(benign):  # honest clients' updates are untouched
        assert out[k].delta.tolist() == row
    return attack, torch.stack([u.delta for u in out[len(benign) :]])


def test_alie_z_max_is_the_papers_formula():
    # Baruch et al.'s Algorithm 3: s = floor(n/2 + 1) - m, z = Phi^-1((n - s) / n); standard normal quantiles.
    assert alie_z_max(20, 4) == pytest.approx(0.385320, abs=1e-6)  # s = 7: Phi^-1(0.65)
    assert alie_z_max(50, 12) == pytest.approx(0.582842, abs=1e-6)  # s = 14: Phi^-1(0.72)
    assert alie_z_max(10, 1) == pytest.approx(0.0, abs=1e-12)  # s = 5: Phi^-1(0.5)
    assert alie_z_max(10, 8) == pytest.approx(NormalDist().inv_cdf(0.9))  # s would be -2: taken as 1


def test_alie_sends_mean_minus_z_std_of_the_benign_updates():
    # mean (3, 4); unbiased std (2, sqrt(12)).
    attack, sent = attack_on(ALIE, BENIGN, z=1.5)
    expected = [3.0 - 1.5 * 2.0, 4.0 - 1.5 * math.sqrt(12.0)]
    assert sent[0].tolist() == pytest.approx(expected) and torch.equal(sent[0], sent[1])
    # z = None: n = 5 updates, m = 2: s = floor(3.5) - 2 = 1, z = Phi^-1(4/5) = 0.841621.
    attack, sent = attack_on(ALIE, BENIGN)
    z = 0.841621
    assert sent[0].tolist() == pytest.approx([3.0 - z * 2.0, 4.0 - z * math.sqrt(12.0)], abs=1e-5)
    assert attack.step_metrics() == pytest.approx({"attack/malicious_clients": 2.0, "attack/z": z}, abs=1e-6)


def test_ipm_sends_minus_epsilon_times_the_benign_mean():
    _, sent = attack_on(IPM, BENIGN, epsilon=0.5)
    assert sent.tolist() == [[-1.5, -2.0], [-1.5, -2.0]]  # exact: 0.5 * (3, 4)


# Three benign updates with closed-form gammas: mu = (2/3, 2/3), p = -(1, 1)/sqrt(2) (unit vector);
# u = a (1, 1) with a = 2/3 - gamma / sqrt(2).
TRIANGLE = [[0.0, 0.0], [2.0, 0.0], [0.0, 2.0]]


def test_min_max_finds_the_largest_gamma_within_the_benign_diameter():
    # max_i |u - x_i|^2 = (a - 2)^2 + a^2 for a < 0; the benign diameter^2 is 8: a^2 - 2a - 2 = 0.
    a = 1.0 - math.sqrt(3.0)
    gamma = (2.0 / 3.0 - a) * math.sqrt(2.0)
    attack, sent = attack_on(MinMax, TRIANGLE, tau=1e-9)
    assert attack.step_metrics()["attack/gamma"] == pytest.approx(gamma, abs=1e-7)
    assert sent[0].tolist() == pytest.approx([a, a], abs=1e-7)
    farthest = max(float(((sent[0] - torch.tensor(x, dtype=torch.float64)) ** 2).sum()) for x in TRIANGLE)
    assert farthest == pytest.approx(8.0, abs=1e-6) and farthest <= 8.0  # on the bound, never past it


def test_min_sum_bounds_the_sum_of_squared_distances():
    # sum_i |u - x_i|^2 = 6a^2 - 8a + 8 <= max_i sum_j |x_i - x_j|^2 = 12: a = (2 - sqrt(10)) / 3.
    a = (2.0 - math.sqrt(10.0)) / 3.0
    attack, sent = attack_on(MinSum, TRIANGLE, tau=1e-9)
    assert attack.step_metrics()["attack/gamma"] == pytest.approx((2.0 / 3.0 - a) * math.sqrt(2.0), abs=1e-7)
    assert sent[0].tolist() == pytest.approx([a, a], abs=1e-7)


def test_min_max_directions_and_the_binary_search():
    # "sign": p = -sign(mu) = (-1, -1); "std": p = -std = -(2, sqrt(12)) for BENIGN.
    for direction, p in (("sign", [-1.0, -1.0]), ("std", [-2.0, -math.sqrt(12.0)])):
        attack, sent = attack_on(MinMax, BENIGN, direction=direction)
        gamma = attack.step_metrics()["attack/gamma"]
        assert sent[0].tolist() == pytest.approx([3.0 + gamma * p[0], 4.0 + gamma * p[1]])
    # The search (Algorithm 1) converges to the boundary of a monotone constraint from either side.
    assert largest_gamma(lambda g: g <= 3.7, 10.0, 1e-9) == pytest.approx(3.7, abs=1e-8)
    assert largest_gamma(lambda g: g <= 0.01, 10.0, 1e-9) == pytest.approx(0.01, abs=1e-8)
    assert largest_gamma(lambda g: g <= 50.0, 10.0, 1e-9) == pytest.approx(20.0, abs=1e-8)  # its reach: 2 gamma_init


def test_fang_trimmed_mean_draws_beyond_the_benign_extremes_against_their_direction():
    # Four coordinates, one per case of the paper's rule (b = 2):
    #   (1, 3): s = +1, w_min = 1 > 0 -> [0.5, 1];   (-1, -2): s = -1, w_max = -1 <= 0 -> [-1, -0.5]
    #   (2, -1): s = +1, w_min = -1 <= 0 -> [-2, -1]; (-3, 1): s = -1, w_max = 1 > 0 -> [1, 2]
    benign = [[1.0, -1.0, 2.0, -3.0], [3.0, -2.0, -1.0, 1.0]]
    attack, sent = attack_on(FangTrimmedMean, benign, malicious=3)
    low = torch.tensor([0.5, -1.0, -2.0, 1.0], dtype=torch.float64)
    high = torch.tensor([1.0, -0.5, -1.0, 2.0], dtype=torch.float64)
    assert torch.all(sent >= low) and torch.all(sent <= high)
    assert len({tuple(row.tolist()) for row in sent}) == 3  # each attacker its own draw
    _, again = attack_on(FangTrimmedMean, benign, malicious=3)
    assert torch.equal(sent, again)  # from the (seed, step, client) stream
    # The median of the five values then moves against the benign direction s, on every coordinate.
    stack = torch.cat([torch.tensor(benign, dtype=torch.float64), sent])
    s = torch.sign(torch.tensor(benign, dtype=torch.float64).mean(0))
    benign_median = torch.tensor(benign, dtype=torch.float64).mean(0)  # of two values: their mean
    assert torch.all(s * (CoordinateMedian().reduce(stack, torch.ones(5)) - benign_median) < 0)


def test_fang_krum_sends_the_largest_lambda_krum_still_selects():
    gen = torch.Generator().manual_seed(0)
    benign = (torch.randn(7, 5, generator=gen, dtype=torch.float64) + 1.0).tolist()
    attack, sent = attack_on(FangKrum, benign, malicious=2)
    lam = attack.step_metrics()["attack/fang_lambda"]
    s = torch.sign(torch.tensor(benign, dtype=torch.float64).mean(0))
    assert torch.allclose(sent, (-lam * s).expand(2, -1))
    # Krum with f = 2 over the 9 updates picks an attacker's; with twice lambda it would not (or the
    # bound itself was accepted).
    stack = torch.cat([torch.tensor(benign, dtype=torch.float64), sent])
    assert int(Krum(f=2).select(stack)[0]) >= 7
    bound = FangKrum.lambda_bound(torch.tensor(benign, dtype=torch.float64), 9, 2)
    doubled = torch.cat([torch.tensor(benign, dtype=torch.float64), (-2 * lam * s).expand(2, -1)])
    assert lam == pytest.approx(bound) or int(Krum(f=2).select(doubled)[0]) < 7
    # The paper's bound by hand: 1/((n - 2c - 1) sqrt d) min_i sum of its n - c - 2 closest benign
    # distances + max_i |x_i| / sqrt d.
    x = torch.tensor(benign, dtype=torch.float64)
    d = torch.cdist(x, x)
    sums = [sorted(d[i, j].item() for j in range(7) if j != i)[:5] for i in range(7)]
    expected = min(sum(v) for v in sums) / (4 * math.sqrt(5)) + float(x.norm(dim=1).max()) / math.sqrt(5)
    assert bound == pytest.approx(expected, rel=1e-9)


class Spy(UpdateTransform):
    """Records what an omniscient transform is shown, and the order updates reach it."""

    omniscient = True

    def __init__(self) -> None:
        self.views: list[list[int]] = []

    def on_step(self, updates, record):
        self.views.append([u.client_id for u in updates])
        return updates


def _context(size: int, sizes=(10,) * 6) -> PipelineContext:
    import numpy as np

    return PipelineContext(
        layout=flat_layout(size),
        num_clients=len(sizes),
        client_sizes=np.asarray(sizes),
        device=torch.device("cpu"),
        dtype=torch.float32,
        seed=0,
        rounds=10,
        expected_cohort=float(len(sizes)),
        report_probability=1.0,
        weighting=lambda u: float(u.num_samples),
        expected_total_weight=float(sum(sizes)),
        server_lr=1.0,
    )


def test_the_omniscient_view_is_the_whole_step_by_client_id_and_fedavg_still_streams():
    spy = Spy()
    pipeline = UpdatePipeline([spy], WeightedMean(), lambda u: float(u.num_samples))
    pipeline.setup(_context(3))
    pipeline.begin(1, [4, 0, 2])
    for k in (4, 0, 2):
        pipeline.accept(ClientUpdate(k, torch.full((3,), float(k)), 10, 1))
        assert spy.views == []  # nothing is shown before the step's last update
    assert pipeline.count == 3 and pipeline.aggregator.count == 0
    assert pipeline.result().tolist() == [2.0, 2.0, 2.0]
    assert spy.views == [[0, 2, 4]]

    plain = UpdatePipeline([SignFlip(fraction=0.0)], WeightedMean(), lambda u: 1.0)
    plain.setup(_context(3))
    plain.begin(1, [0, 1])
    plain.accept(ClientUpdate(0, torch.ones(3), 10, 1))
    assert plain._held is None and plain.aggregator.count == 1  # streamed on arrival: O(model) memory


@pytest.mark.parametrize("cls", [ALIE, IPM, MinMax, MinSum, FangTrimmedMean, FangKrum])
def test_an_omniscient_attack_does_not_depend_on_arrival_order(cls):
    gen = torch.Generator().manual_seed(1)
    deltas = torch.randn(10, 6, generator=gen)
    results = []
    for order in (list(range(10)), [7, 2, 9, 0, 5, 1, 8, 3, 6, 4]):
        attack = cls(fraction=0.3, num_clients=10, seed=0)
        server = Server(FedAvg(aggregator=TrimmedMean(beta=0.3)), torch.zeros(6), [attack], check=False)
        server.round(1, [deltas[k] for k in order], clients=order)
        results.append(server.vector.clone())
    assert torch.equal(results[0], results[1])
    clean = Server(FedAvg(aggregator=TrimmedMean(beta=0.3)), torch.zeros(6))
    clean.round(1, list(deltas))
    assert not torch.equal(results[0], clean.vector)  # the attack did change the step


def _distributed_worker(rank: int, port: int, folder: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        deltas = torch.randn(8, 5, generator=torch.Generator().manual_seed(3))
        out = {}
        for name, aggregator in (("mean", WeightedMean()), ("median", CoordinateMedian())):
            attack = ALIE(fraction=0.25, num_clients=8, seed=0)
            pipeline = UpdatePipeline([attack], aggregator, lambda u: float(u.num_samples))
            pipeline.setup(_context(5, sizes=(10,) * 8))
            pipeline.begin(1, range(8))
            for k in range(rank, 8, 2):  # rank 0 holds the even clients, rank 1 the odd ones
                pipeline.accept(ClientUpdate(k, deltas[k].clone(), 10 + k, 1))
            pipeline.merge()
            out[name] = pipeline.result()
        torch.save(out, f"{folder}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_the_distributed_backend_shows_every_process_the_same_step(tmp_path):
    run_two_processes(_distributed_worker, tmp_path)
    deltas = torch.randn(8, 5, generator=torch.Generator().manual_seed(3))
    for name, aggregator in (("mean", WeightedMean()), ("median", CoordinateMedian())):
        attack = ALIE(fraction=0.25, num_clients=8, seed=0)
        pipeline = UpdatePipeline([attack], aggregator, lambda u: float(u.num_samples))
        pipeline.setup(_context(5, sizes=(10,) * 8))
        pipeline.begin(1, range(8))
        for k in range(8):
            pipeline.accept(ClientUpdate(k, deltas[k].clone(), 10 + k, 1))
        expected = pipeline.result()
        for rank in (0, 1):
            got = torch.load(tmp_path / f"rank{rank}.pt")[name]
            torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-7, msg=f"rank {rank}, {name}")


def test_silent_attackers_are_fedavg_over_the_honest_clients():
    deltas = [torch.full((3,), float(k)) for k in range(10)]
    attack = Silent(fraction=0.3, num_clients=10, seed=0)
    server = Server(FedAvg(), torch.zeros(3), [attack])
    metrics = server.round(1, deltas, samples=list(range(1, 11)))
    honest = [k for k in range(10) if k not in attack.attackers]
    expected = sum((k + 1) * k for k in honest) / sum(k + 1 for k in honest)  # sample-weighted
    torch.testing.assert_close(server.vector, torch.full((3,), expected))
    assert metrics["attack/malicious_clients"] == 3.0
    assert server.pipeline.record.contributors == honest
