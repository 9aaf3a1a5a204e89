"""`eval/train_loss`: the global model's loss on the clients' training data (FedProx's "training
loss"), against a second computation: the sample-weighted mean of each client's own mean loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fedtorch.client import LocalTrainer
from fedtorch.samplers import UniformSampler
from fedtorch.simulation import Simulation
from fedtorch.strategies import FedAvg
from tests.strategies._federations import classification_federation, mlp_model


def _sim(fed, **options) -> Simulation:
    trainer = LocalTrainer(lr=0.1, epochs=1, batch_size=8)
    return Simulation(fed, mlp_model(fed), FedAvg(), UniformSampler(3), trainer, rounds=2, eval_every=1, **options)


def test_the_training_objective_is_the_sample_weighted_mean_of_the_clients_losses():
    fed = classification_federation(num_clients=6)
    sim = _sim(fed, eval_train=True)
    sim.run()
    row = sim.state.history[-1]
    model = sim.model
    sim.flat.load(sim.global_vector)
    with torch.no_grad():
        per_client = [(F.cross_entropy(model(fed.train_x[ix]), fed.train_y[ix]).item(), len(ix))
                      for ix in fed.client_indices]  # fmt: skip
    expected = sum(loss * n for loss, n in per_client) / sum(n for _, n in per_client)
    assert row["eval/train_loss"] == pytest.approx(expected, rel=1e-6)
    assert 0.0 <= row["eval/train_accuracy"] <= 1.0 and "train/loss" in row  # both: the two differ
    assert row["eval/train_loss"] != pytest.approx(row["train/loss"], rel=1e-3)


def test_a_fixed_subset_is_the_same_for_every_seed_and_every_round():
    fed = classification_federation(num_clients=6)
    a, b = _sim(fed, eval_train=True, eval_train_max_samples=40), _sim(fed, eval_train=True, eval_train_max_samples=40)
    assert len(a._train_eval_index) == 40 and torch.equal(a._train_eval_index, b._train_eval_index)
    assert "eval/train_loss" not in _sim(fed).evaluate()  # off by default
