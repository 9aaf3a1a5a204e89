"""pFedMe (T. Dinh et al. 2020) on least squares, where the inner problem has a closed form: the
inner solver reaches the proximal point, and the outer step is w - eta lambda (w - theta)."""

from __future__ import annotations

import pytest
import torch

from fedtorch.client import LocalTrainer
from fedtorch.errors import OptionError
from fedtorch.runner import ClientContext, ClientJob
from fedtorch.samplers import FullParticipation
from fedtorch.strategies import PFedMe
from tests.strategies._federations import linear_model, quadratic_federation, simulate

LR = 0.05


def _sim(fed, strategy, max_steps=1, optimizer=None):
    trainer = LocalTrainer(optimizer=optimizer, lr=LR, epochs=1, batch_size=-1, max_steps=max_steps)
    return simulate(fed, linear_model(fed), strategy, trainer, rounds=1, sampler=FullParticipation(), run=False)


def _design(fed, k):
    ix = fed.client_indices[k]
    a = torch.cat([fed.train_x[ix], torch.ones(len(ix), 1, dtype=torch.float64)], dim=1)
    return a, fed.train_y[ix]


def _gradient(fed, k, w):
    a, y = _design(fed, k)
    return 2.0 / len(y) * a.T @ (a @ w - y)


def _prox_point(fed, k, w, lam):
    """argmin_theta mean((A theta - y)^2) + lam/2 ||theta - w||^2, solved exactly."""
    a, y = _design(fed, k)
    n = len(y)
    return torch.linalg.solve(2.0 / n * a.T @ a + lam * torch.eye(3, dtype=torch.float64), 2.0 / n * a.T @ y + lam * w)


def _step_size(fed, lam):
    curvature = max(float(torch.linalg.eigvalsh(2.0 / len(y) * a.T @ a).max()) for a, y in
                    (_design(fed, k) for k in range(fed.num_clients)))  # fmt: skip
    return 1.0 / (curvature + lam)


def test_the_inner_problem_is_solved_to_tolerance():
    fed = quadratic_federation()
    lam = 2.0
    sim = _sim(fed, PFedMe(lam=lam, inner_steps=400, personal_lr=_step_size(fed, lam), finetune_steps=1))
    w = sim.global_vector
    for k in range(fed.num_clients):
        theta = sim.strategy.adapt(ClientContext(sim.runner, ClientJob(k, -1), w, {}))
        torch.testing.assert_close(theta, _prox_point(fed, k, w, lam), rtol=0, atol=1e-9)


def test_one_local_step_by_hand():
    fed = quadratic_federation()
    lam, plr = 3.0, 0.02
    sim = _sim(fed, PFedMe(lam=lam, inner_steps=1, personal_lr=plr))
    w = sim.global_vector.clone()
    for k in range(fed.num_clients):
        update = sim.train_client(1, k)
        theta = w - plr * _gradient(fed, k, w)  # one inner step from w (the prox term is 0 there)
        torch.testing.assert_close(update.delta, -LR * lam * (w - theta), rtol=0, atol=1e-12)
        torch.testing.assert_close(sim.runner.state.get(k, "personal", "cpu"), theta, rtol=0, atol=1e-12)


def test_the_local_optimizer_must_be_plain_sgd():
    fed = quadratic_federation()
    with pytest.raises(OptionError, match=r"trainer\.optimizer=.*strategy=pfedme takes plain SGD"):
        _sim(fed, PFedMe(), optimizer=lambda params, lr: torch.optim.SGD(params, lr=lr, momentum=0.9))
