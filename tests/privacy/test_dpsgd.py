"""Local DP-SGD: without noise or clipping it is full-batch gradient descent; clipping bounds the
step; the noise has std sigma*C/B; the accountant composes one Poisson event per step."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fedtorch.client import LocalTrainer
from fedtorch.models import LogisticRegression
from fedtorch.params import FlatModel
from fedtorch.privacy import DPSGDTrainer, LocalDPAccounting, Sampling, compute_epsilon
from fedtorch.seeding import torch_generator
from tests.privacy.helpers import blob_federation


def _train(trainer, fed, client=0, features=8, classes=3, seed=0):
    torch.manual_seed(seed)
    flat = FlatModel(LogisticRegression((features,), classes))
    start = flat.vector.clone()
    update = trainer.train(
        flat,
        start,
        fed.train_x,
        fed.train_y,
        fed.client_indices[client],
        torch_generator(0, "batches", 1, client),
        F.cross_entropy,
        client_id=client,
    )
    return update


def test_without_noise_and_clipping_it_is_full_batch_gradient_descent():
    fed = blob_federation()
    plain = _train(LocalTrainer(lr=0.5, epochs=3, batch_size=-1), fed)
    dp = _train(DPSGDTrainer(noise_multiplier=0.0, max_grad_norm=1e6, lr=0.5, epochs=3, batch_size=-1), fed)
    assert dp.num_steps == plain.num_steps == 3
    assert torch.allclose(dp.delta, plain.delta, atol=1e-5)
    assert float(dp.metrics["loss_sum"]) == pytest.approx(float(plain.metrics["loss_sum"]), rel=1e-5)


def test_per_sample_clipping_matches_a_per_sample_loop_and_bounds_the_step():
    fed = blob_federation()
    clip, lr = 1e-3, 1.0
    update = _train(DPSGDTrainer(noise_multiplier=0.0, max_grad_norm=clip, lr=lr, epochs=1, batch_size=-1), fed)
    # Independent: one autograd pass per sample, clip each gradient, average, one SGD step.
    torch.manual_seed(0)
    model = LogisticRegression((8,), 3)
    ix = fed.client_indices[0]
    clipped = []
    for i in ix:
        model.zero_grad()
        F.cross_entropy(model(fed.train_x[i : i + 1]), fed.train_y[i : i + 1]).backward()
        g = torch.cat([p.grad.flatten() for p in model.parameters()])
        clipped.append(g * min(1.0, clip / float(g.norm())))
    expected = -lr * torch.stack(clipped).mean(0)
    assert update.num_steps == 1
    assert torch.allclose(update.delta, expected, rtol=0, atol=1e-7)  # float32 weights minus float32 weights
    assert float(update.delta.norm()) <= lr * clip * (1 + 1e-5)  # a mean of vectors of norm <= C


def test_noise_has_std_sigma_c_over_the_expected_batch():
    fed = blob_federation(features=784, per_client=40)
    sigma, clip, lr, batch = 2.0, 0.5, 1.0, 8
    kwargs = dict(max_grad_norm=clip, lr=lr, epochs=1, batch_size=batch, max_steps=1)
    quiet = _train(DPSGDTrainer(noise_multiplier=0.0, **kwargs), fed, features=784, classes=10)
    noisy = _train(DPSGDTrainer(noise_multiplier=sigma, **kwargs), fed, features=784, classes=10)
    # Same generator, same Poisson batch: the difference is the noise, -lr * N(0, (sigma C)^2) / B.
    noise = (noisy.delta - quiet.delta).double()
    expected = lr * sigma * clip / batch
    assert noise.numel() == 7850
    assert float(noise.std()) == pytest.approx(expected, rel=0.05)  # standard error 0.8%: 6 standard errors


def test_batches_are_poisson_sampled():
    fed = blob_federation(per_client=200)
    trainer = DPSGDTrainer(noise_multiplier=0.0, max_grad_norm=1.0, lr=1e-12, epochs=2, batch_size=20)
    update = _train(trainer, fed)
    # 2 epochs of ceil(200 / 20) steps, each with Binomial(200, 0.1) samples: mean 20, sd ~4.2 per step.
    assert update.num_steps == 20
    seen = int(update.metrics["samples_seen"])
    assert abs(seen - 20 * 20) < 6 * (20 * 200 * 0.1 * 0.9) ** 0.5
    assert seen != 20 * 20  # not fixed-size batches


def test_local_accounting_composes_one_poisson_event_per_step():
    trainer = DPSGDTrainer(noise_multiplier=1.2, max_grad_norm=1.0, batch_size=10, epochs=1)
    ledger = LocalDPAccounting(trainer, client_sizes=[100, 50], delta=1e-5)
    from fedtorch.client import ClientUpdate
    from fedtorch.pipeline import StepRecord

    for step in (1, 2):
        record = StepRecord(step, (0,))
        ledger.begin(record)
        ledger.on_update(ClientUpdate(client_id=0, delta=torch.zeros(1), num_samples=100, num_steps=10), record)
    worst = compute_epsilon(Sampling.poisson(0.1), 1.2, 20, 1e-5)
    assert ledger.epsilon == pytest.approx(worst)
    # Next round, worst case: client 1 (q = 0.2) trains its first 5 steps, or client 0 another 10.
    upcoming = max(
        compute_epsilon(Sampling.poisson(0.2), 1.2, 5, 1e-5), compute_epsilon(Sampling.poisson(0.1), 1.2, 30, 1e-5)
    )
    assert ledger.next_epsilon() == pytest.approx(upcoming)
