"""Personalized strategies composed with the rest of the run: checkpoints resume bit-exact (client
state and unseen-client evaluation included), the server never moves what is not shared, top-k
compresses only the shared part, and trainers whose steps cannot follow are refused in one line."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedtorch.client import LocalTrainer
from fedtorch.compression import CommunicationMeter, TopK
from fedtorch.data.base import DatasetSplits, FederatedDataset, Partition
from fedtorch.data.splits import ClientSplit
from fedtorch.errors import OptionError
from fedtorch.privacy.dpsgd import DPSGDTrainer
from fedtorch.samplers import UniformSampler
from fedtorch.simulation import Simulation
from fedtorch.strategies import FedPer, FedRep, PFedMe
from tests.strategies._federations import classification_federation, mlp_model


def _sim(strategy, rounds, transforms=(), trainer=None):
    """The toy federation (whose clients have test splits of their own) with two clients unseen."""
    fed = classification_federation(num_clients=8)
    data = DatasetSplits("toy", fed.train_x, fed.train_y, fed.test_x, fed.test_y, fed.num_classes)
    train, test = [ix.numpy() for ix in fed.client_indices], [ix.numpy() for ix in fed.client_test_indices]
    partition = Partition(train, len(fed.train_y), test=test, num_test_samples=len(fed.test_y))
    split = ClientSplit(holdout=0.25)(data, partition, np.random.default_rng(0))
    seen = FederatedDataset.from_partition(split.data, split.partition)
    return Simulation(seen, mlp_model(seen), strategy, UniformSampler(3), trainer or LocalTrainer(lr=0.1, batch_size=8),
                      rounds=rounds, eval_every=2, transforms=transforms, unseen=split.unseen)  # fmt: skip


def _timeless(history):
    return [{k: v for k, v in row.items() if k != "round/seconds"} for row in history]


def test_a_resumed_run_equals_an_uninterrupted_one():
    straight = _sim(FedRep(head_epochs=1), rounds=4)
    straight.run()
    first = _sim(FedRep(head_epochs=1), rounds=2)
    first.run()
    resumed = _sim(FedRep(head_epochs=1), rounds=4)
    resumed.load_state_dict(first.state_dict())
    resumed.run()
    assert torch.equal(resumed.global_vector, straight.global_vector)
    assert _timeless(resumed.state.history) == _timeless(straight.state.history)
    assert "eval/unseen/personal/accuracy_mean" in resumed.state.history[-1]
    for k in straight.runner.state.clients("local"):
        assert torch.equal(resumed.runner.state.get(k, "local", "cpu"), straight.runner.state.get(k, "local", "cpu"))


def test_the_server_moves_only_the_shared_entries():
    sim = _sim(FedPer(), rounds=1)
    head = sim.strategy.local.mask
    before = sim.global_vector.clone()
    sim.strategy.apply(1, torch.ones_like(sim.global_vector))  # e.g. central DP's noise on every entry
    assert torch.equal(sim.global_vector[head], before[head])
    assert torch.equal(sim.global_vector[~head], before[~head] + 1)


def test_top_k_compresses_only_the_body():
    sim = _sim(FedPer(), rounds=1, transforms=[TopK(density=0.25, error_feedback=True), CommunicationMeter()])
    metrics = sim.run_round(1)
    body = sim.strategy.shared.size
    k = -(-body // 4)  # ceil(0.25 * body)
    assert metrics["comm/bytes_up"] == 3 * k * (4 + 4)  # three clients, values and int32 indices
    assert metrics["comm/up_ratio"] == pytest.approx(k * 8 / (body * 4))


@pytest.mark.parametrize("strategy", [FedRep(), PFedMe()], ids=["frozen_parameters", "own_local_loop"])
def test_dp_sgd_steps_are_refused_where_they_cannot_follow(strategy):
    trainer = DPSGDTrainer(noise_multiplier=1.0, max_grad_norm=1.0, lr=0.1, batch_size=8)
    sim = _sim(strategy, rounds=1, trainer=trainer)
    with pytest.raises(OptionError, match=r"^trainer='DPSGDTrainer' is invalid: strategy="):
        sim.run_round(1)
