"""Per-FedAvg (Fallah et al. 2020): both variants' local step by hand on least squares (where the
Hessian is constant and the Hessian-free finite difference is exact), and the one-step adaptation."""

from __future__ import annotations

import pytest
import torch

from fedtorch.client import LocalTrainer
from fedtorch.runner import ClientContext, ClientJob
from fedtorch.samplers import FullParticipation
from fedtorch.strategies import PerFedAvg
from tests.strategies._federations import linear_model, quadratic_federation, simulate

BETA, ALPHA = 0.05, 0.1


def _sim(fed, strategy):
    trainer = LocalTrainer(lr=BETA, epochs=1, batch_size=-1, max_steps=1)  # full batches: D = D' = D''
    return simulate(fed, linear_model(fed), strategy, trainer, rounds=1, sampler=FullParticipation(), run=False)


def _least_squares(fed, k):
    ix = fed.client_indices[k]
    a = torch.cat([fed.train_x[ix], torch.ones(len(ix), 1, dtype=torch.float64)], dim=1)
    y = fed.train_y[ix]
    hessian = 2.0 / len(y) * a.T @ a
    return (lambda w: 2.0 / len(y) * a.T @ (a @ w - y)), hessian


@pytest.mark.parametrize("variant", ["fo", "hf"])
def test_one_local_step_by_hand(variant):
    fed = quadratic_federation()
    sim = _sim(fed, PerFedAvg(alpha=ALPHA, variant=variant, delta=1e-4))
    w = sim.global_vector.clone()
    for k in range(fed.num_clients):
        gradient, hessian = _least_squares(fed, k)
        outer = gradient(w - ALPHA * gradient(w))
        direction = outer if variant == "fo" else (torch.eye(3, dtype=torch.float64) - ALPHA * hessian) @ outer
        update = sim.train_client(1, k)
        torch.testing.assert_close(update.delta, -BETA * direction, rtol=0, atol=1e-9)


def test_evaluation_adapts_the_global_model_by_one_step():
    fed = quadratic_federation()
    sim = _sim(fed, PerFedAvg(alpha=ALPHA, adapt_steps=1))
    w = sim.global_vector
    for k in range(fed.num_clients):
        gradient, _ = _least_squares(fed, k)
        personal = sim.strategy.personal_model(ClientContext(sim.runner, ClientJob(k, 0), w, {}))
        torch.testing.assert_close(personal, w - ALPHA * gradient(w), rtol=0, atol=1e-12)
