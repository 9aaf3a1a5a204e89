"""FedRep (Collins et al. 2021): heads first with the body frozen, then the body with the head
frozen; only the body is shared. Checked against a second implementation of both phases."""

from __future__ import annotations

import torch

from fedtorch.client import LocalTrainer
from fedtorch.samplers import FullParticipation
from fedtorch.seeding import torch_generator
from fedtorch.strategies import FedAvg, FedRep
from tests.strategies._federations import classification_federation, fedavg_of, mlp_model, simulate, trained

TRAINER = dict(lr=0.1, epochs=2, batch_size=8)
BODY, HEAD = (0, 1), (2, 3)  # parameter indices of the 1-hidden-layer MLP: net.1.*, net.3.*


def _sim(fed, strategy, rounds=2):
    return simulate(fed, mlp_model(fed), strategy, LocalTrainer(**TRAINER), rounds, FullParticipation(), run=False)


def test_no_head_and_no_head_epochs_is_fedavg_bit_for_bit():
    fed = classification_federation()
    fedrep, fedavg = _sim(fed, FedRep(head=[], head_epochs=0)), _sim(fed, FedAvg())
    fedrep.run()
    fedavg.run()
    assert torch.equal(fedrep.global_vector, fedavg.global_vector)


def test_head_phase_then_body_phase_by_hand():
    fed = classification_federation()
    sim = _sim(fed, FedRep(head_epochs=2))
    head = sim.strategy.local.mask
    init = sim.global_vector.clone()
    heads: dict[int, torch.Tensor] = {}
    for round_idx in (1, 2):
        start = sim.global_vector.clone()
        locals_ = {}
        for k in range(fed.num_clients):
            begin = start.clone()
            if k in heads:
                begin[head] = heads[k]
            # head_epochs (2) x ceil(n / 8) steps = the trainer's 2 epochs: one pass, stream fedrep_head/0.
            generator = torch_generator(0, "fedrep_head/0", round_idx, k)
            after_head = trained(mlp_model(fed), begin, fed, k, generator, LocalTrainer(**TRAINER), frozen=BODY)
            assert torch.equal(after_head[~head], begin[~head])
            generator = torch_generator(0, "batches", round_idx, k)
            locals_[k] = trained(mlp_model(fed), after_head, fed, k, generator, LocalTrainer(**TRAINER), frozen=HEAD)
            heads[k] = after_head[head]
        sim.state.round = round_idx - 1
        sim.run_round(round_idx)
        torch.testing.assert_close(sim.global_vector[~head], fedavg_of(start, locals_, fed)[~head], rtol=0, atol=1e-6)
        assert torch.equal(sim.global_vector[head], init[head])
        for k in range(fed.num_clients):
            assert torch.equal(sim.runner.state.get(k, "local", "cpu"), heads[k])
