"""FedAvg against a second, framework-free implementation of the same round."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fedtorch.client import LocalTrainer
from fedtorch.data.base import DatasetSplits, FederatedDataset
from fedtorch.models import LogisticRegression
from fedtorch.samplers import FullParticipation
from fedtorch.seeding import torch_generator
from fedtorch.simulation import Simulation
from fedtorch.strategies import FedAvg

SIZES = (5, 12, 31)


def tiny_federation() -> FederatedDataset:
    gen = torch.Generator().manual_seed(0)
    n = sum(SIZES)
    x = torch.randn(n, 4, generator=gen)
    y = torch.randint(0, 3, (n,), generator=gen)
    data = DatasetSplits("tiny", x, y, x[:10], y[:10], num_classes=3)
    bounds = np.cumsum((0,) + SIZES)
    parts = [np.arange(a, b) for a, b in zip(bounds[:-1], bounds[1:])]
    return FederatedDataset.from_partition(data, parts)


def reference_client(model, fed, client, round_idx, seed, lr, epochs, batch_size):
    """Plain torch: copy the model, run local SGD in the trainer's batch order, return weights."""
    local = copy.deepcopy(model)
    opt = torch.optim.SGD(local.parameters(), lr=lr)
    idx = fed.client_indices[client]
    gen = torch_generator(seed, "batches", round_idx, client)
    for _ in range(epochs):
        order = idx[torch.randperm(len(idx), generator=gen)]
        for start in range(0, len(idx), batch_size):
            b = order[start : start + batch_size]
            opt.zero_grad()
            F.cross_entropy(local(fed.train_x[b]), fed.train_y[b]).backward()
            opt.step()
    return torch.cat([p.detach().flatten() for p in local.parameters()])


@pytest.mark.parametrize("epochs,batch_size", [(1, 4), (3, 5)])
def test_fedavg_round_equals_sample_weighted_average_of_client_models(epochs, batch_size):
    fed = tiny_federation()
    torch.manual_seed(1)
    model = LogisticRegression((4,), 3)
    start = copy.deepcopy(model)
    lr, seed = 0.3, 7
    sim = Simulation(
        fed,
        model,
        FedAvg(),
        FullParticipation(),
        LocalTrainer(lr=lr, epochs=epochs, batch_size=batch_size),
        rounds=1,
        seed=seed,
    )
    sim.run()

    client_models = [reference_client(start, fed, k, 1, seed, lr, epochs, batch_size) for k in range(3)]
    weights = torch.tensor(SIZES, dtype=torch.float32)
    expected = sum(w * m for w, m in zip(weights, client_models)) / weights.sum()
    torch.testing.assert_close(sim.global_vector, expected, rtol=1e-5, atol=1e-6)

    # The check can fail: a uniform average (the classic weighting bug) is measurably different.
    uniform = sum(client_models) / 3
    assert not torch.allclose(sim.global_vector, uniform, rtol=1e-5, atol=1e-6)


def test_server_lr_scales_the_averaged_delta():
    fed = tiny_federation()
    results = []
    for server_lr in (1.0, 0.5):
        torch.manual_seed(1)
        model = LogisticRegression((4,), 3)
        init = torch.cat([p.detach().flatten() for p in model.parameters()])
        sim = Simulation(fed, model, FedAvg(server_lr=server_lr), FullParticipation(), LocalTrainer(lr=0.1), rounds=1)
        sim.run()
        results.append(sim.global_vector - init)
    torch.testing.assert_close(results[1], 0.5 * results[0])


def test_trainer_num_steps_matches_steps_taken():
    fed = tiny_federation()
    trainer = LocalTrainer(lr=0.1, epochs=2, batch_size=5)
    torch.manual_seed(0)
    sim = Simulation(fed, LogisticRegression((4,), 3), FedAvg(), FullParticipation(), trainer, rounds=1)
    for k, size in enumerate(SIZES):
        update = sim.train_client(1, k)
        assert update.num_steps == trainer.num_steps(size) == 2 * -(-size // 5)
        assert int(update.metrics["samples_seen"]) == 2 * size
    capped = sim.train_client(1, 2, max_steps=3)
    assert capped.num_steps == 3
