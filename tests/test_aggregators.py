"""Reducers of client updates: hand-computed answers, a brute-force second implementation, and
the all_gather merge of the distributed backend (two gloo processes)."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.distributed as dist

from fedtorch.aggregators import (
    Bulyan,
    CoordinateMedian,
    GeometricMedian,
    Krum,
    MultiKrum,
    TrimmedMean,
    WeightedMean,
    WeightedSum,
    krum_scores,
    pairwise_sq_distances,
)
from fedtorch.strategies import FedAvg
from tests._gloo import run_two_processes
from tests._server import Server


def reduce(aggregator, rows, weights=None):
    rows = torch.as_tensor(rows, dtype=torch.float64)
    aggregator.reset(like=rows[0])
    for row, weight in zip(rows, weights or [1.0] * len(rows)):
        aggregator.add(row, weight)
    return aggregator.result()


def test_robust_reducers_need_all_updates_and_the_mean_streams():
    assert not WeightedMean.needs_all_updates and not WeightedSum.needs_all_updates
    for cls in (CoordinateMedian, TrimmedMean, Krum, MultiKrum, Bulyan, GeometricMedian):
        assert cls.needs_all_updates
    assert Krum(f=2).min_updates == 7 and Bulyan(f=2).min_updates == 11 and CoordinateMedian().min_updates == 1


def test_coordinate_median_odd_even_and_ignores_weights():
    rows = [[1.0, 5.0], [3.0, -1.0], [2.0, 10.0]]
    assert reduce(CoordinateMedian(), rows).tolist() == [2.0, 5.0]
    assert reduce(CoordinateMedian(), rows, weights=[100.0, 1.0, 1.0]).tolist() == [2.0, 5.0]
    assert reduce(CoordinateMedian(), [[1.0], [4.0], [2.0], [10.0]]).tolist() == [3.0]  # (2 + 4) / 2


def test_trimmed_mean_by_hand():
    rows = [[1.0, -7.0], [2.0, 0.0], [3.0, 1.0], [4.0, 2.0], [100.0, 3.0]]
    # beta = 0.2, n = 5: drop 1 value at each end per coordinate
    assert reduce(TrimmedMean(beta=0.2), rows).tolist() == [3.0, 1.0]
    assert reduce(TrimmedMean(beta=0.0), rows).tolist() == pytest.approx([22.0, -0.2])  # plain mean
    assert reduce(TrimmedMean(beta=0.49), [[1.0], [2.0], [3.0], [40.0]]).tolist() == [2.5]  # floor(1.96) = 1
    with pytest.raises(ValueError, match="beta"):
        TrimmedMean(beta=0.5)


POINTS = [[0.0, 1.0], [1.0, 1.0], [1.5, 1.0], [3.0, 1.0], [50.0, 1.0]]


def test_krum_and_multikrum_by_hand():
    # n = 5, f = 1: scores sum the n - f - 2 = 2 smallest squared distances:
    #   0: 1 + 2.25 = 3.25;  1: 0.25 + 1 = 1.25;  1.5: 0.25 + 2.25 = 2.5;  3: 2.25 + 4 = 6.25;  50: huge
    scores = krum_scores(pairwise_sq_distances(torch.tensor(POINTS, dtype=torch.float64)), f=1)
    assert scores[:4].tolist() == pytest.approx([3.25, 1.25, 2.5, 6.25])
    assert reduce(Krum(f=1), POINTS).tolist() == [1.0, 1.0]
    assert reduce(Krum(f=1, m=3), POINTS).tolist() == pytest.approx([2.5 / 3, 1.0])  # 1, 1.5, 0
    assert reduce(MultiKrum(f=1), POINTS).tolist() == pytest.approx([5.5 / 4, 1.0])  # m = n - f = 4


def test_krum_scores_match_brute_force():
    x = torch.randn(9, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3 + 100
    f = 2
    for i in range(9):
        others = sorted(float(((x[i] - x[j]) ** 2).sum()) for j in range(9) if j != i)
        expected = sum(others[: 9 - f - 2])
        assert float(krum_scores(pairwise_sq_distances(x), f)[i]) == pytest.approx(expected, rel=1e-9)


def test_bulyan_by_hand_and_against_a_loop_implementation():
    # 1-D: iterated Krum (f = 1) picks 2, 1, 3, 0, 4 (hand-traced); the 3 values closest to their
    # median 2 are 1, 2, 3, so the result is 2; both outliers are gone.
    rows = [[v] for v in (0.0, 1.0, 2.0, 3.0, 4.0, 100.0, -100.0)]
    assert Bulyan(f=1).select(torch.tensor(rows)) == [2, 1, 3, 0, 4]
    assert reduce(Bulyan(f=1), rows).tolist() == [2.0]

    x = torch.randn(11, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    f = 2
    remaining, chosen = list(range(11)), []
    while len(chosen) < 11 - 2 * f:
        k = max(len(remaining) - f - 2, 1)
        scores = [sum(sorted(float(((x[i] - x[j]) ** 2).sum()) for j in remaining if j != i)[:k]) for i in remaining]
        chosen.append(remaining.pop(min(range(len(scores)), key=lambda s: (scores[s], s))))
    picked = x[chosen]
    expected = []
    for c in range(4):
        column = picked[:, c]
        median = (
            column.median()
            if len(column) % 2
            else column.sort().values[len(column) // 2 - 1 : len(column) // 2 + 1].mean()
        )
        closest = sorted(column.tolist(), key=lambda v: abs(v - float(median)))[: len(column) - 2 * f]
        expected.append(sum(closest) / len(closest))
    assert reduce(Bulyan(f=f), x).tolist() == pytest.approx(expected, rel=1e-9)


def test_geometric_median_closed_forms():
    # 1-D: the (weighted) median.
    assert float(reduce(GeometricMedian(), [[0.0], [1.0], [2.0], [10.0], [50.0]])) == pytest.approx(2.0, abs=1e-3)
    heavy = reduce(GeometricMedian(), [[0.0], [1.0], [2.0], [10.0], [50.0]], weights=[1, 1, 1, 1, 10])
    assert float(heavy) == pytest.approx(50.0, abs=1e-3)
    unweighted = reduce(
        GeometricMedian(weighted=False), [[0.0], [1.0], [2.0], [10.0], [50.0]], weights=[1, 1, 1, 1, 10]
    )
    assert float(unweighted) == pytest.approx(2.0, abs=1e-3)
    # Equilateral triangle: the centre. A triangle with an angle >= 120 degrees: that vertex (Fermat point).
    triangle = [[1.0, 0.0], [-0.5, 3**0.5 / 2], [-0.5, -(3**0.5) / 2]]
    assert reduce(GeometricMedian(), triangle).tolist() == pytest.approx([0.0, 0.0], abs=1e-4)
    obtuse = [[0.0, 0.0], [1.0, 0.0], [-1.0, 0.1]]
    assert reduce(GeometricMedian(), obtuse).tolist() == pytest.approx([0.0, 0.0], abs=1e-4)


def test_weighted_sum():
    assert reduce(WeightedSum(), [[1.0, 2.0], [3.0, -1.0]], weights=[0.5, 2.0]).tolist() == [6.5, -1.0]


def _updates_for(rank: int) -> list[list[float]]:
    # Rank 0 holds three updates, rank 1 one: the stacks must be padded before the all_gather.
    table = [[[0.0, 1.0], [1.0, 1.0], [1.5, 1.0]], [[3.0, 1.0]]]
    return table[rank]


def _merge_worker(rank: int, port: int, folder: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        out = {}
        for name, make in (("median", CoordinateMedian), ("krum", lambda: Krum(f=0, m=2)), ("sum", WeightedSum)):
            aggregator = make()
            aggregator.reset(like=torch.zeros(2, dtype=torch.float64))
            for i, row in enumerate(_updates_for(rank)):
                aggregator.add(torch.tensor(row, dtype=torch.float64), 1.0 + i + 10 * rank)
            aggregator.merge()
            out[name] = (aggregator.result().tolist(), aggregator.count)
        torch.save(out, f"{folder}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_merge_all_gathers_stacks_of_different_sizes(tmp_path):
    run_two_processes(_merge_worker, tmp_path)
    results = [torch.load(tmp_path / f"rank{rank}.pt") for rank in (0, 1)]
    rows = _updates_for(0) + _updates_for(1)
    weights = [1.0, 2.0, 3.0, 11.0]
    expected = {
        "median": reduce(CoordinateMedian(), rows).tolist(),
        "krum": reduce(Krum(f=0, m=2), rows).tolist(),
        "sum": reduce(WeightedSum(), rows, weights).tolist(),
    }
    for rank in (0, 1):
        for name, (value, count) in results[rank].items():
            assert value == pytest.approx(expected[name]), (rank, name)
            assert count == 4


def test_a_round_with_too_few_updates_for_the_reducer_is_skipped():
    server = Server(FedAvg(aggregator=Krum(f=1)), torch.zeros(3))  # Krum with f = 1 needs 5 updates
    start = server.vector.clone()
    metrics = server.round(1, [torch.ones(3)] * 3)
    assert torch.equal(server.vector, start) and metrics["skipped_rounds"] == 1.0 and metrics["update_norm"] == 0.0
    server.round(2, [torch.full((3,), scale) for scale in (1.0, 1.1, 0.9, 1.0, 40.0)])
    assert torch.allclose(server.vector, start + 1.0)  # Krum picked an update equal to ones


@pytest.mark.parametrize("robust", [CoordinateMedian, TrimmedMean, GeometricMedian])
def test_robust_reducers_agree_with_the_mean_on_identical_updates(robust):
    rows = [[0.5, -2.0, 3.0]] * 4
    for a, b in itertools.combinations([WeightedMean(), robust()], 2):
        assert reduce(a, rows).tolist() == pytest.approx(reduce(b, rows).tolist())


def test_declared_tolerances_are_the_reducers_breakdown_points():
    # A strict minority for the medians; as many as trimmed at each end; the configured f for the
    # Krum family; the mean claims nothing (compatibility then lets any attack through, as a baseline).
    assert [CoordinateMedian().tolerates(n) for n in (9, 10, 11)] == [4, 4, 5]
    assert [GeometricMedian().tolerates(n) for n in (9, 10)] == [4, 4]
    assert [TrimmedMean(beta=0.2).tolerates(n) for n in (10, 24, 25)] == [2, 4, 5]
    assert Krum(f=3).tolerates(20) == 3 and MultiKrum(f=2).tolerates(20) == 2 and Bulyan(f=2).tolerates(20) == 2
    assert WeightedMean().tolerates(10) is None and WeightedSum().tolerates(10) is None
    # The default declarations of a plain reducer.
    mean = WeightedMean()
    assert mean.bucket_size == 1 and not mean.needs_server_update and mean.state_dict() == {}
