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


@pytest.mark.parametrize(
    "sgd",
    [{"momentum": 0.9}, {"momentum": 0.9, "nesterov": True}, {"momentum": 0.5, "dampening": 0.3}, {}],
    ids=["heavy-ball", "nesterov", "dampening", "plain"],
)
def test_normalizing_factor_is_what_torch_sgd_does_with_a_unit_gradient(sgd):
    """A second computation: run torch.optim.SGD itself on one parameter with a constant gradient of
    1; the distance travelled over tau steps is lr * ||a||_1 (every coefficient is positive)."""
    for tau in (1, 2, 8, 25):
        p = torch.nn.Parameter(torch.zeros((), dtype=torch.float64))
        opt = torch.optim.SGD([p], lr=1.0, **sgd)
        for _ in range(tau):
            p.grad = torch.ones((), dtype=torch.float64)
            opt.step()
        expected = -float(p.detach())
        got = normalizing_factor(tau, sgd.get("momentum", 0.0), sgd.get("nesterov", False), sgd.get("dampening", 0.0))
        assert got == pytest.approx(expected, rel=1e-12)
    # The numbers: rho = 0.9, tau = 8: heavy ball 28.74, Nesterov 33.87.
    assert normalizing_factor(8, 0.9) == pytest.approx(28.742, abs=1e-3)
    assert normalizing_factor(8, 0.9, nesterov=True) == pytest.approx(33.868, abs=1e-3)


def test_fednova_reads_nesterov_from_the_local_optimizer():
    import functools

    fed = quadratic_federation(num_clients=3, sizes=[10, 20, 30])
    optimizer = functools.partial(torch.optim.SGD, momentum=0.9, nesterov=True)
    trainer = LocalTrainer(optimizer, lr=0.01, epochs=4, batch_size=-1)
    sim = simulate(fed, linear_model(fed), FedNova(), trainer, rounds=1, sampler=FixedWork([1.0, 0.5, 1.0]))
    steps = [4, 2, 4]
    p = np.array([10, 20, 30]) / 60
    tau_eff = float(p @ [normalizing_factor(t, 0.9, nesterov=True) for t in steps])
    assert sim.strategy.tau_eff == pytest.approx(tau_eff)
    assert tau_eff != pytest.approx(float(p @ [normalizing_factor(t, 0.9) for t in steps]))
