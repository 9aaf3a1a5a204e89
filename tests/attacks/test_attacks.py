"""Attacks: which clients, what they send, how their data is poisoned, the backdoor's success rate,
and (end to end) FedAvg breaking under sign flipping while the median holds."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from fedtorch.aggregators import CoordinateMedian
from fedtorch.attacks import Backdoor, GaussianAttack, LabelFlip, Scaling, SignFlip, choose_attackers, stamp_trigger
from fedtorch.client import ClientUpdate, LocalTrainer
from fedtorch.models import LogisticRegression
from fedtorch.pipeline import StepRecord
from fedtorch.samplers import UniformSampler
from fedtorch.seeding import numpy_rng
from fedtorch.simulation import Simulation
from fedtorch.strategies import FedAvg
from tests._server import Server
from tests.privacy.helpers import blob_federation, metric


def _update(client: int, delta: torch.Tensor, samples: int = 5) -> ClientUpdate:
    return ClientUpdate(client_id=client, delta=delta.clone(), num_samples=samples, num_steps=1)


def test_attackers_are_a_fixed_function_of_the_seed():
    a = choose_attackers(100, 0.2, seed=3)
    assert len(a) == 20 and len(set(a.tolist())) == 20 and np.all(np.diff(a) > 0)
    assert np.array_equal(a, choose_attackers(100, 0.2, seed=3))
    assert not np.array_equal(a, choose_attackers(100, 0.2, seed=4))
    assert len(choose_attackers(10, 0.0, seed=0)) == 0


def _record(step: int, cohort) -> StepRecord:
    return StepRecord(step=step, cohort=tuple(cohort))


def test_model_poisoning_changes_only_malicious_updates():
    delta = torch.linspace(-1, 1, 10_000)
    flip = SignFlip(num_clients=10, fraction=0.3, scale=4.0, seed=0)
    bad, good = sorted(flip.attackers)[0], min(set(range(10)) - flip.attackers)
    record = _record(1, [bad, good])
    flip.begin(record)
    assert torch.equal(flip.on_update(_update(bad, delta), record).delta, -4.0 * delta)
    assert torch.equal(flip.on_update(_update(good, delta), record).delta, delta)
    assert flip.step_metrics() == {"attack/malicious_clients": 1.0}

    gauss = GaussianAttack(num_clients=10, fraction=0.3, std=2.5, seed=0)
    noise = gauss.on_update(_update(bad, delta), record).delta
    assert float(noise.std()) == pytest.approx(2.5, rel=0.05) and abs(float(noise.mean())) < 0.1
    assert torch.equal(gauss.on_update(_update(bad, delta), record).delta, noise)  # (seed, step, client) stream


def test_model_replacement_scales_by_the_weight_the_aggregator_gives():
    """Bagdasaryan et al.'s gamma = m / eta under a uniform mean, E[W] / (eta * n_a) under FedAvg's
    sample weights: with full participation the global step then carries the attacker's whole update."""
    sizes = [10, 20, 30, 40, 50]
    for weighted in (False, True):
        attack = Scaling(fraction=0.2, scale=None, num_clients=5, seed=0)
        (bad,) = attack.attackers
        server = Server(FedAvg(server_lr=0.5, weighted=weighted), torch.zeros(3), [attack], client_sizes=sizes)
        attacker_delta = torch.tensor([1.0, -2.0, 0.5])
        # The honest clients send nothing: the global step is exactly the attacker's share.
        deltas = [attacker_delta if k == bad else torch.zeros(3) for k in range(5)]
        server.round(1, deltas, samples=sizes)
        torch.testing.assert_close(server.vector, attacker_delta, rtol=1e-6, atol=1e-6)  # model replaced
        gamma = (sum(sizes) / sizes[bad] if weighted else 5) / 0.5
        assert gamma == pytest.approx(float(attack.tamper(1, _update(bad, torch.ones(1), sizes[bad]))[0]))


