"""FedProx (Li et al. 2020): mu = 0 is FedAvg bit for bit; mu > 0 is gradient descent on the
proximal objective, checked against hand-written gradient descent."""

from __future__ import annotations

import torch

from fedtorch.client import LocalTrainer
from fedtorch.models import LogisticRegression
from fedtorch.samplers import UniformSampler
from fedtorch.strategies import FedAvg, FedProx
from tests.strategies._federations import classification_federation, linear_model, quadratic_federation, simulate


def test_mu_zero_is_fedavg_bit_for_bit():
    fed = classification_federation()
    results = []
    for strategy in (FedAvg(), FedProx(mu=0.0)):
        torch.manual_seed(1)
        model = LogisticRegression(fed.input_shape, fed.num_classes)
        trainer = LocalTrainer(lr=0.1, epochs=2, batch_size=8)
        results.append(simulate(fed, model, strategy, trainer, rounds=3, sampler=UniformSampler(4)).global_vector)
    assert torch.equal(results[0], results[1])


def test_proximal_gradient_descent_by_hand():
    """Two clients, 3 full-batch steps of w <- w - lr (grad f_k(w) + mu (w - w0)), then the weighted mean."""
    fed = quadratic_federation(num_clients=2, sizes=[12, 30])
    lr, mu, steps = 0.05, 0.7, 3
    model = linear_model(fed)
    w0 = torch.cat([model.linear.weight.detach().reshape(-1), model.linear.bias.detach()]).clone()
    sim = simulate(fed, model, FedProx(mu=mu), LocalTrainer(lr=lr, epochs=steps, batch_size=-1), rounds=1)

    total = torch.zeros_like(w0)
    for ix in fed.client_indices:
        design = torch.cat([fed.train_x[ix], torch.ones(len(ix), 1, dtype=torch.float64)], dim=1)
        w = w0.clone()
        for _ in range(steps):
            grad = 2.0 / len(ix) * design.T @ (design @ w - fed.train_y[ix])  # of the mean squared error
            w = w - lr * (grad + mu * (w - w0))
        total += len(ix) * w
    expected = total / sum(len(ix) for ix in fed.client_indices)
    torch.testing.assert_close(sim.global_vector, expected, rtol=0, atol=1e-12)

    # ...and the proximal term made a difference: FedAvg lands elsewhere.
    fedavg = simulate(fed, linear_model(fed), FedAvg(), LocalTrainer(lr=lr, epochs=steps, batch_size=-1), rounds=1)
    assert (fedavg.global_vector - expected).norm() > 1e-3
