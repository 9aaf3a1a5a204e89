"""backend=auto: the choice follows the documented rules, is logged with its reason, and trains exactly
like the backend it chose."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from fedtorch.backends import SequentialBackend, VectorizedBackend
from fedtorch.backends.auto import AutoBackend, step_efficiency
from fedtorch.client import LocalTrainer
from fedtorch.data.base import DatasetSplits, FederatedDataset
from fedtorch.models import CNN, MLP
from fedtorch.samplers import UniformSampler
from fedtorch.simulation import Simulation
from fedtorch.strategies import FedAvg, Scaffold


def _federation(sizes, shape=(5,)) -> FederatedDataset:
    rng = np.random.default_rng(0)
    n = int(sum(sizes))
    data = DatasetSplits(
        "toy",
        torch.tensor(rng.normal(size=(n, *shape)), dtype=torch.float32),
        torch.tensor(rng.integers(0, 3, n)),
        torch.zeros(4, *shape),
        torch.zeros(4, dtype=torch.int64),
        num_classes=3,
    )
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    return FederatedDataset.from_partition(data, [np.arange(offsets[k], offsets[k + 1]) for k in range(len(sizes))])


def _sim(fed, model, backend, strategy=None, rounds=2):
    torch.manual_seed(0)
    return Simulation(fed, model, strategy or FedAvg(), UniformSampler(4), LocalTrainer(lr=0.05, batch_size=5),
                      rounds=rounds, backend=backend)  # fmt: skip


@pytest.mark.parametrize(
    "case, expected, why",
    [
        ("alike_dense", "vectorized", "dense layers only"),
        ("scaffold", "sequential", "strategy scaffold changes local training"),
        ("conv", "sequential", "Conv2d"),
        ("unequal", "sequential", "step counts differ too much"),
    ],
)
def test_auto_picks_by_the_documented_rules_and_says_why(case, expected, why, caplog):
    alike, unequal = [20] * 8, [5, 5, 5, 5, 5, 5, 5, 400]
    if case == "conv":
        fed = _federation(alike, shape=(1, 28, 28))
        model = CNN(fed.input_shape, 3)
    else:
        fed = _federation(unequal if case == "unequal" else alike)
        model = MLP(fed.input_shape, 3, hidden=(8,))
    backend = AutoBackend()
    with caplog.at_level(logging.INFO, logger="fedtorch"):
        _sim(fed, model, backend, Scaffold() if case == "scaffold" else None)
    assert backend.name == expected
    assert any(f"backend=auto: {expected}" in r.message and why in r.message for r in caplog.records)


def test_step_efficiency_is_mean_steps_over_their_90th_percentile():
    fed = _federation([5, 5, 5, 5, 5, 5, 5, 5, 5, 50])  # batch 5: 1 step each, 10 for the last
    sim = _sim(fed, MLP(fed.input_shape, 3, hidden=(4,)), SequentialBackend())
    steps = np.array([1] * 9 + [10])
    assert step_efficiency(sim.runner) == pytest.approx(steps.mean() / np.quantile(steps, 0.9))


def test_auto_trains_exactly_like_the_backend_it_chose():
    fed = _federation([20] * 8)
    runs = []
    for backend in (AutoBackend(), VectorizedBackend()):
        sim = _sim(fed, MLP(fed.input_shape, 3, hidden=(8,)), backend, rounds=3)
        sim.run()
        runs.append(sim.global_vector)
    assert torch.equal(runs[0], runs[1])
