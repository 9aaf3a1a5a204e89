"""FedBABU (Oh et al. 2022): a frozen random head, body-only FedAvg, fine-tuning for evaluation."""

from __future__ import annotations

import torch

from fedtorch.client import LocalTrainer
from fedtorch.runner import ClientContext, ClientJob
from fedtorch.samplers import FullParticipation
from fedtorch.seeding import torch_generator
from fedtorch.strategies import FedAvg, FedBABU
from tests.strategies._federations import (
    classification_federation,
    fedavg_of,
    fine_tuned,
    mlp_model,
    simulate,
    trained,
)

TRAINER = dict(lr=0.1, epochs=1, batch_size=8)


def _sim(fed, strategy, rounds=2):
    return simulate(fed, mlp_model(fed), strategy, LocalTrainer(**TRAINER), rounds, FullParticipation(), run=False)


def test_no_head_is_fedavg_bit_for_bit():
    fed = classification_federation()
    babu, fedavg = _sim(fed, FedBABU(head=[])), _sim(fed, FedAvg())
    babu.run()
    fedavg.run()
    assert torch.equal(babu.global_vector, fedavg.global_vector)


def test_the_head_stays_at_its_initialization_and_the_body_is_averaged():
    fed = classification_federation()
    sim = _sim(fed, FedBABU())
    head = sim.strategy.local.mask
    init = sim.global_vector.clone()
    for round_idx in (1, 2):
        start = sim.global_vector.clone()
        locals_ = {
            k: trained(
                mlp_model(fed),
                start,
                fed,
                k,
                torch_generator(0, "batches", round_idx, k),
                LocalTrainer(**TRAINER),
                frozen=(2, 3),
            )  # fmt: skip
            for k in range(fed.num_clients)
        }
        sim.state.round = round_idx - 1
        sim.run_round(round_idx)
        torch.testing.assert_close(sim.global_vector, fedavg_of(start, locals_, fed), rtol=0, atol=1e-6)
        assert torch.equal(sim.global_vector[head], init[head])
    assert len(sim.runner.state) == 0  # nothing is kept between turns


def test_evaluation_fine_tunes_the_global_model():
    fed = classification_federation()
    sim = _sim(fed, FedBABU(finetune_steps=7, finetune="head"), rounds=1)
    sim.run()
    for k in (0, 3):
        context = ClientContext(sim.runner, ClientJob(k, 0), sim.global_vector, {})
        personal = sim.strategy.personal_model(context).clone()
        # Second implementation: 7 trainer steps on streams finetune/i (round 0), body frozen.
        expected = fine_tuned(lambda: mlp_model(fed), sim.global_vector, fed, k, 7, TRAINER, frozen=(0, 1))
        assert torch.equal(personal, expected)
