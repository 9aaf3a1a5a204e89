"""APFL (Deng et al. 2020): the global model is FedAvg's; v and alpha follow the paper's update
rules, checked by hand on logistic regression with full-batch steps."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fedtorch.client import LocalTrainer
from fedtorch.models import LogisticRegression
from fedtorch.runner import ClientContext, ClientJob
from fedtorch.samplers import FullParticipation, UniformSampler
from fedtorch.strategies import APFL, FedAvg
from tests.strategies._federations import classification_federation, simulate

LR = 0.5


def _sim(fed, strategy, rounds=2, batch_size=-1, sampler=None):
    torch.manual_seed(0)
    model = LogisticRegression(fed.input_shape, fed.num_classes)
    trainer = LocalTrainer(lr=LR, epochs=1, batch_size=batch_size)
    return simulate(fed, model, strategy, trainer, rounds, sampler or FullParticipation(), run=False)


def _grad(fed, k, vector):
    """grad of client k's mean cross-entropy at flat logistic-regression weights `vector`."""
    v = vector.clone().requires_grad_(True)
    weight, bias = v[:15].view(3, 5), v[15:]
    ix = fed.client_indices[k]
    (g,) = torch.autograd.grad(F.cross_entropy(fed.train_x[ix] @ weight.T + bias, fed.train_y[ix]), v)
    return g


def test_the_global_model_is_fedavg_bit_for_bit():
    fed = classification_federation()
    apfl = _sim(fed, APFL(alpha=0.25), rounds=3, batch_size=8, sampler=UniformSampler(3))
    fedavg = _sim(fed, FedAvg(), rounds=3, batch_size=8, sampler=UniformSampler(3))
    apfl.run()
    fedavg.run()
    assert torch.equal(apfl.global_vector, fedavg.global_vector)


def test_alpha_zero_without_adaptation_predicts_with_the_global_model():
    fed = classification_federation()
    sim = _sim(fed, APFL(alpha=0.0, adaptive_alpha=False))
    metrics = sim.run()["metrics"]
    for k in range(fed.num_clients):
        context = ClientContext(sim.runner, ClientJob(k, 0), sim.global_vector, {})
        assert torch.equal(sim.strategy.personal_model(context), sim.global_vector)
    assert metrics["eval/personal/accuracy_mean"] == metrics["eval/clients/accuracy_mean"]


def test_v_and_alpha_steps_by_hand():
    fed = classification_federation()
    sim = _sim(fed, APFL(alpha=0.25, alpha_lr=2.0))
    w0 = sim.global_vector.clone()
    sim.run_round(1)
    sim.state.round = 1
    w1 = sim.global_vector.clone()
    state = {k: (sim.runner.state.get(k, "personal", "cpu"), float(sim.runner.state.get(k, "alpha", "cpu")))
             for k in range(fed.num_clients)}  # fmt: skip
    for k, (v1, alpha1) in state.items():
        # Round 1, the first step: v = w0, so vbar = w0, <v - w, g> = 0 and alpha does not move.
        assert alpha1 == 0.25
        torch.testing.assert_close(v1, w0 - LR * 0.25 * _grad(fed, k, w0), rtol=0, atol=1e-6)
    sim.run_round(2)
    for k, (v1, alpha1) in state.items():
        g = _grad(fed, k, alpha1 * v1 + (1 - alpha1) * w1)
        alpha2 = min(max(alpha1 - 2.0 * float(torch.dot((v1 - w1).double(), g.double())), 0.0), 1.0)
        assert float(sim.runner.state.get(k, "alpha", "cpu")) == pytest.approx(alpha2, abs=1e-7)
        torch.testing.assert_close(sim.runner.state.get(k, "personal", "cpu"), v1 - LR * alpha1 * g, rtol=0, atol=1e-6)
        context = ClientContext(sim.runner, ClientJob(k, 0), sim.global_vector, {})
        expected = alpha2 * sim.runner.state.get(k, "personal", "cpu") + (1 - alpha2) * sim.global_vector
        torch.testing.assert_close(sim.strategy.personal_model(context), expected, rtol=0, atol=1e-6)
