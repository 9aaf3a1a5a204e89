"""The virtual clock against hand-computed timelines: speeds, bandwidths, model size, availability gaps."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedtorch.clock import (
    Availability,
    LogNormal,
    Pareto,
    VirtualClock,
    compute_units,
    distribution,
    distribution_clock,
    read_availability,
    read_devices,
    step_metrics,
    time_to_target,
    trace_clock,
    union_length,
)
from fedtorch.errors import OptionError
from tests.conftest import REPO_ROOT

# Three devices. Bandwidths in bytes/s, speed in local steps/s; windows in seconds.
#   client 0: always online (one long window)
#   client 1: online [0, 3) and [5, 100): a 2-second gap
#   client 2: online [2, 4) and [10, 20): offline at the start, then a 6-second gap
SPEED = [4.0, 2.0, 1.0]
DOWN = [1000.0, 2000.0, 1000.0]
UP = [500.0, 1000.0, 1000.0]
WINDOWS = [np.array([[0.0, 1000.0]]), np.array([[0.0, 3.0], [5.0, 100.0]]), np.array([[2.0, 4.0], [10.0, 20.0]])]
MODEL_BYTES, UPDATE_BYTES, STEPS = 1000, 500, 8


def three_clients() -> VirtualClock:
    return VirtualClock(SPEED, DOWN, UP, availability=Availability(WINDOWS))


def test_three_client_timeline_by_hand():
    clock = three_clients()
    jobs = [clock.job(k, 0, 0.0, STEPS, MODEL_BYTES, UPDATE_BYTES) for k in range(3)]
    # client 0: 1000/1000 + 8/4 + 500/500 = 1 + 2 + 1 = 4 s, never offline.
    assert (jobs[0].download, jobs[0].compute, jobs[0].upload, jobs[0].end) == (1.0, 2.0, 1.0, 4.0)
    # client 1: 0.5 + 4 + 0.5 = 5 s of work; 3 s in [0, 3), offline until 5, the last 2 s end at 7.
    assert (jobs[1].work, jobs[1].end) == (5.0, 7.0)
    # client 2: 1 + 8 + 0.5 = 9.5 s; offline until 2, 2 s in [2, 4), offline until 10, 7.5 s more.
    assert (jobs[2].work, jobs[2].end) == (9.5, 17.5)
    # Handed over at 3.5: 0.5 s in [3.5, 4), 9 s in [10, 19).
    assert clock.job(2, 0, 3.5, STEPS, MODEL_BYTES, UPDATE_BYTES).end == 19.0
    # More work than the windows hold: never finishes.
    late = clock.job(2, 0, 0.0, 100, MODEL_BYTES, UPDATE_BYTES)
    assert late.end == math.inf and not late.finishes
    # What a job spanning [0, 17.5] works during, and the online time in between.
    assert clock.active_intervals(2, 0.0, 17.5) == [(2.0, 4.0), (10.0, 17.5)]
    assert clock.online_time(1, 1.0, 6.0) == 3.0


def test_periodic_windows_repeat():
    windows = [np.array([[0.0, 20.0]]), WINDOWS[1][:1], WINDOWS[2]]  # every window within the period
    clock = VirtualClock(SPEED, DOWN, UP, availability=Availability(windows, period=20.0))
    # Client 2 is online 12 s per 20-s period: 20 s of work from 0 take a whole period (12 s), then
    # [22, 24) (2 s) and 6 s of [30, 40): it ends at 36.
    assert clock.finish(2, 0.0, 20.0) == 36.0
    # Exactly a period's worth of online time ends at the last window's end.
    assert clock.finish(2, 0.0, 12.0) == 20.0
    assert clock.active_intervals(2, 15.0, 33.0) == [(15.0, 20.0), (22.0, 24.0), (30.0, 33.0)]


def test_round_on_the_clock_reports_time_utilization_and_idle_seconds():
    clock = three_clients()
    jobs = {k: clock.job(k, 0, 0.0, STEPS, MODEL_BYTES, UPDATE_BYTES) for k in range(3)}
    metrics = step_metrics(clock, 0.0, 17.5, 3, jobs)
    assert metrics["time/virtual_seconds"] == 17.5 and metrics["time/step_seconds"] == 17.5
    # Busy: 4 + 5 + 9.5 online seconds of 3 x 17.5 slot seconds.
    assert metrics["clock/utilization"] == pytest.approx(18.5 / 52.5, rel=1e-15)
    # Nobody works in [4, 5) (client 0 done, clients 1 and 2 offline) nor in [7, 10) (client 1 done
    # too, client 2 offline until 10).
    assert metrics["clock/idle_seconds"] == pytest.approx(4.0, rel=1e-15)
    assert union_length([(0, 2), (1, 3), (5, 6), (5.5, 5.7)]) == 4.0


def test_sample_units_and_noise():
    # 23 samples, batch 5: epochs of 5 steps (5, 5, 5, 5, 3 samples). 7 steps = one epoch (23) + 2 x 5.
    assert compute_units("samples", 7, 23, 5) == 33.0
    assert compute_units("samples", 2, 23, -1) == 46.0  # full batch: every step visits all 23
    assert compute_units("steps", 7, 23, 5) == 7.0
    noisy = VirtualClock(SPEED, DOWN, UP, noise=0.5, seed=4)
    first = noisy.job(0, 3, 0.0, STEPS, MODEL_BYTES, UPDATE_BYTES)
    again = VirtualClock(SPEED, DOWN, UP, noise=0.5, seed=4).job(0, 3, 0.0, STEPS, MODEL_BYTES, UPDATE_BYTES)
    assert first == again  # seeded from (seed, "clock", client, version)
    factor = noisy.noise_factor(0, 3)
    assert factor != 1.0 and first.end == pytest.approx(4.0 * factor, rel=1e-12)
    assert noisy.noise_factor(0, 4) != factor and noisy.noise_factor(1, 3) != factor
    # The factors are log-normal(0, 0.5): mean of log ~ 0, std ~ 0.5 over many jobs.
    logs = np.log([noisy.noise_factor(k, v) for k in range(50) for v in range(40)])
    assert abs(logs.mean()) < 0.05 and abs(logs.std() - 0.5) < 0.05


def test_distributions_are_seeded_and_shaped():
    a = distribution_clock(1000, 7, speed={"kind": "lognormal", "median": 2.0, "sigma": 1.0}, download=1e6, upload=2e5)
    b = distribution_clock(1000, 7, speed={"kind": "lognormal", "median": 2.0, "sigma": 1.0}, download=1e6, upload=2e5)
    assert np.array_equal(a.speed, b.speed) and (a.download == 1e6).all()
    assert np.median(a.speed) == pytest.approx(2.0, rel=0.1)
    assert np.std(np.log(a.speed)) == pytest.approx(1.0, rel=0.1)
    pareto = Pareto(shape=3.0, scale=2.0).sample(20000, np.random.default_rng(0))
    assert pareto.min() >= 2.0 and pareto.mean() == pytest.approx(3.0, rel=0.05)  # shape * scale / (shape - 1)
    assert isinstance(distribution("clock.speed", {"kind": "lognormal", "median": 1, "sigma": 0}), LogNormal)


def test_trace_files(tmp_path):
    devices = tmp_path / "devices.csv"
    devices.write_text("client,speed,download,upload\n1,2.0,100,50\n0,4,1000,500\n")
    windows = tmp_path / "availability.csv"
    windows.write_text("client,start,end\n0,0,10\n1,5,8\n1,6,12\n0,20,30\n")
    speed, down, up = read_devices(devices, 2)
    assert speed.tolist() == [4.0, 2.0] and down.tolist() == [1000.0, 100.0] and up.tolist() == [500.0, 50.0]
    availability = read_availability(windows, 2, period=None)
    assert availability.intervals(1, 0.0, 100.0) == [(5.0, 12.0)]  # overlapping windows merged
    clock = trace_clock(2, 0, str(devices), str(windows))
    assert clock.finish(0, 8.0, 5.0) == 23.0  # 2 s in [8, 10), 3 s from 20
    # The shipped example describes the default 30-client federation, with daily windows.
    example = trace_clock(30, 0, "conf/clock/traces/devices.csv", "conf/clock/traces/availability.csv", 86400.0)
    assert example.num_clients == 30 and (REPO_ROOT / "conf/clock/traces/devices.csv").is_file()


@pytest.mark.parametrize(
    ("devices", "message"),
    [
        ("client,speed,download,upload\n0,1,1,1\n1,0,1,1\n", r"clock.speed=0.0 is invalid.*client 1"),
        ("client,speed,download,upload\n0,1,1,1\n1,-2,1,1\n", r"clock.speed=-2.0 is invalid"),
        ("client,speed,download,upload\n0,1,1,1\n", r"clock.devices=.*missing: 1"),
        ("client,speed,download,upload\n0,1,1,1\n1,1,1,1\n2,1,1,1\n", r"client 2.*a client id in 0..1"),
        ("client,speed,download,upload\n0,1,1,1\n0,1,1,1\n", r"one row per client"),
        ("id,speed,download,upload\n0,1,1,1\n", r"header is client,speed,download,upload"),
        ("client,speed,download,upload\n0,1,x,1\n", r"line 2"),
    ],
    ids=["zero-speed", "negative-speed", "missing-client", "unknown-client", "duplicate", "header", "not-a-number"],
)
def test_bad_device_traces_are_one_line_errors(tmp_path, devices, message):
    path = tmp_path / "devices.csv"
    path.write_text(devices)
    with pytest.raises(OptionError, match=message) as error:
        trace_clock(2, 0, str(path))
    assert "\n" not in str(error.value)


def test_bad_profiles_and_windows_are_refused():
    with pytest.raises(OptionError, match=r"clock.speed=0.0 is invalid"):
        VirtualClock([1.0, 0.0], [1.0, 1.0], [1.0, 1.0])
    with pytest.raises(OptionError, match=r"clock.upload=-1.0"):
        distribution_clock(3, 0, speed=1.0, download=1.0, upload=-1.0)
    with pytest.raises(OptionError, match=r"clock.speed.kind='gamma'"):
        distribution_clock(3, 0, speed={"kind": "gamma"}, download=1.0, upload=1.0)
    with pytest.raises(OptionError, match=r"clock.availability='client 1' is invalid: a window for every client"):
        Availability.from_rows([(0, 0.0, 1.0)], 2, None)
    with pytest.raises(OptionError, match=r"clock.period=5"):
        Availability([np.array([[0.0, 6.0]])], period=5.0)
    with pytest.raises(OptionError, match=r"one per client of the federation \(4\)"):
        VirtualClock([1.0] * 3, [1.0] * 3, [1.0] * 3).check_federation(4)


def test_time_to_target_reads_the_first_row_that_reaches_it():
    history = [
        {"round": 1, "time/virtual_seconds": 10.0, "eval/accuracy": 0.5},
        {"round": 2, "time/virtual_seconds": 25.0},
        {"round": 3, "time/virtual_seconds": 31.0, "eval/accuracy": 0.81},
        {"round": 4, "time/virtual_seconds": 40.0, "eval/accuracy": 0.9},
    ]
    assert time_to_target(history, "eval/accuracy", 0.8) == 31.0
    assert time_to_target(history, "eval/accuracy", 0.95) is None
