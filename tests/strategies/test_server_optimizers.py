"""The server-optimizer family (Reddi et al. 2021) against hand-computed updates."""

from __future__ import annotations

import math

import pytest
import torch

from fedtorch.client import LocalTrainer
from fedtorch.models import LogisticRegression
from fedtorch.optim import Yogi
from fedtorch.samplers import UniformSampler
from fedtorch.strategies import FedAdagrad, FedAdam, FedAvg, FedAvgM, FedYogi
from tests._server import Server
from tests.strategies._federations import classification_federation, simulate


def _server(strategy, x0):
    """Bind `strategy` to a 1-parameter-tensor model whose flat vector starts at x0."""
    server = Server(strategy, x0, num_clients=2)
    _SERVERS[id(strategy)] = server
    return server.vector


_SERVERS: dict[int, Server] = {}


def _round(strategy, round_idx, deltas, samples=(1, 1)):
    """One server round fed with hand-made client deltas."""
    return _SERVERS[id(strategy)].round(round_idx, deltas, samples)


def test_fedavgm_with_zero_momentum_is_fedavg_bit_for_bit():
    fed = classification_federation()
    runs = []
    for strategy in (FedAvg(), FedAvgM(momentum=0.0)):
        torch.manual_seed(3)
        model = LogisticRegression(fed.input_shape, fed.num_classes)
        trainer = LocalTrainer(lr=0.1, epochs=2, batch_size=8)
        runs.append(simulate(fed, model, strategy, trainer, rounds=3, sampler=UniformSampler(3)).global_vector)
    assert torch.equal(runs[0], runs[1])


def test_fedavgm_momentum_by_hand():
    lr, beta = 0.5, 0.9
    strategy = FedAvgM(server_lr=lr, momentum=beta)
    x = _server(strategy, [1.0, -2.0])
    d1, d2 = torch.tensor([0.2, 0.4]), torch.tensor([-0.1, 0.3])
    _round(strategy, 1, [d1.tolist(), d1.tolist()])
    _round(strategy, 2, [d2.tolist(), d2.tolist()])
    # buf1 = -d1; buf2 = beta * buf1 - d2; x -= lr * buf each round
    expected = torch.tensor([1.0, -2.0]) + lr * d1 + lr * (beta * d1 + d2)
    torch.testing.assert_close(x, expected, rtol=0, atol=1e-6)


def test_fedadam_one_and_two_steps_by_hand():
    lr, b1, b2, tau = 0.1, 0.9, 0.99, 1e-3
    strategy = FedAdam(server_lr=lr, beta1=b1, beta2=b2, tau=tau)
    x = _server(strategy, [0.5, 0.5])
    # Weighted mean of the client deltas: (1 * [0.3, -0.1] + 3 * [0.1, 0.3]) / 4 = [0.15, 0.2]
    _round(strategy, 1, [[0.3, -0.1], [0.1, 0.3]], samples=(1, 3))
    delta = torch.tensor([0.15, 0.2], dtype=torch.float64)
    g = -delta  # pseudo-gradient
    m, v = (1 - b1) * g, (1 - b2) * g * g
    m_hat, v_hat = m / (1 - b1), v / (1 - b2)
    x1 = 0.5 - lr * m_hat / (v_hat.sqrt() + tau)  # = 0.5 + lr * delta / (|delta| + tau)
    torch.testing.assert_close(x.double(), x1, rtol=0, atol=1e-6)
    torch.testing.assert_close(x1, 0.5 + lr * delta / (delta.abs() + tau))

    _round(strategy, 2, [[-0.2, 0.05], [-0.2, 0.05]])
    g2 = torch.tensor([0.2, -0.05], dtype=torch.float64)
    m, v = b1 * m + (1 - b1) * g2, b2 * v + (1 - b2) * g2 * g2
    x2 = x1 - lr * (m / (1 - b1**2)) / ((v / (1 - b2**2)).sqrt() + tau)
    torch.testing.assert_close(x.double(), x2, rtol=0, atol=1e-6)


@pytest.mark.parametrize("bias_correction", [True, False])
def test_fedyogi_two_steps_by_hand(bias_correction):
    lr, b1, b2, tau, v0 = 0.05, 0.9, 0.99, 1e-3, 1e-6
    strategy = FedYogi(server_lr=lr, beta1=b1, beta2=b2, tau=tau, initial_accumulator_value=v0,
                       bias_correction=bias_correction)  # fmt: skip
    x = _server(strategy, [0.0, 1.0])
    expected = torch.tensor([0.0, 1.0], dtype=torch.float64)
    m = torch.zeros(2, dtype=torch.float64)
    v = torch.full((2,), v0, dtype=torch.float64)
    for t, delta in enumerate(([0.4, -0.2], [0.01, 0.3], [-0.05, 0.3]), start=1):
        _round(strategy, t, [delta, delta])
        g = -torch.tensor(delta, dtype=torch.float64)
        m = b1 * m + (1 - b1) * g
        v = v - (1 - b2) * torch.sign(v - g * g) * g * g
        m_hat, v_hat = (m / (1 - b1**t), v / (1 - b2**t)) if bias_correction else (m, v)
        expected = expected - lr * m_hat / (v_hat.sqrt() + tau)
        torch.testing.assert_close(x.double(), expected, rtol=0, atol=1e-6)


