"""Ditto (Li et al. 2021): a FedAvg global model plus proximal personal models."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fedtorch.client import LocalTrainer
from fedtorch.evaluation import evaluate_per_client
from fedtorch.models import LogisticRegression
from fedtorch.params import FlatModel
from fedtorch.samplers import UniformSampler
from fedtorch.seeding import torch_generator
from fedtorch.strategies import Ditto, FedAvg
from tests.strategies._federations import classification_federation, simulate

LR = 0.1


def _sim(fed, strategy, rounds=3, batch_size=8, clients=3, epochs=2):
    torch.manual_seed(0)
    model = LogisticRegression(fed.input_shape, fed.num_classes)
    trainer = LocalTrainer(lr=LR, epochs=epochs, batch_size=batch_size)
    return simulate(fed, model, strategy, trainer, rounds=rounds, sampler=UniformSampler(clients), run=False)


def test_global_model_follows_fedavg_bit_for_bit():
    fed = classification_federation()
    ditto, fedavg = _sim(fed, Ditto(lam=0.5)), _sim(fed, FedAvg())
    ditto.run()
    fedavg.run()
    assert torch.equal(ditto.global_vector, fedavg.global_vector)
    assert len(ditto.runner.state.clients("personal")) > 0


def test_lambda_zero_personal_model_is_plain_local_training():
    fed = classification_federation()
    sim = _sim(fed, Ditto(lam=0.0), clients=6)
    sim.run_round(1)
    sim.state.round = 1
    previous = {k: sim.runner.state.get(k, "personal", "cpu") for k in range(fed.num_clients)}
    sim.run_round(2)
    # Second implementation: a separate model trained by LocalTrainer from the previous personal model.
    torch.manual_seed(0)
    flat = FlatModel(LogisticRegression(fed.input_shape, fed.num_classes))
    trainer = LocalTrainer(lr=LR, epochs=2, batch_size=8)
    for k in range(fed.num_clients):
        trainer.train(flat, previous[k], fed.train_x, fed.train_y, fed.client_indices[k],
                      torch_generator(0, "ditto_batches", 2, k), F.cross_entropy)  # fmt: skip
        assert torch.equal(sim.runner.state.get(k, "personal", "cpu"), flat.vector)


def test_lambda_one_over_lr_pulls_the_personal_model_onto_the_global_one():
    """With lam = 1/lr one full-batch step gives v = v - lr (grad F(v) + (v - w)/lr) = w - lr grad F(v)."""
    fed = classification_federation()
    sim = _sim(fed, Ditto(lam=1.0 / LR), batch_size=-1, clients=6, epochs=1)
    sim.run_round(1)
    sim.state.round = 1
    v_prev = {k: sim.runner.state.get(k, "personal", "cpu") for k in range(fed.num_clients)}
    w_t = sim.global_vector.clone()
    sim.run_round(2)
    for k in range(fed.num_clients):
        ix = fed.client_indices[k]
        v = v_prev[k].clone().requires_grad_(True)
        weight, bias = v[: 5 * 3].view(3, 5), v[5 * 3 :]
        loss = F.cross_entropy(fed.train_x[ix] @ weight.T + bias, fed.train_y[ix])
        (grad,) = torch.autograd.grad(loss, v)
        expected = w_t - LR * grad
        torch.testing.assert_close(sim.runner.state.get(k, "personal", "cpu"), expected, rtol=0, atol=1e-6)


def test_personal_models_approach_the_global_model_as_lambda_grows():
    """Distance of the personal models from the global model they were pulled towards (w_1 in round 2)."""
    fed = classification_federation()
    gaps = []
    for lam in (0.0, 1.0, 3.0, 10.0):  # lam = 10 = 1/lr: the strongest stable pull
        sim = _sim(fed, Ditto(lam=lam), rounds=2, clients=6)
        sim.run_round(1)
        sim.state.round = 1
        anchor = sim.global_vector.clone()
        sim.run_round(2)
        gaps.append(sum(float((sim.runner.state.get(k, "personal", "cpu") - anchor).norm()) for k in range(6)))
    assert gaps == sorted(gaps, reverse=True) and gaps[-1] < 0.2 * gaps[0]


def test_personal_evaluation_reports_per_client_accuracy():
    fed = classification_federation()
    sim = _sim(fed, Ditto(lam=0.1), rounds=2, clients=6)
    summary = sim.run()
    metrics = summary["metrics"]
    for key in ("accuracy_mean", "accuracy_std", "accuracy_worst10", "loss_mean"):
        assert f"eval/personal/{key}" in metrics
    assert 0.0 <= metrics["eval/personal/accuracy_worst10"] <= metrics["eval/personal/accuracy_mean"] <= 1.0
    # The per-client evaluation with the global model for everyone agrees with the simulation's own.
    fed = sim.federation
    with_global = evaluate_per_client(
        sim.flat, fed.test_x, fed.test_y, fed.client_test_indices, lambda k: sim.global_vector, sim.loss_fn, True,
        prefix="clients",
    )  # fmt: skip
    for key in ("clients/accuracy_mean", "clients/accuracy_worst10", "clients/loss_mean"):
        assert with_global[key] == pytest.approx(metrics[f"eval/{key}"], abs=1e-6)
