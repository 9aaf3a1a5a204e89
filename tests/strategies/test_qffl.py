"""q-FFL / q-FedAvg (Li et al. 2020, "Fair Resource Allocation in Federated Learning")."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fedtorch.client import LocalTrainer
from fedtorch.models import LogisticRegression
from fedtorch.samplers import UniformSampler
from fedtorch.strategies import QFFL, FedAvg
from tests.strategies._federations import classification_federation, simulate


def _run(fed, strategy, rounds=3, batch_size=8, run=True):
    torch.manual_seed(0)
    model = LogisticRegression(fed.input_shape, fed.num_classes)
    trainer = LocalTrainer(lr=0.1, epochs=2, batch_size=batch_size)
    return simulate(fed, model, strategy, trainer, rounds=rounds, sampler=UniformSampler(4), run=run)


def test_q_zero_is_fedavg_with_uniform_weights():
    fed = classification_federation()
    qffl = _run(fed, QFFL(q=0.0)).global_vector
    fedavg = _run(fed, FedAvg(weighted=False)).global_vector
    assert torch.equal(qffl, fedavg)  # weights F^0 = 1 and step scale L * n / (n * L) = 1 exactly


def test_one_round_matches_algorithm_two():
    fed = classification_federation(num_clients=5, seed=3)
    q, lr = 2.0, 0.1
    sim = _run(fed, QFFL(q=q), rounds=1, batch_size=-1, run=False)  # full batch: no batch order to replay
    w_t = sim.global_vector.clone()
    ids = [int(k) for k in sim.sample(1).ids]
    lipschitz = 1.0 / lr
    numerator, denominator = torch.zeros_like(w_t, dtype=torch.float64), 0.0
    for k in ids:
        ix = fed.client_indices[k]
        sim.flat.load(w_t)
        with torch.no_grad():
            loss = F.cross_entropy(sim.model(fed.train_x[ix]), fed.train_y[ix]).double()  # F_k(w_t)
        update = sim.train_client(1, k)
        dw = lipschitz * -update.delta.double()  # L (w_t - w_k)
        numerator += loss**q * dw
        denominator += float(q * loss ** (q - 1) * dw.dot(dw) + lipschitz * loss**q)
    expected = w_t.double() - numerator / denominator
    sim.run()
    torch.testing.assert_close(sim.global_vector.double(), expected, rtol=0, atol=1e-6)
    assert (sim.global_vector - w_t).norm() > 1e-3
