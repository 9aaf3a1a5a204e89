"""Synchronous rounds on the virtual clock: deadlines, FedProx's partial work, over-selection.

Every job of `tests._clocked` is 1 s down + 2 steps / speed + 1 s up (72-byte model, 72 bytes/s).
"""

from __future__ import annotations

import math

import pytest
import torch

from fedtorch.clock import JobTiming
from fedtorch.compression import CommunicationMeter
from fedtorch.samplers import FullParticipation, UniformSampler
from fedtorch.servers import Synchronous
from fedtorch.simulation import Simulation
from fedtorch.strategies import FedAvg
from tests import _clocked

# Compute 1, 2, 4, 8, 0.5, 16 s: jobs end at 3, 4, 6, 10, 2.5 and 18 s.
SPEEDS = [2.0, 1.0, 0.5, 0.25, 4.0, 0.125]
ENDS = [3.0, 4.0, 6.0, 10.0, 2.5, 18.0]


def sim(server=None, clock=None, sampler=None, num_clients=6, rounds=2) -> Simulation:
    # The byte meter is on, as in every run the CLI builds.
    return Simulation(
        _clocked.federation(num_clients),
        _clocked.model(),
        FedAvg(),
        sampler or FullParticipation(),
        _clocked.trainer(),
        rounds=rounds,
        seed=5,
        clock=clock,
        server=server,
        transforms=[CommunicationMeter()],
    )


def fedavg_of(clients, start_sim: Simulation) -> torch.Tensor:
    """An independent FedAvg step over `clients` only: their updates from `train_client`, averaged."""
    deltas = [start_sim.train_client(1, k).delta.double() for k in clients]
    return start_sim.global_vector + torch.stack(deltas).mean(0).float()  # equal sizes: the plain mean


def test_a_clock_alone_changes_no_bit_of_training():
    plain, timed = sim(), sim(clock=_clocked.clock(SPEEDS))
    plain.run(), timed.run()
    assert torch.equal(plain.global_vector, timed.global_vector)
    # The synchronous server waits for its slowest client: 18 s a round.
    assert [row["time/virtual_seconds"] for row in timed.history] == [18.0, 36.0]
    assert timed.history[0]["clock/utilization"] == pytest.approx(sum(ENDS) / (6 * 18.0))


def test_the_deadline_drops_exactly_the_clients_whose_time_exceeds_it():
    timed = sim(Synchronous(deadline=7.0), _clocked.clock(SPEEDS))
    reference = fedavg_of([0, 1, 2, 4], sim())
    metrics = timed.run_round(1)
    assert timed.pipeline.record.contributors == [0, 1, 2, 4]  # ends 3, 4, 6, 2.5 s; not 10 and 18 s
    assert metrics["round/late"] == 2.0 and metrics["round/clients"] == 4.0
    assert metrics["time/virtual_seconds"] == 7.0  # it waited for clients 3 and 5 until the deadline
    # All 6 downloaded the model; only the 4 in time sent theirs back.
    assert metrics["comm/bytes_down"] == 6 * _clocked.MODEL_BYTES
    assert metrics["comm/bytes_up"] == 4 * _clocked.MODEL_BYTES
    torch.testing.assert_close(timed.global_vector, reference, rtol=1e-6, atol=1e-7)
    # A deadline of exactly 10 s keeps client 3 (a report counts when its time is <= the deadline).
    at_ten = sim(Synchronous(deadline=10.0), _clocked.clock(SPEEDS))
    assert sorted(at_ten.schedule(1, at_ten.sample(1), _clocked.MODEL_BYTES).reports.kept) == [0, 1, 2, 3, 4]


def test_late_clients_report_the_partial_work_that_fits():
    timed = sim(Synchronous(deadline=7.0, late="partial"), _clocked.clock(SPEEDS))
    plan = timed.schedule(1, timed.sample(1), _clocked.MODEL_BYTES)
    # Client 3 has 7 - 1 - 1 = 5 s for compute at 0.25 steps/s: 1 whole step (ends at 1 + 4 + 1 = 6 s).
    # Client 5 would get 0.625 of a step: none, so it stays late.
    assert {job.client_id: job.max_steps for job in plan.jobs} == {0: None, 1: None, 2: None, 3: 1, 4: None}
    assert plan.timings[3].end == 6.0 and plan.reports.late == (5,) and plan.partial == 1
    metrics = timed.run_round(1)
    assert metrics["round/local_steps"] == 4 * 2 + 1 and metrics["round/partial"] == 1.0


def test_over_selection_keeps_the_first_k_to_report():
    speeds = [2.0, 1.0, 0.5, 0.25, 4.0, 0.125, 3.0, 1.5, 0.75, 0.375]
    clock = _clocked.clock(speeds)
    ends = {k: 2.0 + 2.0 / s for k, s in enumerate(speeds)}
    timed = sim(Synchronous(over_selection=1.3), clock, UniformSampler(clients_per_round=3), num_clients=10)
    chosen = timed.sample(1).ids.tolist()
    metrics = timed.run_round(1)
    cohort = list(timed.pipeline.record.cohort)
    assert len(cohort) == 4 and set(chosen) <= set(cohort)  # ceil(1.3 x 3) = 4, the sampler's 3 among them
    first = sorted(cohort, key=lambda k: (ends[k], k))[:3]
    assert sorted(timed.pipeline.record.contributors) == sorted(first)
    assert metrics["round/surplus"] == 1.0 and metrics["round/late"] == 0.0
    # Over-selection's price: 4 downloads for 3 updates.
    assert (
        metrics["comm/bytes_down"] == 4 * _clocked.MODEL_BYTES and metrics["comm/bytes_up"] == 3 * _clocked.MODEL_BYTES
    )
    assert metrics["time/virtual_seconds"] == max(ends[k] for k in first)  # the 3rd report ends the round
    # Without over-selection the same seed selects exactly the sampler's clients.
    plain = sim(Synchronous(), clock, UniformSampler(clients_per_round=3), num_clients=10)
    plain.run_round(1)
    assert list(plain.pipeline.record.cohort) == chosen


def test_reports_decide_by_finish_time_then_client_id():
    def job(end: float) -> JobTiming:
        return JobTiming(0.0, 0.0, 0.0, 0.0, end)

    timings = {3: job(2.0), 1: job(2.0), 0: job(5.0), 2: job(math.inf)}
    reports = Synchronous(over_selection=2.0).reports(timings, 0.0, target=2)
    assert reports.kept == (1, 3) and reports.surplus == (0,) and reports.late == (2,) and reports.end == 2.0
    # No over-selection, no deadline: a client that never finishes is late; the round ends at the last report.
    reports = Synchronous().reports(timings, 0.0, target=4)
    assert reports.kept == (1, 3, 0) and reports.late == (2,) and reports.end == 5.0
    # With a deadline the server waits until it for the missing clients.
    assert Synchronous(deadline=9.0).reports(timings, 1.0, target=4).end == 10.0