def test_yogi_second_moment_differs_from_adam():
    """After a large gradient, Adam's v decays multiplicatively, Yogi's only by (1 - b2) g^2."""
    p_yogi = torch.zeros(1, requires_grad=True)
    yogi = Yogi([p_yogi], lr=0.1, betas=(0.0, 0.5), eps=1e-8, initial_accumulator_value=0.0, bias_correction=False)
    adam_v = 0.0
    for g in (10.0, 1.0):
        p_yogi.grad = torch.tensor([g])
        yogi.step()
        adam_v = 0.5 * adam_v + 0.5 * g * g
    v_yogi = float(yogi.state[p_yogi]["exp_avg_sq"])
    # Yogi: v1 = 0 + 0.5 * 100 = 50; v2 = 50 - 0.5 * sign(50 - 1) * 1 = 49.5.  Adam: 0.5 * 50 + 0.5 = 25.5
    assert v_yogi == pytest.approx(49.5) and adam_v == pytest.approx(25.5)


def test_fedadagrad_by_hand():
    lr, tau = 0.1, 1e-2
    strategy = FedAdagrad(server_lr=lr, tau=tau)
    x = _server(strategy, [1.0, 1.0])
    expected = torch.ones(2, dtype=torch.float64)
    v = torch.full((2,), tau * tau, dtype=torch.float64)
    for t, delta in enumerate(([0.3, -0.4], [0.1, 0.1]), start=1):
        _round(strategy, t, [delta, delta])
        d = torch.tensor(delta, dtype=torch.float64)
        v = v + d * d
        expected = expected + lr * d / (v.sqrt() + tau)
        torch.testing.assert_close(x.double(), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("make", [lambda: FedYogi(server_lr=0.1), lambda: FedAdam(server_lr=0.1),
                                  lambda: FedAvgM(momentum=0.9)])  # fmt: skip
def test_server_state_checkpoints_and_resumes_exactly(make):
    rounds = [[[0.3, -0.1], [0.2, 0.2]], [[-0.1, 0.4], [0.0, 0.1]], [[0.2, 0.2], [0.5, -0.3]]]
    straight = make()
    x = _server(straight, [0.0, 0.0])
    for t, deltas in enumerate(rounds, start=1):
        _round(straight, t, deltas)

    first = make()
    y = _server(first, [0.0, 0.0])
    _round(first, 1, rounds[0])
    state = first.state_dict()
    resumed = make()
    z = _server(resumed, [0.0, 0.0])
    z.copy_(y)
    resumed.load_state_dict(state)
    for t, deltas in enumerate(rounds[1:], start=2):
        _round(resumed, t, deltas)
    assert torch.equal(x, z)
    assert not math.isclose(float(x[0]), 0.0)


def test_fedadam_without_bias_correction_is_reddi_algorithm_two():
    """Reddi et al. 2021, Algorithm 2 as printed: m = b1 m + (1 - b1) D, v = b2 v + (1 - b2) D^2 with
    v_{-1} = tau^2, x += eta m / (sqrt(v) + tau); no bias correction."""
    lr, b1, b2, tau = 0.1, 0.9, 0.99, 1e-3
    strategy = FedAdam(server_lr=lr, beta1=b1, beta2=b2, tau=tau, bias_correction=False)
    x = _server(strategy, [0.5, 0.5])
    m = torch.zeros(2, dtype=torch.float64)
    v = torch.full((2,), tau * tau, dtype=torch.float64)
    expected = torch.tensor([0.5, 0.5], dtype=torch.float64)
    for round_idx, deltas in enumerate(([[0.3, -0.1], [0.1, 0.3]], [[-0.2, 0.05], [-0.2, 0.05]]), start=1):
        _round(strategy, round_idx, deltas)
        delta = torch.tensor(deltas, dtype=torch.float64).mean(0)  # equal sample counts
        m = b1 * m + (1 - b1) * delta
        v = b2 * v + (1 - b2) * delta * delta
        expected = expected + lr * m / (v.sqrt() + tau)
        torch.testing.assert_close(x.double(), expected, rtol=0, atol=1e-6)
    # The switch matters: the bias-corrected form (torch.optim.Adam) ends elsewhere on the same rounds.
    corrected = FedAdam(server_lr=lr, beta1=b1, beta2=b2, tau=tau)
    y = _server(corrected, [0.5, 0.5])
    _round(corrected, 1, [[0.3, -0.1], [0.1, 0.3]])
    _round(corrected, 2, [[-0.2, 0.05], [-0.2, 0.05]])
    assert float((y.double() - expected).abs().max()) > 1e-2
