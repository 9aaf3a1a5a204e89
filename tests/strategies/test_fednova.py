"""FedNova (Wang et al. 2020): normalized averaging for clients with unequal local steps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedtorch.client import LocalTrainer
from fedtorch.samplers import Cohort, FullParticipation
from fedtorch.strategies import FedAvg, FedNova
from fedtorch.strategies.fednova import normalizing_factor
from tests.strategies._federations import linear_model, quadratic_federation, simulate, weighted_least_squares


class FixedWork(FullParticipation):
    """Every client every round, client k completing the share work[k] of its local steps."""

    def __init__(self, work: list[float]) -> None:
        super().__init__()
        self.work = np.asarray(work, dtype=float)

    def cohort(self, round_idx: int, rng: np.random.Generator) -> Cohort:
        return Cohort(ids=np.arange(self.num_clients), work=self.work.copy(), sampled=self.num_clients)


@pytest.mark.parametrize("rho", [0.0, 0.5, 0.9])
def test_normalizing_factor_is_the_l1_norm_of_the_momentum_aggregation_vector(rho):
    # Heavy-ball SGD: the gradient of step k contributes (1 - rho^(tau - k)) / (1 - rho) to the total step.
    for tau in (1, 2, 7):
        a = [sum(rho**j for j in range(tau - k)) for k in range(tau)]
        assert normalizing_factor(tau, rho) == pytest.approx(sum(a))


def test_one_round_matches_the_closed_form_weighting():
    fed = quadratic_federation(num_clients=3, sizes=[10, 20, 30])
    trainer = LocalTrainer(lr=0.01, epochs=20, batch_size=-1)
    sampler = FixedWork([1.0, 0.5, 0.1])  # 20, 10 and 2 local steps
    sim = simulate(fed, linear_model(fed), FedNova(), trainer, rounds=1, sampler=sampler, run=False)
    x0 = sim.global_vector.clone()
    jobs = sim.jobs(1, sim.sample(1))  # the round's straggler budgets
    updates = [sim.runner.run(job, sim.global_vector) for job in jobs]
    assert [u.num_steps for u in updates] == [20, 10, 2]

    p = np.array([10, 20, 30]) / 60
    taus = [u.num_steps for u in updates]
    tau_eff = float(p @ taus)
    expected = x0 + tau_eff * sum(pk * u.delta / t for pk, u, t in zip(p, updates, taus))
    sim.run()
    torch.testing.assert_close(sim.global_vector, expected, rtol=0, atol=1e-12)
    assert sim.strategy.tau_eff == pytest.approx(tau_eff)
    fedavg = x0 + sum(pk * u.delta for pk, u in zip(p, updates))
    assert (fedavg - expected).norm() > 1e-3  # the weighting differs from FedAvg's


def test_heterogeneous_steps_bias_fedavg_but_not_fednova():
    fed = quadratic_federation(num_clients=4)
    optimum = weighted_least_squares(fed, [1.0] * 4)
    trainer = LocalTrainer(lr=0.02, epochs=10, batch_size=-1)
    work = [1.0, 0.5, 0.25, 0.1]
    errors = {}
    for name, strategy in (("fedavg", FedAvg()), ("fednova", FedNova())):
        sim = simulate(fed, linear_model(fed), strategy, trainer, rounds=30, sampler=FixedWork(work))
        errors[name] = float((sim.global_vector - optimum).norm())
    assert errors["fednova"] < 0.2 * errors["fedavg"]
