"""FedAvg-FT: FedAvg's training, scored after local fine-tuning (the pFL baseline)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedtorch.backends import VectorizedBackend
from fedtorch.client import LocalTrainer
from fedtorch.evaluation import evaluate
from fedtorch.samplers import UniformSampler
from fedtorch.simulation import Simulation
from fedtorch.strategies import FedAvg, FedAvgFT
from tests.strategies._federations import classification_federation, fine_tuned, mlp_model

TRAINER = dict(lr=0.1, epochs=1, batch_size=8)


def _sim(fed, strategy, backend=None):
    return Simulation(fed, mlp_model(fed), strategy, UniformSampler(3), LocalTrainer(**TRAINER), rounds=2,
                      eval_every=2, backend=backend)  # fmt: skip


def test_training_is_fedavg_and_batched_by_the_vectorized_backend():
    fed = classification_federation()
    ft, fedavg = _sim(fed, FedAvgFT(), VectorizedBackend()), _sim(fed, FedAvg())
    assert ft.backend.fallback is None  # plain local training: no sequential fallback
    ft.run()
    fedavg.run()
    torch.testing.assert_close(ft.global_vector, fedavg.global_vector, rtol=0, atol=1e-6)


def test_personal_accuracy_is_the_fine_tuned_models_accuracy():
    fed = classification_federation()
    sim = _sim(fed, FedAvgFT(finetune_steps=7))
    metrics = sim.run()["metrics"]
    accuracies = []
    for k in range(fed.num_clients):
        # Second implementation: 7 trainer steps from the final global model (streams finetune/i, round 0).
        vector = fine_tuned(lambda: mlp_model(fed), sim.global_vector, fed, k, 7, TRAINER)
        model = mlp_model(fed)
        torch.nn.utils.vector_to_parameters(vector, model.parameters())
        ix = fed.client_test_indices[k]
        accuracies.append(
            evaluate(model, fed.test_x[ix], fed.test_y[ix], torch.nn.functional.cross_entropy)["accuracy"]
        )
    assert metrics["eval/personal/accuracy_mean"] == pytest.approx(np.mean(accuracies), abs=1e-12)
    assert metrics["eval/personal/accuracy_worst10"] == pytest.approx(min(accuracies), abs=1e-12)
    assert len(sim.runner.state) == 0
