"""SCAFFOLD (Karimireddy et al. 2020), option II."""

from __future__ import annotations

import torch

from fedtorch.client import LocalTrainer
from fedtorch.models import LogisticRegression
from fedtorch.samplers import UniformSampler
from fedtorch.strategies import FedAvg, Scaffold
from tests.strategies._federations import (
    classification_federation,
    linear_model,
    quadratic_federation,
    simulate,
    weighted_least_squares,
)


def test_reaches_the_optimum_where_fedavg_stays_biased():
    fed = quadratic_federation(num_clients=3)
    optimum = weighted_least_squares(fed, [1.0] * 3)  # equal sizes: the pooled least squares
    trainer = LocalTrainer(lr=0.08, epochs=5, batch_size=-1)  # 5 local steps per round
    scaffold = simulate(fed, linear_model(fed), Scaffold(), trainer, rounds=20).global_vector
    fedavg = simulate(fed, linear_model(fed), FedAvg(), trainer, rounds=20).global_vector
    assert (scaffold - optimum).norm() < 1e-3
    assert (fedavg - optimum).norm() > 0.5  # FedAvg's fixed point with many local steps is biased


def _build(fed, strategy, rounds=1, clients=3):
    torch.manual_seed(0)
    model = LogisticRegression(fed.input_shape, fed.num_classes)
    trainer = LocalTrainer(lr=0.1, epochs=1, batch_size=8)
    return simulate(fed, model, strategy, trainer, rounds=rounds, sampler=UniformSampler(clients), run=False)


def test_first_round_is_fedavg_and_control_variates_follow_option_two():
    fed = classification_federation(num_clients=5)
    fedavg, scaffold = _build(fed, FedAvg()), _build(fed, Scaffold())
    # Every client's round-1 update from the initial model (the same streams as inside the run).
    updates = {k: fedavg.train_client(1, k) for k in range(fed.num_clients)}
    fedavg.run()
    scaffold.run()
    # c = c_i = 0 in round 1: the correction adds exact zeros.
    assert torch.equal(fedavg.global_vector, scaffold.global_vector)

    strategy = scaffold.strategy
    store = scaffold.runner.state
    sizes = fed.client_sizes()
    participants = store.clients("c")
    assert len(participants) == 3
    expected_c = torch.zeros_like(strategy.c)
    for k in participants:
        # option II with c = c_k = 0: c_k+ = (x - y_k) / (K lr)
        update = updates[k]
        c_k = store.get(k, "c", "cpu")
        torch.testing.assert_close(c_k, -update.delta / (update.num_steps * 0.1), rtol=0, atol=1e-6)
        expected_c += sizes[k] / sizes.sum() * c_k
    torch.testing.assert_close(strategy.c, expected_c, rtol=0, atol=1e-7)


def test_server_control_variate_stays_the_weighted_mean_of_all_client_variates():
    fed = classification_federation(num_clients=6, seed=2)
    sim = _build(fed, Scaffold(), rounds=4, clients=2)
    sim.run()
    strategy, store = sim.strategy, sim.runner.state
    sizes = fed.client_sizes()
    assert 2 < len(store.clients("c")) <= 6  # partial participation over several rounds
    mean = sum(sizes[k] / sizes.sum() * store.get(k, "c", "cpu") for k in store.clients("c"))
    torch.testing.assert_close(strategy.c, mean, rtol=0, atol=1e-6)
    assert float(strategy.c.norm()) > 0
