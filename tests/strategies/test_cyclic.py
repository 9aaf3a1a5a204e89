"""Cyclic weight transfer: the model is handed from client to client, checked against the same
training written out by hand; the cyclic sampler's shuffled order; the cohort-of-one refusal."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedtorch.client import LocalTrainer, OptimizerSettings
from fedtorch.compatibility import check_composition
from fedtorch.errors import OptionError
from fedtorch.samplers import CyclicSampler, FullParticipation, UniformSampler
from fedtorch.strategies import Cyclic, FedAvg
from tests.strategies._federations import linear_model, quadratic_federation, simulate


def _setup(sampler, num_clients: int):  # noqa: ANN001, ANN202 - small test helper
    sampler.setup(np.full(num_clients, 10))
    return sampler


def test_the_model_is_passed_from_client_to_client():
    """Rounds 1..6 with clients 0, 1, 2, 0, 1, 2: each trains 3 full-batch gradient steps from the
    previous client's model, with no averaging; the same sequence written out by hand."""
    fed = quadratic_federation(num_clients=3, sizes=[12, 20, 31])
    lr, steps, rounds = 0.05, 3, 6
    model = linear_model(fed)
    w = torch.cat([model.linear.weight.detach().reshape(-1), model.linear.bias.detach()]).clone()
    trainer = LocalTrainer(lr=lr, epochs=steps, batch_size=-1)
    sim = simulate(fed, model, Cyclic(), trainer, rounds=rounds, sampler=CyclicSampler(clients_per_round=1))

    for r in range(rounds):
        ix = fed.client_indices[r % 3]
        design = torch.cat([fed.train_x[ix], torch.ones(len(ix), 1, dtype=torch.float64)], dim=1)
        for _ in range(steps):
            w = w - lr * 2.0 / len(ix) * design.T @ (design @ w - fed.train_y[ix])  # of the mean squared error
    torch.testing.assert_close(sim.global_vector, w, rtol=0, atol=1e-12)

    # Averaging the same clients (FedAvg with all three every round) lands elsewhere.
    fedavg = simulate(fed, linear_model(fed), FedAvg(), trainer, rounds=2)
    assert (fedavg.global_vector - w).norm() > 1e-2


def test_shuffled_cycles_visit_every_client_once_in_a_new_order():
    sampler = _setup(CyclicSampler(clients_per_round=1, shuffle=True, seed=7), num_clients=5)
    rng = np.random.default_rng(0)
    picks = [int(sampler.sample(r, rng)[0]) for r in range(1, 5 * 6 + 1)]
    cycles = [picks[i : i + 5] for i in range(0, len(picks), 5)]
    assert all(sorted(c) == [0, 1, 2, 3, 4] for c in cycles)  # each pass takes every client once
    assert len({tuple(c) for c in cycles}) > 1  # ... in a new order (6 draws of 120 orders)
    # The order follows from (seed, round) alone: not from the round's generator, nor from history.
    again = _setup(CyclicSampler(clients_per_round=1, shuffle=True, seed=7), num_clients=5)
    assert [int(again.sample(r, None)[0]) for r in range(30, 0, -1)] == picks[::-1]
    other = _setup(CyclicSampler(clients_per_round=1, shuffle=True, seed=8), num_clients=5)
    assert [int(other.sample(r, rng)[0]) for r in range(1, 31)] != picks
    # Two clients a round out of 4: every cycle of 2 rounds covers the 4 clients.
    pairs = _setup(CyclicSampler(clients_per_round=2, shuffle=True, seed=1), num_clients=4)
    for first in range(1, 20, 2):
        both = np.concatenate([pairs.sample(first, rng), pairs.sample(first + 1, rng)])
        assert sorted(both.tolist()) == [0, 1, 2, 3]


def test_unshuffled_order_is_unchanged():
    sampler = _setup(CyclicSampler(clients_per_round=3), num_clients=5)
    assert [sampler.sample(r, None).tolist() for r in (1, 2, 3)] == [[0, 1, 2], [0, 3, 4], [1, 2, 3]]


def test_bad_cyclic_sampler_options_are_refused():
    with pytest.raises(OptionError, match="sampler.shuffle"):
        CyclicSampler(clients_per_round=1, shuffle="yes")
    with pytest.raises(OptionError, match="sampler.clients_per_round=3 .*divisor"):
        _setup(CyclicSampler(clients_per_round=3, shuffle=True), num_clients=4)


@pytest.mark.parametrize(
    "sampler, ok",
    [
        (CyclicSampler(clients_per_round=1), True),
        (CyclicSampler(clients_per_round=1, shuffle=True), True),
        (UniformSampler(clients_per_round=1), True),
        (CyclicSampler(clients_per_round=2), False),
        (FullParticipation(), False),
        (CyclicSampler(clients_per_round=1, dropout=0.1), False),
    ],
)
def test_cyclic_needs_exactly_one_client_every_round(sampler, ok: bool):  # noqa: ANN001
    _setup(sampler, num_clients=4)
    compose = lambda: check_composition(  # noqa: E731
        Cyclic(), Cyclic().aggregator, [], sampler, OptimizerSettings(name="SGD", lr=0.1), {"sampler": "cyclic"}
    )
    if ok:
        compose()
    else:
        with pytest.raises(OptionError, match="sampler='cyclic' is invalid: strategy=cyclic trains exactly 1"):
            compose()
