"""Top-k, QSGD and the byte meter: payloads are what they claim, decoding is right, error
feedback conserves what was not sent, QSGD is unbiased, and every run counts its bytes."""

from __future__ import annotations

import math

import pytest
import torch

from fedtorch.client import ClientUpdate, LocalTrainer
from fedtorch.compression import QSGD, CommunicationMeter, TopK, pack_bits, payload_bytes, unpack_bits
from fedtorch.models import LogisticRegression
from fedtorch.pipeline import StepRecord
from fedtorch.samplers import UniformSampler
from fedtorch.simulation import Simulation
from fedtorch.strategies import FedAvg, Scaffold
from tests._server import Server
from tests.privacy.helpers import blob_federation, metric


def _update(delta: torch.Tensor, client: int = 0) -> ClientUpdate:
    return ClientUpdate(client_id=client, delta=delta.clone(), num_samples=1, num_steps=1)


def test_topk_keeps_the_largest_coordinates_and_counts_values_plus_indices():
    v = torch.tensor([0.1, -5.0, 0.2, 3.0, -0.05, 0.0, 1.0, -0.3, 0.01, 2.0])
    topk = TopK(density=0.3, error_feedback=False)
    payload = topk.encode(v, torch.Generator())
    assert payload["indices"].dtype == torch.int32 and payload["values"].dtype == torch.float32
    assert payload_bytes(payload) == 3 * (4 + 4)
    decoded = topk.decode(payload, v)
    assert torch.equal(decoded, torch.tensor([0, -5.0, 0, 3.0, 0, 0, 0, 0, 0, 2.0]))
    sent = topk.on_update(_update(v), StepRecord(1, (0,)))
    assert int(sent.metrics["bytes_up"]) == 24 and torch.equal(sent.delta, decoded)


def test_error_feedback_conserves_what_was_not_sent():
    gen = torch.Generator().manual_seed(0)
    topk = TopK(density=0.05)
    inputs, sent = torch.zeros(400), torch.zeros(400)
    for r in range(1, 31):
        delta = torch.randn(400, generator=gen)
        inputs += delta
        sent += topk.on_update(_update(delta, client=3), StepRecord(r, (3,))).delta
    # Everything a client was asked to send went out, except its current residual.
    assert torch.allclose(sent + topk.residuals[3], inputs, atol=1e-4)
    assert topk.residuals[3].device.type == "cpu"
    assert 3 in topk.state_dict()["residuals"] and topk.residuals.keys() == {3}


def test_pack_bits_round_trip():
    gen = torch.Generator().manual_seed(1)
    for bits in (2, 3, 5, 8, 11):
        codes = torch.randint(0, 2**bits, (1001,), generator=gen)
        packed = pack_bits(codes, bits)
        assert packed.dtype == torch.uint8 and packed.numel() == math.ceil(1001 * bits / 8)
        assert torch.equal(unpack_bits(packed, bits, 1001), codes)


@pytest.mark.parametrize("bits,bucket", [(2, None), (4, 512), (8, 100)])
def test_qsgd_is_unbiased_with_the_promised_payload(bits, bucket):
    gen = torch.Generator().manual_seed(2)
    v = torch.randn(1000, generator=gen)
    qsgd = QSGD(bits=bits, bucket_size=bucket)
    payload = qsgd.encode(v, gen)
    assert payload_bytes(payload) == qsgd.expected_bytes(1000)
    levels = 2 ** (bits - 1) - 1
    one = qsgd.decode(payload, v)
    # Every decoded value is a multiple of its bucket's norm / s, with v's sign (or zero).
    assert torch.all((one == 0) | (torch.sign(one) == torch.sign(v)))
    draws = 400
    mean = sum(qsgd.decode(qsgd.encode(v, gen), v) for _ in range(draws)) / draws
    # Each coordinate is one of two adjacent levels norm*l/s apart, so its std is at most norm/(2s):
    # the mean of the draws is within 6 standard errors of v.
    size = bucket or 1000
    norms = torch.stack([b.norm() for b in torch.split(v, size)]).repeat_interleave(size)[:1000]
    assert torch.all((mean - v).abs() <= 6 * norms / (2 * levels) / draws**0.5 + 1e-6)
    assert float((mean - v).abs().mean()) < float((one - v).abs().mean())


def test_meter_counts_dense_updates_extras_and_what_is_sent_down():
    meter = CommunicationMeter()
    server = Server(FedAvg(), torch.zeros(50), [meter], num_clients=4)
    for round_idx in (1, 2):
        server.strategy.begin_round(round_idx, [0, 1])
        # Down: the model (200 bytes) and a strategy payload of 50 float64 values (400 bytes) each.
        server.pipeline.begin(round_idx, [0, 1], download_bytes=200 + 400)
        server.pipeline.accept(_update(torch.ones(50), 0))
        with_extra = _update(torch.ones(50), 1)
        with_extra.extra["control_variate"] = torch.zeros(50, dtype=torch.float64)
        server.pipeline.accept(with_extra)
        server.strategy.apply(round_idx, server.pipeline.result())
        metrics = server.pipeline.step_metrics()
    assert metrics["comm/bytes_up"] == 200 + 200 + 400
    assert metrics["comm/bytes_down"] == 2 * 600
    assert metrics["comm/bytes_up_total"] == 2 * 800 and metrics["comm/bytes_down_total"] == 2 * 1200


def test_scaffold_downloads_its_control_variate_with_the_model():
    fed = blob_federation(num_clients=6)
    torch.manual_seed(0)
    sim = Simulation(
        fed, LogisticRegression((8,), 3), Scaffold(), UniformSampler(3), LocalTrainer(lr=0.1), rounds=1,
        transforms=[CommunicationMeter()],
    )  # fmt: skip
    sim.run()
    model_bytes = 27 * 4
    assert metric(sim.state.history[-1], "comm/bytes_down") == 3 * (model_bytes + model_bytes)  # model + c


@pytest.mark.parametrize("compressor,ratio", [(None, 1.0), (TopK(density=0.1), 0.2)])
def test_simulation_logs_bytes_for_every_run(compressor, ratio):
    fed = blob_federation(num_clients=10)
    torch.manual_seed(0)
    transforms = ([compressor] if compressor is not None else []) + [CommunicationMeter()]
    sim = Simulation(
        fed,
        LogisticRegression((8,), 3),
        FedAvg(),
        UniformSampler(clients_per_round=4),
        LocalTrainer(lr=0.1),
        rounds=2,
        seed=0,
        transforms=transforms,
    )
    sim.run()
    dense = 4 * 27  # 27 float32 parameters per client update
    for row in sim.state.history:
        assert metric(row, "comm/bytes_down") == 4 * dense
        expected_up = 4 * math.ceil(0.1 * 27) * (4 + 4) if compressor is not None else 4 * dense
        assert metric(row, "comm/bytes_up") == expected_up
    last = sim.state.history[-1]
    assert metric(last, "comm/bytes_up_total") == 2 * metric(last, "comm/bytes_up")
    assert metric(last, "comm/up_ratio") == pytest.approx(ratio, abs=0.03)
