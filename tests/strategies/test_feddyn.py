"""FedDyn (Acar et al. 2021): its fixed point is the global optimum even with inexact local solves."""

from __future__ import annotations

import torch

from fedtorch.client import LocalTrainer
from fedtorch.samplers import UniformSampler
from fedtorch.strategies import FedAvg, FedDyn
from tests.strategies._federations import linear_model, quadratic_federation, simulate, weighted_least_squares


def test_fixed_point_is_the_optimum_where_fedavg_is_biased():
    fed = quadratic_federation(num_clients=3)
    optimum = weighted_least_squares(fed, [1.0] * 3)  # the paper's (1/m) sum_k L_k
    trainer = LocalTrainer(lr=0.08, epochs=5, batch_size=-1)
    feddyn = simulate(fed, linear_model(fed), FedDyn(alpha=3.0), trainer, rounds=20)
    fedavg = simulate(fed, linear_model(fed), FedAvg(weighted=False), trainer, rounds=20)
    assert (feddyn.global_vector - optimum).norm() < 1e-3
    assert (fedavg.global_vector - optimum).norm() > 0.5
    # At the fixed point every client's gradient estimate is its gradient at the optimum, and
    # the server's h (their mean) is zero.
    assert float(feddyn.strategy.h.norm()) < 1e-2


def test_server_state_is_the_mean_of_client_states_and_the_update_by_hand():
    fed = quadratic_federation(num_clients=5, sizes=[10, 14, 18, 22, 26])
    alpha = 0.5
    trainer = LocalTrainer(lr=0.02, epochs=3, batch_size=-1)
    sim = simulate(fed, linear_model(fed), FedDyn(alpha=alpha), trainer, rounds=3, sampler=UniformSampler(2))
    strategy = sim.strategy
    # h = (1/m) sum_k g_k over all m clients (clients never sampled hold g_k = 0).
    store = sim.runner.state
    mean = sum(store.get(k, "grad", "cpu") for k in store.clients("grad")) / fed.num_clients
    torch.testing.assert_close(strategy.h, mean, rtol=0, atol=1e-12)

    # One more round by hand: w_{t+1} = mean_k(w_k) - h_new / alpha, h_new = h - alpha/m sum_k (w_k - w_t).
    w_t = sim.global_vector.clone()
    ids = sim.sample(4).ids
    g = {int(k): store.get(int(k), "grad", "cpu", default=lambda: torch.zeros_like(w_t)) for k in ids}
    deltas = []
    for k in ids:
        ix = fed.client_indices[int(k)]
        design = torch.cat([fed.train_x[ix], torch.ones(len(ix), 1, dtype=torch.float64)], dim=1)
        w = w_t.clone()
        for _ in range(trainer.num_steps(len(ix))):
            grad = 2.0 / len(ix) * design.T @ (design @ w - fed.train_y[ix])
            w = w - trainer.lr * (grad - g[int(k)] + alpha * (w - w_t))
        deltas.append(w - w_t)
    h_new = strategy.h - alpha / fed.num_clients * sum(deltas)
    expected = w_t + sum(deltas) / len(deltas) - h_new / alpha
    sim.run_round(4)
    torch.testing.assert_close(sim.global_vector, expected, rtol=0, atol=1e-10)
    torch.testing.assert_close(strategy.h, h_new, rtol=0, atol=1e-12)