def test_label_flipping_poisons_only_malicious_clients():
    fed = blob_federation(num_clients=10, classes=4)
    attack = LabelFlip(num_clients=10, fraction=0.2, seed=1)
    poisoned = attack.poison(fed)
    for k in range(10):
        old_x, old_y = fed.train_x[fed.client_indices[k]], fed.train_y[fed.client_indices[k]]
        new_x, new_y = poisoned.train_x[poisoned.client_indices[k]], poisoned.train_y[poisoned.client_indices[k]]
        assert torch.equal(new_x, old_x)
        expected_y = 3 - old_y if k in attack.attackers else old_y
        assert torch.equal(new_y, expected_y)
        if k not in attack.attackers:
            assert torch.equal(poisoned.client_indices[k], fed.client_indices[k])
    assert torch.equal(poisoned.test_y, fed.test_y)
    assert np.array_equal(poisoned.client_sizes(), fed.client_sizes())
    targeted = LabelFlip(num_clients=10, fraction=0.2, source=1, target=2, seed=1)
    assert torch.equal(targeted.flip(torch.tensor([0, 1, 2, 1]), 4), torch.tensor([0, 2, 2, 2]))


def test_stamp_trigger_marks_the_corner_only():
    x = torch.zeros(2, 1, 28, 28)
    stamped = stamp_trigger(x, value=9.0, size=4)
    assert int((stamped != 0).sum()) == 2 * 8  # a 4x4 checkerboard: 8 pixels per image
    assert torch.all(stamped[..., :23, :] == 0) and torch.all(stamped[..., -1, :] == 0)
    assert torch.equal(x, torch.zeros(2, 1, 28, 28))  # a copy
    flat = stamp_trigger(torch.zeros(3, 20), value=1.0, size=2)
    assert torch.equal(flat[:, -4:], torch.tensor([[1.0, 0.0, 0.0, 1.0]] * 3)) and flat[:, :-4].abs().sum() == 0


class Constant(nn.Module):
    """Always predicts `label` (a model for the success-rate closed forms)."""

    def __init__(self, label: int, classes: int = 4) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(classes))
        self.label = label

    def forward(self, x):
        return self.bias.expand(len(x), -1) + nn.functional.one_hot(torch.tensor(self.label), len(self.bias)) * 10


def test_backdoor_poisons_a_share_of_malicious_samples_and_measures_success():
    fed = blob_federation(num_clients=10, per_client=40, classes=4)
    attack = Backdoor(num_clients=10, fraction=0.2, target_class=2, poison_fraction=0.25, trigger_size=2, seed=0)
    poisoned = attack.poison(fed)
    value = float(fed.train_x.max())
    for k in attack.attackers:
        y = poisoned.train_y[poisoned.client_indices[k]]
        x = poisoned.train_x[poisoned.client_indices[k]]
        triggered = (x[:, -4:] == value).sum(1) == 2
        assert len(y) == 40 and int(triggered.sum()) == 10 and torch.all(y[triggered] == 2)
    # The success-rate test set holds every test image not of the target class, triggered.
    assert len(attack.trigger_x) == int((fed.test_y != 2).sum())
    model = Constant(2)
    assert attack.success_rate(model) == 1.0
    model.label = 0
    assert attack.success_rate(model) == 0.0
    assert attack.evaluate_model(model) == {"attack/backdoor_success": 0.0}


def _accuracy(aggregator, attack, rounds=12):
    fed = blob_federation(num_clients=20, per_client=30)
    torch.manual_seed(0)
    sim = Simulation(
        fed,
        LogisticRegression((8,), 3),
        FedAvg(aggregator=aggregator),
        UniformSampler(clients_per_round=10),
        LocalTrainer(lr=0.05, batch_size=10),
        rounds=rounds,
        seed=0,
        transforms=[] if attack is None else [attack],
    )
    sim.run()
    return sim.state.history[-1]


def test_sign_flipping_breaks_fedavg_but_not_the_median():
    attack = lambda: SignFlip(num_clients=20, fraction=0.2, scale=10.0, seed=0)  # noqa: E731
    clean = _accuracy(None, None)["eval/accuracy"]
    attacked = _accuracy(None, attack())
    defended = _accuracy(CoordinateMedian(), attack())["eval/accuracy"]
    assert clean > 0.9
    assert attacked["eval/accuracy"] < 0.6
    assert defended > clean - 0.05
    # Independently: how many of the final round's sampled clients are attackers.
    sampled = UniformSampler(clients_per_round=10)
    sampled.setup(np.full(20, 30))
    ids = sampled.cohort(12, numpy_rng(0, "sampler", 12)).ids
    attackers = set(choose_attackers(20, 0.2, seed=0).tolist())
    assert metric(attacked, "attack/malicious_clients") == len(attackers & set(ids.tolist()))
