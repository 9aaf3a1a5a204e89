"""FedAdagrad's first moment (Reddi et al. 2021, Algorithm 2; FLamby's FedAdagrad): checked against
FLamby's update rule written out in NumPy, and beta1 = 0 against torch's Adagrad."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedtorch.errors import OptionError
from fedtorch.optim import AdagradMomentum
from fedtorch.strategies import FedAdagrad
from tests._server import Server

DELTAS = ([[0.3, -0.4], [0.1, 0.2]], [[0.1, 0.1], [-0.2, 0.0]], [[0.05, -0.3], [0.2, 0.1]])


def test_beta1_follows_flamby_fedadagrad():
    """FLamby (flamby/strategies/fed_opt.py, FedAdagrad.perform_round): m = b1 m + (1 - b1) d;
    v = v + d^2; x += eta m / (sqrt(v) + tau), from m = v = 0 (our v_0 = tau^2 is 1e-16 here)."""
    eta, tau, beta1 = 0.316228, 1e-8, 0.9
    server = Server(FedAdagrad(server_lr=eta, tau=tau, beta1=beta1), [1.0, -1.0])
    x, m, v = np.array([1.0, -1.0]), np.zeros(2), np.zeros(2)
    for r, deltas in enumerate(DELTAS, start=1):
        server.round(r, deltas, samples=[30, 10])
        d = (30 * np.array(deltas[0]) + 10 * np.array(deltas[1])) / 40  # sample-weighted mean
        m = beta1 * m + (1 - beta1) * d
        v = v + d * d
        x = x + eta * m / (np.sqrt(v) + tau)
        np.testing.assert_allclose(server.vector.numpy(), x, rtol=1e-5, atol=1e-6)
    # The first moment matters: without it the first step is 1/(1 - beta1) = 10 times larger.
    plain = Server(FedAdagrad(server_lr=eta, tau=tau), [1.0, -1.0])
    plain.round(1, DELTAS[0], samples=[30, 10])
    first = Server(FedAdagrad(server_lr=eta, tau=tau, beta1=beta1), [1.0, -1.0])
    first.round(1, DELTAS[0], samples=[30, 10])
    np.testing.assert_allclose((plain.vector - 1.0 * torch.tensor([1.0, -1.0])).numpy(),
                               10 * (first.vector - torch.tensor([1.0, -1.0])).numpy(), rtol=1e-4)  # fmt: skip


def test_beta1_zero_is_torch_adagrad():
    torch.manual_seed(0)
    grads = torch.randn(5, 3)
    ours, theirs = torch.zeros(3, requires_grad=True), torch.zeros(3, requires_grad=True)
    a = AdagradMomentum([ours], lr=0.1, beta1=0.0, eps=1e-3, initial_accumulator_value=1e-6)
    b = torch.optim.Adagrad([theirs], lr=0.1, eps=1e-3, initial_accumulator_value=1e-6)
    for g in grads:
        ours.grad, theirs.grad = g.clone(), g.clone()
        a.step()
        b.step()
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-7)


def test_bad_beta1_is_refused():
    with pytest.raises(OptionError, match=r"strategy.beta1=1.0 is invalid"):
        FedAdagrad(beta1=1.0)


def test_initial_accumulator_value():
    """v_0 = 0 (Keras's Adagrad, FLamby) against Algorithm 2's default tau^2: the first step
    differs, by hand: eta d / (sqrt(v_0 + d^2) + tau)."""
    eta, tau, d = 0.3, 0.1, torch.tensor([0.05, -0.2])
    for v0, expected_v0 in ((0.0, 0.0), (None, tau * tau)):
        server = Server(FedAdagrad(server_lr=eta, tau=tau, initial_accumulator_value=v0), [0.0, 0.0])
        server.round(1, [d.tolist()])
        expected = eta * d / ((expected_v0 + d * d).sqrt() + tau)
        torch.testing.assert_close(server.vector, expected, rtol=1e-6, atol=1e-7)
