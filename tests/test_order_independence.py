"""Every reducer's result is independent of the order in which the updates arrive.

The sequential backend, the vectorized backend with chunks (clients sorted by step budget) and the
distributed backend (rank order) deliver a round's updates in different orders; a reducer that
broke ties by arrival (Bulyan's last Krum pick scored each update by its one nearest neighbour, so
the closest pair tied exactly and the first one won) gave different models on different backends.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from fedtorch.aggregators import (
    Bulyan,
    CoordinateMedian,
    GeometricMedian,
    Krum,
    MultiKrum,
    TrimmedMean,
    WeightedMean,
    WeightedSum,
)

REDUCERS = {
    "mean": WeightedMean,
    "sum": WeightedSum,
    "median": CoordinateMedian,
    "trimmed_mean": lambda: TrimmedMean(beta=0.2),
    "krum": lambda: Krum(f=1),
    "multikrum": lambda: MultiKrum(f=1),
    "bulyan": lambda: Bulyan(f=1),
    "geomed": GeometricMedian,
}


def _updates() -> list[tuple[int, torch.Tensor, float]]:
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(7, 5, generator=gen, dtype=torch.float64)
    # Exact ties: clients 3 and 5 send the same update, as do 1 and 6 (Krum/Bulyan tie-breaking).
    base[5] = base[3]
    base[6] = base[1]
    weights = [1.0, 3.0, 2.0, 5.0, 1.0, 4.0, 2.0]
    return [(10 * k + 3, base[k], weights[k]) for k in range(7)]  # ids need not be 0..n-1


def _reduce(make, order) -> torch.Tensor:
    reducer = make()
    reducer.reset(like=torch.zeros(5, dtype=torch.float64))
    for client, delta, weight in order:
        reducer.add(delta, weight, client_id=client)
    return reducer.result()


@pytest.mark.parametrize("name", sorted(REDUCERS))
def test_every_reducer_gives_the_same_result_for_every_arrival_order(name):
    updates = _updates()
    reference = _reduce(REDUCERS[name], updates)
    for order in itertools.islice(itertools.permutations(updates), 0, None, 97):  # 52 of the 5040 orders
        result = _reduce(REDUCERS[name], order)
        if name in ("mean", "sum", "geomed"):
            # Floating-point sums in another order: equal up to float64 rounding, not bit for bit.
            torch.testing.assert_close(result, reference, rtol=1e-12, atol=1e-12)
        else:
            assert torch.equal(result, reference), name


def test_exact_ties_go_to_the_lower_client_id():
    # Krum with f = 0 scores each update by its one nearest neighbour: the closest pair (clients 7 and
    # 2, different updates) tie exactly, and client 2's update wins whatever the arrival order.
    a, b, far = torch.tensor([1.0, 0.0]), torch.tensor([1.5, 0.0]), torch.tensor([0.0, 9.0])
    for order in ([(7, b), (2, a), (9, far)], [(9, far), (2, a), (7, b)], [(2, a), (7, b), (9, far)]):
        krum = Krum(f=0)
        krum.reset(like=torch.zeros(2))
        for client, delta in order:
            krum.add(delta, 1.0, client_id=client)
        assert torch.equal(krum.result(), a)
