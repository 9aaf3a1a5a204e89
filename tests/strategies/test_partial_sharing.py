"""FedBN (Li et al. 2021) and LG-FedAvg (Liang et al. 2020): partial sharing, checked against a
second implementation of every client's training and FedAvg's average on the shared entries."""

from __future__ import annotations

import torch

from fedtorch.client import LocalTrainer
from fedtorch.samplers import FullParticipation
from fedtorch.seeding import torch_generator
from fedtorch.strategies import FedAvg, FedBN, LGFedAvg
from tests.strategies._federations import bn_model, classification_federation, fedavg_of, mlp_model, simulate, trained

TRAINER = dict(lr=0.1, epochs=1, batch_size=-1)  # full batches: BatchNorm never sees a batch of one


def _sim(fed, model, strategy, rounds=2):
    return simulate(
        fed, model, strategy, LocalTrainer(**TRAINER), rounds=rounds, sampler=FullParticipation(), run=False
    )


def test_fedbn_without_norm_layers_is_fedavg_bit_for_bit():
    fed = classification_federation()
    fedbn, fedavg = _sim(fed, mlp_model(fed), FedBN(), rounds=3), _sim(fed, mlp_model(fed), FedAvg(), rounds=3)
    assert not fedbn.strategy.partial  # nothing to keep local: everything is shared
    fedbn.run()
    fedavg.run()
    assert torch.equal(fedbn.global_vector, fedavg.global_vector)


def test_fedbn_keeps_norm_layers_local_and_averages_the_rest():
    fed = classification_federation()
    sim = _sim(fed, bn_model(fed), FedBN())
    norm = sim.strategy.local.mask
    assert set(sim.strategy.local.names) == {"norm.weight", "norm.bias", "norm.running_mean", "norm.running_var"}
    own: dict[int, torch.Tensor] = {}  # the second implementation's per-client norm values
    for round_idx in (1, 2):
        start = sim.global_vector.clone()
        locals_ = {}
        for k in range(fed.num_clients):
            begin = start.clone()
            if k in own:
                begin[norm] = own[k]
            generator = torch_generator(0, "batches", round_idx, k)
            locals_[k] = trained(bn_model(fed), begin, fed, k, generator, LocalTrainer(**TRAINER))
            own[k] = locals_[k][norm]
        sim.state.round = round_idx - 1
        sim.run_round(round_idx)
        # Shared entries: FedAvg of the clients' changes; norm entries: never moved by the server.
        expected = fedavg_of(start, locals_, fed)
        torch.testing.assert_close(sim.global_vector[~norm], expected[~norm], rtol=0, atol=1e-6)
        assert torch.equal(sim.global_vector[norm], start[norm])
        for k in range(fed.num_clients):
            torch.testing.assert_close(sim.runner.state.get(k, "local", "cpu"), own[k], rtol=0, atol=1e-6)


def test_fedbn_personal_model_is_the_global_model_with_own_norm_layers():
    fed = classification_federation()
    sim = _sim(fed, bn_model(fed), FedBN(), rounds=1)
    summary = sim.run()
    norm = sim.strategy.local.mask
    for k in range(fed.num_clients):
        vector = sim.strategy.personal_vector(k, sim.global_vector, sim.runner.state)
        assert torch.equal(vector[~norm], sim.global_vector[~norm])
        assert torch.equal(vector[norm], sim.runner.state.get(k, "local", "cpu"))
    assert summary["metrics"]["eval/personal/accuracy_mean"] != summary["metrics"]["eval/clients/accuracy_mean"]


def test_lg_fedavg_shares_the_head_and_keeps_the_representations():
    fed = classification_federation()
    sim = _sim(fed, mlp_model(fed), LGFedAvg())
    head = sim.strategy.shared.mask
    assert sim.strategy.shared.names == ("net.3.weight", "net.3.bias")
    init = sim.global_vector.clone()
    bodies: dict[int, torch.Tensor] = {}
    for round_idx in (1, 2):
        start = sim.global_vector.clone()
        locals_ = {}
        for k in range(fed.num_clients):
            begin = start.clone()
            if k in bodies:
                begin[~head] = bodies[k]
            locals_[k] = trained(mlp_model(fed), begin, fed, k, torch_generator(0, "batches", round_idx, k),
                                 LocalTrainer(**TRAINER))  # fmt: skip
            bodies[k] = locals_[k][~head]
        sim.state.round = round_idx - 1
        sim.run_round(round_idx)
        torch.testing.assert_close(sim.global_vector[head], fedavg_of(start, locals_, fed)[head], rtol=0, atol=1e-6)
        assert torch.equal(sim.global_vector[~head], init[~head])  # the global body never moves
    for k in range(fed.num_clients):
        torch.testing.assert_close(sim.runner.state.get(k, "local", "cpu"), bodies[k], rtol=0, atol=1e-6)
