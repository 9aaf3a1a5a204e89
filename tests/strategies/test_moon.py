"""MOON (Li et al. 2021): the contrastive term by hand, mu = 0 is FedAvg, and clients keep their
previous model."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fedtorch.client import LocalTrainer
from fedtorch.errors import OptionError
from fedtorch.samplers import FullParticipation, UniformSampler
from fedtorch.strategies import MOON, FedAvg
from fedtorch.strategies.moon import contrastive_loss
from tests.strategies._federations import (
    classification_federation,
    mlp_model,
    quadratic_federation,
    simulate,
)


def _sim(fed, strategy, rounds=2, sampler=None):
    trainer = LocalTrainer(lr=0.1, epochs=1, batch_size=8)
    return simulate(fed, mlp_model(fed), strategy, trainer, rounds, sampler or UniformSampler(4), run=False)


def test_contrastive_loss_by_hand():
    z = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    z_glob = torch.tensor([[1.0, 1.0], [0.0, 1.0]])
    z_prev = torch.tensor([[-1.0, 0.0], [3.0, 0.0]])
    tau = 0.5
    # Sample 1: sim(z, glob) = 1/sqrt(2), sim(z, prev) = -1; sample 2: 1 and 0.
    terms = [
        -math.log(math.exp(2**-0.5 / tau) / (math.exp(2**-0.5 / tau) + math.exp(-1 / tau))),
        -math.log(math.exp(1 / tau) / (math.exp(1 / tau) + math.exp(0 / tau))),
    ]
    assert float(contrastive_loss(z, z_glob, z_prev, tau)) == pytest.approx(sum(terms) / 2, rel=1e-6)


def test_mu_zero_is_fedavg_bit_for_bit():
    fed = classification_federation()
    moon, fedavg = _sim(fed, MOON(mu=0.0), rounds=3), _sim(fed, FedAvg(), rounds=3)
    moon.run()
    fedavg.run()
    assert torch.equal(moon.global_vector, fedavg.global_vector)


def _with(fed, vector):
    model = mlp_model(fed)
    torch.nn.utils.vector_to_parameters(vector, model.parameters())
    return model


def test_a_clients_second_turn_by_hand():
    """Full-batch steps: round 1 is plain cross-entropy (no previous model); in round 2 a client
    descends CE + mu * l_con with z_glob from the round's global model and z_prev from its round-1 model."""
    fed = classification_federation()
    trainer = LocalTrainer(lr=0.1, epochs=1, batch_size=-1)
    moon = simulate(fed, mlp_model(fed), MOON(mu=5.0), trainer, 2, FullParticipation(), run=False)
    fedavg = simulate(fed, mlp_model(fed), FedAvg(), trainer, 2, FullParticipation(), run=False)
    moon.run_round(1)
    fedavg.run_round(1)
    assert torch.equal(moon.global_vector, fedavg.global_vector)
    previous = {k: moon.runner.state.get(k, "previous", "cpu") for k in range(fed.num_clients)}
    moon.state.round = 1
    w = moon.global_vector.clone()
    for k in range(fed.num_clients):
        update = moon.train_client(2, k)
        ix = fed.client_indices[k]
        x, y = fed.train_x[ix], fed.train_y[ix]
        model = _with(fed, w)
        with torch.no_grad():
            z_glob, z_prev = _with(fed, w).features(x), _with(fed, previous[k]).features(x)
        z = model.features(x)
        loss = F.cross_entropy(model.classifier(z), y) + 5.0 * contrastive_loss(z, z_glob, z_prev, 0.5)
        grads = torch.autograd.grad(loss, list(model.parameters()))
        expected = -0.1 * torch.cat([g.reshape(-1) for g in grads])
        torch.testing.assert_close(update.delta, expected, rtol=0, atol=1e-6)
        torch.testing.assert_close(moon.runner.state.get(k, "previous", "cpu"), w + update.delta, rtol=0, atol=1e-6)


def test_a_model_without_a_representation_is_refused():
    fed = quadratic_federation()
    bare = torch.nn.Sequential(torch.nn.Linear(2, 1)).double()
    with pytest.raises(OptionError, match="model='Sequential' is invalid: strategy=moon needs"):
        simulate(fed, bare, MOON(), LocalTrainer(lr=0.1), 1, FullParticipation(), run=False)
