"""Asynchronous servers on the virtual clock: FedBuff against synchronous FedAvg, FedAsync against a
hand-computed trace, determinism, mid-stream resume, the sequential and vectorized backends, and
composition with compression and central DP."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fedtorch.asynchronous import AsynchronousSimulation
from fedtorch.backends import SequentialBackend, VectorizedBackend
from fedtorch.checkpoint import load_checkpoint, make_payload, save_checkpoint
from fedtorch.clock import VirtualClock, distribution_clock
from fedtorch.compression import CommunicationMeter, TopK
from fedtorch.privacy import DPFedAvg
from fedtorch.runner import ClientJob
from fedtorch.samplers import UniformSampler
from fedtorch.servers import FedAsync, FedBuff
from fedtorch.simulation import Simulation
from fedtorch.strategies import FedAdam, FedAvg
from tests import _clocked

TIMING = {"round/seconds"}


def fedbuff(
    server, clock, rounds=6, num_clients=12, strategy=None, backend=None, transforms=(), dtype=torch.float32, seed=3
):
    return AsynchronousSimulation(
        _clocked.federation(num_clients, dtype=dtype),
        _clocked.model(dtype),
        strategy or FedAvg(),
        _clocked.trainer(),
        server=server,
        clock=clock,
        rounds=rounds,
        seed=seed,
        backend=backend,
        transforms=transforms,
    )


def lognormal_clock(num_clients=12, noise=0.3) -> VirtualClock:
    spec = {"kind": "lognormal", "median": 2.0, "sigma": 1.0}
    return distribution_clock(num_clients, 3, speed=spec, download=50.0, upload=30.0, noise=noise)


def without_timing(rows):
    return [{k: v for k, v in row.items() if k not in TIMING} for row in rows]


def test_fedbuff_with_concurrency_buffer_and_cohort_equal_is_synchronous_fedavg_bit_for_bit():
    sync = Simulation(
        _clocked.federation(12), _clocked.model(), FedAvg(), UniformSampler(clients_per_round=4), _clocked.trainer(),
        rounds=5, seed=3,
    )  # fmt: skip
    sync.run()
    buffered = fedbuff(FedBuff(concurrency=4, buffer_size=4), _clocked.clock([2.0] * 12), rounds=5)
    buffered.run()
    assert torch.equal(buffered.global_vector, sync.global_vector)
    for row_sync, row_buff in zip(sync.history, buffered.history):
        shared = set(row_sync) - TIMING
        assert {k: row_buff[k] for k in shared} == {k: row_sync[k] for k in shared}
        assert row_buff["async/staleness_max"] == 0.0 and row_buff["async/weight_mean"] == 1.0
    # Every step takes one job: 1 s down + 2 steps / 2 per s + 1 s up.
    assert [row["time/virtual_seconds"] for row in buffered.history] == [3.0, 6.0, 9.0, 12.0, 15.0]


def test_fedasync_weights_and_model_match_a_hand_computed_three_client_trace():
    # Jobs of 1, 2 and 3 s: client 0: 0.25 + 2 / 4 + 0.25; client 1: 0.5 + 2 / 2 + 0.5; client 2: 1 + 1 + 1.
    clock = VirtualClock([4.0, 2.0, 2.0], [288.0, 144.0, 72.0], [288.0, 144.0, 72.0])
    alpha = 0.5
    sim = fedbuff(FedAsync(concurrency=3, alpha=alpha), clock, rounds=5, num_clients=3)
    x0 = sim.global_vector.clone()
    sim.run()
    # By hand. t=0: all three download x0. t=1: client 0 arrives (staleness 0) -> x1, and is sent x1.
    # t=2: client 0 (from x1, staleness 0) -> x2; client 1 (from x0, staleness 2) -> x3; clients 0
    # and 1 are sent x3. t=3: client 0 (from x3, staleness 0) -> x4; client 2 (from x0, staleness 4) -> x5.
    times = [1.0, 2.0, 2.0, 3.0, 3.0]
    staleness = [0, 0, 2, 0, 4]
    weights = [alpha * (s + 1) ** -0.5 for s in staleness]  # polynomial a = 1/2
    assert [row["time/virtual_seconds"] for row in sim.history] == times
    assert [row["async/staleness_mean"] for row in sim.history] == staleness
    assert [row["async/weight_mean"] for row in sim.history] == pytest.approx(weights, rel=1e-15)
    # The model: x_t = (1 - a_t) x_{t-1} + a_t x_new, x_new = the client's model trained from x_tau.
    ref = fedbuff(FedAsync(concurrency=3, alpha=alpha), clock, rounds=5, num_clients=3)
    arrivals = [(0, 0), (0, 1), (1, 0), (0, 3), (2, 0)]  # (client, version it downloaded)
    models = [x0.double()]
    for (client, version), a in zip(arrivals, weights):
        start = models[version].float()
        x_new = start.double() + ref.runner.run(ClientJob(client, version + 1), start).delta.double()
        models.append((1 - a) * models[-1] + a * x_new)
    torch.testing.assert_close(sim.global_vector.double(), models[-1], rtol=1e-6, atol=1e-7)


def test_same_seed_same_bits_and_a_different_seed_differs():
    runs = []
    for seed in (3, 3, 4):
        sim = fedbuff(FedBuff(concurrency=6, buffer_size=2), lognormal_clock(), rounds=5, seed=seed)
        sim.run()
        runs.append(sim)
    assert torch.equal(runs[0].global_vector, runs[1].global_vector)
    assert without_timing(runs[0].history) == without_timing(runs[1].history)
    assert not torch.equal(runs[0].global_vector, runs[2].global_vector)
    # Real asynchrony: stale updates, damped, and clients always busy.
    staleness = [row["async/staleness_max"] for row in runs[0].history]
    assert max(staleness) >= 2 and all(row["clock/utilization"] == pytest.approx(1.0) for row in runs[0].history)


@pytest.mark.parametrize("mode", ["fedbuff", "fedasync"])
def test_a_checkpoint_taken_mid_stream_resumes_bit_exact(tmp_path, mode):
    def make():
        server = FedBuff(concurrency=6, buffer_size=2) if mode == "fedbuff" else FedAsync(concurrency=5, alpha=0.6)
        return fedbuff(server, lognormal_clock(), rounds=8, strategy=FedAdam(server_lr=0.05))

    full = make()
    full.run()
    first = make()
    first.rounds = 3
    first.run()
    # Between steps: the step's last arrival has not been replaced yet; every job in flight is trained.
    assert first.server.concurrency - first.server.buffer_size <= len(first.in_flight) < first.server.concurrency
    assert all(job.trained for job in first.in_flight.values())
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, make_payload(3, first.state_dict()))
    resumed = make()
    resumed.load_state_dict(load_checkpoint(path)["simulation"])  # weights_only=True
    resumed.run()
    assert torch.equal(resumed.global_vector, full.global_vector)
    assert without_timing(resumed.history) == without_timing(full.history)
    # Sensitive: the same checkpoint without the clients in flight continues differently.
    state = load_checkpoint(path)["simulation"]
    state["asynchronous"]["jobs"] = []
    partial = make()
    partial.load_state_dict(state)
    partial.run()
    assert not torch.equal(partial.global_vector, full.global_vector)


def test_sequential_and_vectorized_backends_give_the_same_stream():
    runs = []
    for backend in (SequentialBackend(), VectorizedBackend()):
        sim = fedbuff(FedBuff(concurrency=6, buffer_size=3), lognormal_clock(), backend=backend, dtype=torch.float64)
        summary = sim.run()
        runs.append((sim, summary))
    (seq, _), (vec, vec_summary) = runs
    assert vec_summary["backend"] == "vectorized"
    torch.testing.assert_close(vec.global_vector, seq.global_vector, rtol=1e-10, atol=1e-12)
    for row_s, row_v in zip(seq.history, vec.history):
        for key in ("time/virtual_seconds", "async/staleness_mean", "async/dispatched", "round/local_steps"):
            assert row_v[key] == row_s[key], key


def test_fedbuff_composes_with_compression_and_central_dp():
    # Top-k at 10%: 2 of 18 values + int32 indices = 16 bytes up instead of 72; the clock times that.
    sim = fedbuff(
        FedBuff(concurrency=4, buffer_size=2),
        _clocked.clock([2.0] * 12),
        transforms=[TopK(density=0.1), CommunicationMeter()],
    )
    assert sim.pipeline.upload_bytes() == 16 and type(sim.pipeline.transforms[-2]).__name__ == "StalenessWeighting"
    row = sim.run_round(1)
    assert row["time/virtual_seconds"] == 1.0 + 1.0 + 16 / 72 and row["comm/bytes_up"] == 2 * 16

    # DP-FedBuff: clipping per update, noise per buffer, one Gaussian release per server step.
    z, delta = 1.1, 1e-5
    mechanism = DPFedAvg(clip_norm=0.5, noise_multiplier=z, delta=delta)
    private = fedbuff(
        FedBuff(concurrency=6, buffer_size=3),
        lognormal_clock(noise=0.0),
        rounds=4,
        transforms=[*mechanism.client_transforms(), *mechanism.server_transforms(), CommunicationMeter()],
    )
    private.run()
    import dp_accounting

    accountant = dp_accounting.rdp.RdpAccountant()
    accountant.compose(dp_accounting.GaussianDpEvent(z), 4)  # no amplification by subsampling is claimed
    assert private.history[-1]["privacy/epsilon"] == pytest.approx(accountant.get_epsilon(delta), rel=1e-6)
    assert math.isfinite(private.history[-1]["eval/loss"])


def test_dispatch_draws_idle_clients_from_the_step_stream():
    sim = fedbuff(FedBuff(concurrency=5, buffer_size=2), lognormal_clock(), rounds=3)
    sim.run()
    # Every client in flight is busy, nobody else; a slot freed by an arrival is refilled before the
    # next arrival, so between steps only the step's last arrival(s) wait to be replaced.
    busy = set(np.flatnonzero(sim.busy).tolist())
    assert busy == set(sim.in_flight) and 5 - 2 <= len(sim.in_flight) <= 5 - 1
    assert [row["async/dispatched"] for row in sim.history[1:]] == [row["round/clients"] for row in sim.history[1:]]
    assert len(sim.queue) == len(sim.in_flight) and all(sim.in_flight[k].timing.end == t for t, k in sim.queue)
