"""FedLC (Zhang et al. 2022): the calibrated loss by hand, classes a client lacks leave the
softmax, tau = 0 is FedAvg."""

from __future__ import annotations

import math

import pytest
import torch

from fedtorch.client import LocalTrainer
from fedtorch.samplers import UniformSampler
from fedtorch.strategies import FedAvg, FedLC
from fedtorch.strategies.fedlc import calibrated_cross_entropy
from tests.strategies._federations import classification_federation, mlp_model, simulate


def test_calibrated_loss_by_hand():
    logits = torch.tensor([[2.0, 1.0, 0.5], [0.0, -1.0, 1.0]], requires_grad=True)
    target = torch.tensor([0, 2])
    counts = torch.tensor([16, 0, 1])  # class 1 absent: its logit leaves the softmax
    tau = 0.5
    # Calibrated logits: z_c - tau n_c^(-1/4): class 0 - 0.5 / 2, class 2 - 0.5 / 1.
    first = -math.log(math.exp(2.0 - 0.25) / (math.exp(2.0 - 0.25) + math.exp(0.5 - 0.5)))
    second = -math.log(math.exp(1.0 - 0.5) / (math.exp(0.0 - 0.25) + math.exp(1.0 - 0.5)))
    loss = calibrated_cross_entropy(logits, target, counts, tau)
    assert float(loss.detach()) == pytest.approx((first + second) / 2, rel=1e-6)
    loss.backward()
    assert not logits.grad[:, 1].any()  # no gradient pushes the absent class down
    per_sample = calibrated_cross_entropy(logits.detach(), target, counts, tau, reduction="none")
    assert per_sample.tolist() == pytest.approx([first, second], rel=1e-6)


def test_tau_zero_is_fedavg_bit_for_bit():
    fed = classification_federation()

    def sim(strategy):
        trainer = LocalTrainer(lr=0.1, epochs=1, batch_size=8)
        return simulate(fed, mlp_model(fed), strategy, trainer, rounds=2, sampler=UniformSampler(3))

    assert torch.equal(sim(FedLC(tau=0.0)).global_vector, sim(FedAvg()).global_vector)
    assert not torch.equal(sim(FedLC(tau=1.0)).global_vector, sim(FedAvg()).global_vector)
