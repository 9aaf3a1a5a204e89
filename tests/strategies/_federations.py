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


class BatchNormMLP(torch.nn.Module):
    """Linear-BatchNorm-ReLU-Linear: the smallest model with a normalization layer (for FedBN)."""

    def __init__(self, dim: int, classes: int, hidden: int = 8) -> None:
        super().__init__()
        self.body = torch.nn.Linear(dim, hidden)
        self.norm = torch.nn.BatchNorm1d(hidden)
        self.head = torch.nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.norm(self.body(x))))


def bn_model(fed: FederatedDataset, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return BatchNormMLP(fed.input_shape[0], fed.num_classes)


def trained(model: torch.nn.Module, start: torch.Tensor, fed: FederatedDataset, client: int, generator: torch.Generator,
            trainer: LocalTrainer, frozen: tuple[int, ...] = (), loss_fn=None) -> torch.Tensor:  # fmt: skip
    """A second implementation of one client's local training: a separate model, the parameters in
    `frozen` (indices in parameter order) without gradients, `LocalTrainer` from `start`."""
    from fedtorch.client import default_loss
    from fedtorch.params import FlatModel

    flat = FlatModel(model)
    for i in frozen:
        flat.params[i].requires_grad_(False)
    trainer.train(flat, start, fed.train_x, fed.train_y, fed.client_indices[client], generator,
                  loss_fn or default_loss(fed.num_classes), client_id=client)  # fmt: skip
    for i in frozen:
        flat.params[i].requires_grad_(True)
    return flat.vector.clone()


def fedavg_of(start: torch.Tensor, locals_: dict[int, torch.Tensor], fed: FederatedDataset) -> torch.Tensor:
    """FedAvg's new global model from client models, weighted by client sizes (by hand)."""
    sizes = fed.client_sizes()
    total = sum(int(sizes[k]) for k in locals_)
    return start + sum((int(sizes[k]) / total) * (v - start) for k, v in locals_.items())


def fine_tuned(model_fn, start: torch.Tensor, fed: FederatedDataset, client: int, steps: int, trainer_options: dict,
               frozen: tuple[int, ...] = (), seed: int = 0, round_idx: int = 0) -> torch.Tensor:  # fmt: skip
    """A second implementation of `ClientContext.fine_tune`: exactly `steps` trainer steps, in passes of
    at most the trainer's local work, pass i on stream finetune/i."""
    from fedtorch.seeding import torch_generator

    weights, done, attempt = start, 0, 0
    per_pass = LocalTrainer(**trainer_options).num_steps(len(fed.client_indices[client]))
    while done < steps:
        trainer = LocalTrainer(**trainer_options, max_steps=steps - done)
        generator = torch_generator(seed, f"finetune/{attempt}", round_idx, client)
        weights = trained(model_fn(), weights, fed, client, generator, trainer, frozen)
        done += min(per_pass, steps - done)
        attempt += 1
    return weights
