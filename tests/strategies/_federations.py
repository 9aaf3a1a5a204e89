"""Small generated federations and a simulation builder for the strategy tests."""

from __future__ import annotations

import numpy as np
import torch

from fedtorch.client import LocalTrainer
from fedtorch.data.base import DatasetSplits, FederatedDataset
from fedtorch.models import MLP, LinearRegression
from fedtorch.samplers import ClientSampler, FullParticipation
from fedtorch.simulation import Simulation
from fedtorch.strategies.base import Strategy


def quadratic_federation(
    num_clients: int = 4, samples: int = 20, dim: int = 2, seed: int = 0, sizes: list[int] | None = None
) -> FederatedDataset:
    """Heterogeneous least squares in float64: client k has inputs of scale 0.5 + k/2 around its own
    mean and its own true weights, so local optima and curvatures differ (FedAvg drifts)."""
    rng = np.random.default_rng(seed)
    sizes = sizes or [samples] * num_clients
    xs, ys, parts, start = [], [], [], 0
    for k, n in enumerate(sizes):
        scale = 0.5 + 0.5 * k
        x = rng.normal(rng.normal(0, 1, dim), scale, (n, dim))
        w = rng.normal(0, 2, dim)
        y = x @ w + rng.normal(0, 1) + 0.1 * rng.normal(0, 1, n)
        xs.append(x)
        ys.append(y)
        parts.append(np.arange(start, start + n))
        start += n
    x = torch.tensor(np.concatenate(xs))
    y = torch.tensor(np.concatenate(ys))
    data = DatasetSplits("quadratic", x, y, x[:8], y[:8], num_classes=None)
    return FederatedDataset.from_partition(data, parts)


def weighted_least_squares(fed: FederatedDataset, client_weights: list[float]) -> torch.Tensor:
    """argmin_w sum_k q_k mean_i (w.x_i + b - y_i)^2 over the clients' data, as [w..., b] (float64)."""
    rows, targets = [], []
    for q, ix in zip(client_weights, fed.client_indices):
        design = torch.cat([fed.train_x[ix], torch.ones(len(ix), 1, dtype=torch.float64)], dim=1)
        scale = (q / len(ix)) ** 0.5
        rows.append(design * scale)
        targets.append(fed.train_y[ix] * scale)
    return torch.linalg.lstsq(torch.cat(rows), torch.cat(targets).unsqueeze(1)).solution.squeeze(1)


def linear_model(fed: FederatedDataset, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return LinearRegression(input_shape=fed.input_shape).double()


def classification_federation(num_clients: int = 6, seed: int = 0, dim: int = 5, classes: int = 3) -> FederatedDataset:
    """A small label-skewed classification federation with per-client test splits."""
    rng = np.random.default_rng(seed)
    xs, ys, parts, tests_x, tests_y, test_parts = [], [], [], [], [], []
    start = test_start = 0
    centers = rng.normal(0, 2, (classes, dim))
    for _ in range(num_clients):
        n, n_test = int(rng.integers(15, 40)), 10
        probs = rng.dirichlet(np.full(classes, 0.5))
        labels = rng.choice(classes, size=n + n_test, p=probs)
        shift = rng.normal(0, 0.5, dim)
        x = centers[labels] + shift + rng.normal(0, 1.0, (n + n_test, dim))
        xs.append(x[:n])
        ys.append(labels[:n])
        tests_x.append(x[n:])
        tests_y.append(labels[n:])
        parts.append(np.arange(start, start + n))
        test_parts.append(np.arange(test_start, test_start + n_test))
        start += n
        test_start += n_test
    data = DatasetSplits(
        "toy_classification",
        torch.tensor(np.concatenate(xs), dtype=torch.float32),
        torch.tensor(np.concatenate(ys), dtype=torch.int64),
        torch.tensor(np.concatenate(tests_x), dtype=torch.float32),
        torch.tensor(np.concatenate(tests_y), dtype=torch.int64),
        num_classes=classes,
    )
    return FederatedDataset.from_partition(data, parts, test_parts)


def mlp_model(fed: FederatedDataset, seed: int = 0, hidden: tuple[int, ...] = (8,)) -> torch.nn.Module:
    torch.manual_seed(seed)
    return MLP(input_shape=fed.input_shape, num_classes=fed.num_classes, hidden=hidden)


def simulate(
    fed: FederatedDataset,
    model: torch.nn.Module,
    strategy: Strategy,
    trainer: LocalTrainer,
    rounds: int,
    sampler: ClientSampler | None = None,
    seed: int = 0,
    run: bool = True,
) -> Simulation:
    """Build (and by default run) a simulation on the CPU with no callbacks."""
    sim = Simulation(
        fed, model, strategy, sampler or FullParticipation(), trainer, rounds=rounds, seed=seed, eval_every=rounds
    )
    if run:
        sim.run()
    return sim
