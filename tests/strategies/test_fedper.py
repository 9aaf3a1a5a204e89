"""FedPer (Arivazhagan et al. 2019): shared body, heads that never leave the clients."""

from __future__ import annotations

import torch

from fedtorch.client import LocalTrainer
from fedtorch.compression import CommunicationMeter
from fedtorch.params import FlatModel
from fedtorch.samplers import FullParticipation, UniformSampler
from fedtorch.seeding import torch_generator
from fedtorch.simulation import Simulation
from fedtorch.strategies import FedAvg, FedPer
from tests.strategies._federations import classification_federation, mlp_model, simulate


def _sim(fed, strategy, rounds=2, clients=6):
    trainer = LocalTrainer(lr=0.1, epochs=1, batch_size=8)
    return simulate(fed, mlp_model(fed), strategy, trainer, rounds=rounds, sampler=UniformSampler(clients), run=False)


def test_default_head_is_the_last_layer():
    fed = classification_federation()
    sim = _sim(fed, FedPer())
    assert sim.strategy.local.names == ("net.3.weight", "net.3.bias")
    assert sim.strategy.shared.names == ("net.1.weight", "net.1.bias")
    explicit = _sim(fed, FedPer(head=["net.1"]))
    assert explicit.strategy.local.names == ("net.1.weight", "net.1.bias")


def test_heads_stay_local_and_bodies_are_averaged():
    fed = classification_federation()
    fedper, fedavg = _sim(fed, FedPer()), _sim(fed, FedAvg())
    start = fedper.global_vector.clone()
    head = fedper.strategy.local.mask
    fedper.run_round(1)
    fedavg.run_round(1)
    # Round 1 (no client has a head yet): FedAvg on the body, the global head untouched.
    assert torch.equal(fedper.global_vector[~head], fedavg.global_vector[~head])
    assert torch.equal(fedper.global_vector[head], start[head])
    assert not torch.equal(fedavg.global_vector[head], start[head])
    assert len(fedper.runner.state.clients("local")) == fed.num_clients

    # Round 2: client k starts from global body + its own head; check its new head by retraining.
    heads_before = {k: fedper.runner.state.get(k, "local", "cpu") for k in range(fed.num_clients)}
    body_before = fedper.global_vector.clone()
    fedper.state.round = 1
    fedper.run_round(2)
    assert torch.equal(fedper.global_vector[head], start[head])
    flat = FlatModel(mlp_model(fed))
    trainer = LocalTrainer(lr=0.1, epochs=1, batch_size=8)
    for k in range(fed.num_clients):
        begin = body_before.clone()
        begin[head] = heads_before[k]
        torch.manual_seed(0)
        trainer.train(flat, begin, fed.train_x, fed.train_y, fed.client_indices[k],
                      torch_generator(0, "batches", 2, k), fedper.loss_fn)  # fmt: skip
        assert torch.equal(fedper.runner.state.get(k, "local", "cpu"), flat.vector[head])


def test_personal_vector_combines_global_body_and_own_head():
    fed = classification_federation()
    sim = _sim(fed, FedPer(), rounds=1)
    sim.run()
    head = sim.strategy.local.mask
    for k in range(fed.num_clients):
        vector = sim.strategy.personal_vector(k, sim.global_vector, sim.runner.state)
        assert torch.equal(vector[~head], sim.global_vector[~head])
        assert torch.equal(vector[head], sim.runner.state.get(k, "local", "cpu"))
    assert "eval/personal/accuracy_mean" in sim.state.history[-1]


def test_only_the_body_is_counted_as_sent():
    """The byte meter counts the shared values (the body) of every update, up and down."""
    fed = classification_federation()
    trainer = LocalTrainer(lr=0.1, epochs=1, batch_size=8)
    sim = Simulation(fed, mlp_model(fed), FedPer(), FullParticipation(), trainer, rounds=1,
                     transforms=[CommunicationMeter()])  # fmt: skip
    metrics = sim.run_round(1)
    body = sim.strategy.shared.size * 4  # float32
    assert metrics["comm/bytes_up"] == fed.num_clients * body
    assert metrics["comm/bytes_down"] == fed.num_clients * body
    assert body < sim.flat.layout.size * 4
