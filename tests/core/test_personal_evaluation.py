"""The personalized-FL evaluation protocol: the global and personal models on the clients' own test
splits, unseen clients before and after their personalization step, and last vs best in the
summary; each number against a hand loop over clients."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fedtorch.client import LocalTrainer
from fedtorch.data.base import DatasetSplits, FederatedDataset
from fedtorch.data.partitions import Dirichlet
from fedtorch.data.splits import ClientSplit
from fedtorch.evaluation import client_fairness
from fedtorch.experiment import best_of, run_experiment
from fedtorch.models import MLP
from fedtorch.samplers import UniformSampler
from fedtorch.simulation import Simulation
from fedtorch.strategies import Ditto, FedAvg, FedAvgFT
from tests.strategies._federations import fine_tuned

TRAINER = dict(lr=0.1, epochs=1, batch_size=8)


def _blobs(n: int = 600, seed: int = 0) -> DatasetSplits:
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 2, (4, 6))
    y = rng.integers(0, 4, n + 100)
    x = centers[y] + rng.normal(0, 1.5, (n + 100, 6))
    x = torch.tensor(x, dtype=torch.float32)
    y = torch.from_numpy(y)
    return DatasetSplits("blobs", x[:n], y[:n], x[n:], y[n:], num_classes=4)


def _model():
    torch.manual_seed(0)
    return MLP((6,), 4, hidden=(8,))


def _simulation(strategy, rounds=2):
    data = _blobs()
    partition = Dirichlet(num_clients=10, alpha=0.5, min_size=20)(data, np.random.default_rng(0))
    split = ClientSplit(test_fraction=0.25, holdout=0.2)(data, partition, np.random.default_rng(1))
    fed = FederatedDataset.from_partition(split.data, split.partition)
    sim = Simulation(fed, _model(), strategy, UniformSampler(4), LocalTrainer(**TRAINER), rounds=rounds,
                     eval_every=rounds, client_tests=split.client_tests, unseen=split.unseen)  # fmt: skip
    return sim, split


def _accuracies(vector_for, x, y, indices):
    out = []
    for k, ix in enumerate(indices):
        model = _model()
        torch.nn.utils.vector_to_parameters(vector_for(k), model.parameters())
        with torch.no_grad():
            out.append({"accuracy": float((model(x[ix]).argmax(1) == y[ix]).double().mean()),
                        "loss": float(F.cross_entropy(model(x[ix]), y[ix]))})  # fmt: skip
    return out


def _check(metrics, prefix, rows, sizes):
    expected = client_fairness(rows, "accuracy", sizes)
    for key in ("mean", "weighted_mean", "std", "worst10", "best10"):
        assert metrics[f"{prefix}/accuracy_{key}"] == pytest.approx(expected[f"accuracy_{key}"], abs=1e-12)
    assert metrics[f"{prefix}/loss_mean"] == pytest.approx(np.mean([r["loss"] for r in rows]), rel=1e-5)


def test_global_personal_and_unseen_metrics_equal_hand_loops():
    sim, split = _simulation(FedAvgFT(finetune_steps=5))
    metrics = sim.run()["metrics"]
    w = sim.global_vector
    tests, unseen = split.client_tests, split.unseen
    sizes = [len(ix) for ix in tests.indices]
    _check(metrics, "eval/clients", _accuracies(lambda k: w, tests.x, tests.y, tests.indices), sizes)
    seen_fed = sim.federation
    personal = lambda k: fine_tuned(_model, w, seen_fed, k, 5, TRAINER)  # noqa: E731  (round 0 streams)
    _check(metrics, "eval/personal", _accuracies(personal, tests.x, tests.y, tests.indices), sizes)
    unseen_sizes = [len(ix) for ix in unseen.client_test_indices]
    rows = _accuracies(lambda k: w, unseen.test_x, unseen.test_y, unseen.client_test_indices)
    _check(metrics, "eval/unseen/global", rows, unseen_sizes)
    adapted = lambda k: fine_tuned(_model, w, unseen, k, 5, TRAINER, round_idx=-1)  # noqa: E731  (round -1 streams)
    _check(metrics, "eval/unseen/personal", _accuracies(adapted, unseen.test_x, unseen.test_y,
                                                        unseen.client_test_indices), unseen_sizes)  # fmt: skip


def test_evaluation_changes_neither_the_model_nor_any_clients_state():
    sim, _ = _simulation(Ditto(lam=0.5))
    sim.run_round(1)
    sim.state.round = 1
    before = sim.runner.state.state_dict()
    vector = sim.global_vector.clone()
    first = sim.evaluate()
    second = sim.evaluate()
    assert first == second and torch.equal(sim.global_vector, vector)
    after = sim.runner.state.state_dict()
    assert before["entries"].keys() == after["entries"].keys()
    for name, entries in before["entries"].items():
        assert entries.keys() == after["entries"][name].keys()
        assert all(torch.equal(entries[k], after["entries"][name][k]) for k in entries)
    assert "eval/unseen/personal/accuracy_mean" in first


def test_a_global_method_has_no_personal_metrics():
    sim, _ = _simulation(FedAvg())
    metrics = sim.run()["metrics"]
    assert "eval/clients/accuracy_mean" in metrics and "eval/unseen/global/accuracy_mean" in metrics
    assert not any(k.startswith(("eval/personal/", "eval/unseen/personal/")) for k in metrics)


def test_best_of_names_the_best_round_and_leaves_the_last_value_alone():
    history = [
        {"round": 1, "eval/accuracy": 0.5, "eval/personal/accuracy_mean": 0.6, "eval/personal/accuracy_std": 0.9},
        {"round": 2, "train/loss": 1.0},  # not an evaluated round
        {"round": 3, "eval/accuracy": 0.7, "eval/personal/accuracy_mean": 0.8},
        {"round": 4, "eval/accuracy": 0.7, "eval/personal/accuracy_mean": float("nan")},
    ]
    best = best_of(history)
    assert best == {
        "best/eval/accuracy": 0.7,
        "best_round/eval/accuracy": 3.0,  # the first round that reached it
        "best/eval/personal/accuracy_mean": 0.8,
        "best_round/eval/personal/accuracy_mean": 3.0,
    }


def test_the_experiment_applies_the_split_and_writes_last_and_best(tmp_path, compose_config):
    cfg = compose_config(
        "partition=iid", "partition.num_clients=10", "test_fraction=0.25", "holdout=0.2", "strategy=fedrep",
        "strategy.head_epochs=1", "model=mlp", "rounds=2", "logging.progress=false", "logging.tensorboard=false",
        "checkpoint_every=0",
    )  # fmt: skip
    run_experiment(cfg, tmp_path)
    metrics = json.loads((tmp_path / "summary.json").read_text())["metrics"]
    for key in ("eval/personal/accuracy_mean", "eval/unseen/personal/accuracy_mean", "eval/clients/accuracy_mean"):
        assert key in metrics and f"best/{key}" in metrics and metrics[f"best_round/{key}"] in (1.0, 2.0)
        assert metrics[f"best/{key}"] >= metrics[key]
    notes = json.loads((tmp_path / "partition.json").read_text())["notes"]
    assert notes["holdout_clients"] == 2 and notes["test_fraction"] == 0.25
