"""The virtual clock: how long a client's job takes in simulated time.

Real cross-device federations are slow and uneven: phones differ 10-100x in compute and bandwidth,
and come and go through the day. fedtorch never waits for any of it: every client has a *device
profile*, and a job's duration is computed from it, so a laptop reproduces the time-to-accuracy of
a week-long deployment, bit for bit.

A client's job (download the model, train locally, upload the update) takes

    work = (down_bytes / download  +  compute / speed  +  up_bytes / upload) * noise

seconds of *online* time, where
    down_bytes  the model and the strategy's payload, dense (`Simulation` counts them);
    compute     local steps (`unit: steps`) or sample visits (`unit: samples`, FedScale's unit);
    up_bytes    the update as the pipeline's transforms encode it (`UpdatePipeline.upload_bytes`:
                a compressor's payload, else dense);
    noise       1, or a log-normal factor exp(N(0, sigma^2)) drawn from (seed, "clock", client,
                version), the same for a client's job whichever server mode or backend runs it.

Availability (optional): each client is online during windows (start, end) of virtual seconds,
optionally repeating with a period (a day). Work progresses only while the client is online: a
job handed to an offline client starts when it next comes online, and pauses while it is offline
(the device picks its work up when it is next online, as a push-notified phone would). A job whose
client is not online long enough after it starts (the windows end, no period) never finishes
(`JobTiming.end` is infinite).

Profiles come from distributions (`distribution_clock`: log-normal, Pareto or constant per
quantity, drawn from (seed, "clock_profiles")) or from trace files (`trace_clock`), in the shape of
FedScale's device and availability traces (Lai et al. 2022, "FedScale: Benchmarking Model and
System Performance of Federated Learning at Scale"):

    devices.csv        client,speed,download,upload        one row per client (ids 0..N-1);
                       speed in the clock's unit per second, bandwidths in bytes per second
    availability.csv   client,start,end                    any number of rows per client, in
                       virtual seconds (overlapping windows are merged); every client needs one

`conf/clock/traces/` ships a small generated example for the default 30-client federation
(`experiments/async/make_trace.py` wrote it).
"""

from __future__ import annotations

import bisect
import csv
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedtorch.errors import OptionError, check_choice, check_number
from fedtorch.seeding import derive_seed, numpy_rng

#: Where relative trace paths are looked up when they are not found from the working directory.
REPO_ROOT = Path(__file__).resolve().parent.parent

UNITS = ("steps", "samples")


# -- distributions of device quantities -----------------------------------------------------------
class Distribution:
    """A positive random quantity (a compute speed, a bandwidth) drawn once per client."""

    def sample(self, size: int, rng: np.random.Generator) -> np.ndarray:
        raise NotImplementedError


@dataclass(frozen=True)
class Constant(Distribution):
    """Every client the same `value`."""

    value: float

    def sample(self, size: int, rng: np.random.Generator) -> np.ndarray:
        return np.full(size, float(self.value))


@dataclass(frozen=True)
class LogNormal(Distribution):
    """exp(N(log median, sigma^2)): the median client has `median`; sigma = 1 spans ~7x between the
    16th and 84th percentiles (device speeds and bandwidths are roughly log-normal, FedScale Fig. 2)."""

    median: float
    sigma: float

    def sample(self, size: int, rng: np.random.Generator) -> np.ndarray:
        return self.median * np.exp(self.sigma * rng.standard_normal(size))


@dataclass(frozen=True)
class Pareto(Distribution):
    """Pareto with minimum `scale` and tail index `shape`: P(X > x) = (scale / x)^shape, x >= scale
    (a heavy tail of fast devices when used for speeds)."""

    shape: float
    scale: float

    def sample(self, size: int, rng: np.random.Generator) -> np.ndarray:
        return self.scale * (1.0 + rng.pareto(self.shape, size))


def distribution(key: str, spec: Any) -> Distribution:
    """A `Distribution` from config: a number (constant) or {kind: constant|lognormal|pareto, ...}."""
    if isinstance(spec, (int, float)) and not isinstance(spec, bool):
        return Constant(check_number(key, spec, 0.0, low_open=True))
    if not isinstance(spec, Mapping):
        raise OptionError(key, spec, "a number, or {kind: constant|lognormal|pareto, ...}")
    kind = check_choice(f"{key}.kind", spec.get("kind"), ("constant", "lognormal", "pareto"))
    allowed = {"constant": {"value"}, "lognormal": {"median", "sigma"}, "pareto": {"shape", "scale"}}[kind]
    unknown = sorted(set(spec) - allowed - {"kind"})
    if unknown:
        raise OptionError(f"{key}.{unknown[0]}", spec[unknown[0]], f"{kind} takes {', '.join(sorted(allowed))}")
    if kind == "constant":
        return Constant(check_number(f"{key}.value", spec.get("value"), 0.0, low_open=True))
    if kind == "lognormal":
        return LogNormal(
            check_number(f"{key}.median", spec.get("median"), 0.0, low_open=True),
            check_number(f"{key}.sigma", spec.get("sigma", 0.0), 0.0),
        )
    return Pareto(
        check_number(f"{key}.shape", spec.get("shape"), 0.0, low_open=True),
        check_number(f"{key}.scale", spec.get("scale"), 0.0, low_open=True),
    )


# -- availability windows -------------------------------------------------------------------------
class Availability:
    """Each client's online windows, optionally repeating every `period` seconds.

    The online time of client k up to time t is F_k(t) (a non-decreasing, piecewise-linear
    function); everything the clock needs is F and its inverse, each a binary search over the
    client's windows (O(log windows) per job).

    Args:
        windows: per client, an (n, 2) array of [start, end) intervals in seconds (sorted, disjoint;
            `from_rows` builds them from unsorted, overlapping rows).
        period: the windows repeat every `period` seconds (they must lie in [0, period)); None: they
            happen once, and a client is offline for good after its last window.
    """

    def __init__(self, windows: Sequence[np.ndarray], period: float | None = None) -> None:
        self.period = check_number("clock.period", period, 0.0, low_open=True, none=True)
        self.starts: list[list[float]] = []
        self.ends: list[list[float]] = []
        self.cum: list[list[float]] = []  # online time before window i
        self.cum_end: list[list[float]] = []  # online time up to the end of window i
        for client, w in enumerate(windows):
            w = np.asarray(w, dtype=np.float64).reshape(-1, 2)
            if len(w) == 0:
                raise OptionError("clock.availability", f"client {client}", "every client needs an online window")
            if self.period is not None and (w[:, 0].min() < 0 or w[:, 1].max() > self.period):
                raise OptionError(
                    "clock.period",
                    self.period,
                    f"at least the end of client {client}'s last window ({w[:, 1].max():g})",
                )
            lengths = w[:, 1] - w[:, 0]
            cum = np.concatenate([[0.0], np.cumsum(lengths)[:-1]])
            self.starts.append(w[:, 0].tolist())
            self.ends.append(w[:, 1].tolist())
            self.cum.append(cum.tolist())
            self.cum_end.append((cum + lengths).tolist())

    @classmethod
    def from_rows(
        cls, rows: Sequence[tuple[int, float, float]], num_clients: int, period: float | None
    ) -> Availability:
        """From (client, start, end) rows: sorted, overlapping windows merged, every client present."""
        per_client: list[list[tuple[float, float]]] = [[] for _ in range(num_clients)]
        for client, start, end in rows:
            per_client[client].append((start, end))
        windows = []
        for client, spans in enumerate(per_client):
            if not spans:
                raise OptionError(
                    "clock.availability", f"client {client}", f"a window for every client 0..{num_clients - 1}"
                )
            merged: list[list[float]] = []
            for start, end in sorted(spans):
                if merged and start <= merged[-1][1]:
                    merged[-1][1] = max(merged[-1][1], end)
                else:
                    merged.append([start, end])
            windows.append(np.asarray(merged))
        return cls(windows, period)

    @property
    def num_clients(self) -> int:
        return len(self.starts)

    def _total(self, client: int) -> float:
        return self.cum_end[client][-1]

    def _online_once(self, client: int, t: float) -> float:
        """F within one pass of the windows (t in seconds from the pass's start)."""
        i = bisect.bisect_right(self.starts[client], t) - 1
        if i < 0:
            return 0.0
        return self.cum[client][i] + min(t, self.ends[client][i]) - self.starts[client][i]

    def online_until(self, client: int, t: float) -> float:
        """F_k(t): client k's online seconds in [0, t]."""
        if self.period is None:
            return self._online_once(client, t)
        cycles = math.floor(t / self.period)
        return cycles * self._total(client) + self._online_once(client, t - cycles * self.period)

    def _inverse_once(self, client: int, online: float) -> float:
        """The earliest t with F(t) = online, within one pass (online in (0, total])."""
        i = bisect.bisect_left(self.cum_end[client], online)
        return self.starts[client][i] + online - self.cum[client][i]

    def advance(self, client: int, t: float, work: float) -> float:
        """The time at which client k, starting at t, has been online for `work` seconds (inf: never)."""
        target = self.online_until(client, t) + work
        total = self._total(client)
        if self.period is None:
            return math.inf if target > total else self._inverse_once(client, target)
        cycles = math.floor(target / total)
        rest = target - cycles * total
        if rest <= 0.0:  # exactly at the end of a pass: the last window's end in the previous one
            cycles, rest = cycles - 1, total
        return cycles * self.period + self._inverse_once(client, rest)

    def intervals(self, client: int, a: float, b: float) -> list[tuple[float, float]]:
        """The parts of [a, b] during which client k is online."""
        if b <= a:
            return []
        out: list[tuple[float, float]] = []
        offsets = [0.0]
        if self.period is not None:
            first, last = math.floor(a / self.period), math.floor(b / self.period)
            offsets = [c * self.period for c in range(first, last + 1)]
        for offset in offsets:
            lo, hi = a - offset, b - offset
            i = max(bisect.bisect_right(self.starts[client], lo) - 1, 0)
            while i < len(self.starts[client]) and self.starts[client][i] < hi:
                s, e = max(self.starts[client][i], lo), min(self.ends[client][i], hi)
                if e > s:
                    out.append((s + offset, e + offset))
                i += 1
        return out


# -- device profiles and job timing ---------------------------------------------------------------
@dataclass(frozen=True)
class JobTiming:
    """One job on the virtual clock.

    Attributes:
        start: when the job was handed to the client.
        download, compute, upload: the online seconds each phase takes (noise included).
        end: when the upload completes (inf: the client is never online long enough).
    """

    start: float
    download: float
    compute: float
    upload: float
    end: float

    @property
    def work(self) -> float:
        return self.download + self.compute + self.upload

    @property
    def finishes(self) -> bool:
        return math.isfinite(self.end)


class VirtualClock:
    """Device profiles (speed, bandwidths, availability) and the timing of jobs on them.

    Args:
        speed: per client, local steps (or sample visits, `unit`) per second; > 0.
        download, upload: per client, bytes per second; > 0.
        availability: online windows; None: every client always online.
        unit: "steps" or "samples": what `speed` counts.
        noise: sigma of the per-job log-normal factor on the job's duration; 0: none.
        seed: the root seed (the noise of client k's job from model version v is drawn from
            (seed, "clock", k, v)).
    """

    def __init__(
        self,
        speed: Sequence[float] | np.ndarray,
        download: Sequence[float] | np.ndarray,
        upload: Sequence[float] | np.ndarray,
        availability: Availability | None = None,
        unit: str = "steps",
        noise: float = 0.0,
        seed: int = 0,
    ) -> None:
        self.unit = check_choice("clock.unit", unit, UNITS)
        self.noise = check_number("clock.noise", noise, 0.0)
        self.seed = int(seed)
        self._noise_key = derive_seed(self.seed, "clock")
        self.speed = _positive("clock.speed", speed)
        self.download = _positive("clock.download", download)
        self.upload = _positive("clock.upload", upload)
        n = len(self.speed)
        if len(self.download) != n or len(self.upload) != n:
            raise OptionError(
                "clock", f"{n}/{len(self.download)}/{len(self.upload)}", "one speed and bandwidth per client"
            )
        if availability is not None and availability.num_clients != n:
            raise OptionError("clock.availability", availability.num_clients, f"windows for the {n} clients")
        self.availability = availability
        # Python floats for the per-job arithmetic (numpy scalars cost ~1 us an operation).
        self._speed, self._download, self._upload = self.speed.tolist(), self.download.tolist(), self.upload.tolist()

    @property
    def num_clients(self) -> int:
        return len(self.speed)

    def check_federation(self, num_clients: int) -> None:
        """The profiles must describe exactly the federation's clients."""
        if self.num_clients != num_clients:
            raise OptionError(
                "clock", f"{self.num_clients} device profiles", f"one per client of the federation ({num_clients})"
            )

    def noise_factor(self, client: int, version: int) -> float:
        """exp(sigma * z), z ~ N(0, 1) from (seed, "clock", client, version); 1 without noise."""
        if self.noise == 0.0:
            return 1.0
        # Two uniforms from a hash of (seed, "clock", client, version), then Box-Muller: a job's
        # noise costs ~1 us, not the ~10 us of a SeedSequence (the event loop times every job).
        bits = _mix(self._noise_key, client, version)
        u1 = ((bits >> 32) + 0.5) / 2.0**32
        u2 = ((bits & 0xFFFFFFFF) + 0.5) / 2.0**32
        z = math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2)
        return math.exp(self.noise * z)

    def durations(
        self, client: int, version: int, compute: float, down_bytes: int, up_bytes: int
    ) -> tuple[float, float, float]:
        """(download, compute, upload) online seconds of a job (`compute` in the clock's unit)."""
        factor = self.noise_factor(client, version)
        return (
            down_bytes / self._download[client] * factor,
            compute / self._speed[client] * factor,
            up_bytes / self._upload[client] * factor,
        )

    def finish(self, client: int, start: float, work: float) -> float:
        """When `work` online seconds handed to the client at `start` are done (inf: never)."""
        if self.availability is None:
            return start + work
        return self.availability.advance(client, start, work)

    def job(self, client: int, version: int, start: float, compute: float, down_bytes: int, up_bytes: int) -> JobTiming:
        """The timing of client k's job from model version `version`, handed to it at `start`."""
        down, comp, up = self.durations(client, version, compute, down_bytes, up_bytes)
        return JobTiming(start, down, comp, up, self.finish(client, start, down + comp + up))

    def online_time(self, client: int, a: float, b: float) -> float:
        """Client k's online seconds in [a, b]."""
        if b <= a:
            return 0.0
        if self.availability is None:
            return b - a
        return self.availability.online_until(client, b) - self.availability.online_until(client, a)

    def active_intervals(self, client: int, a: float, b: float) -> list[tuple[float, float]]:
        """The parts of [a, b] in which a job of client k that spans [a, b] works (is online)."""
        if b <= a:
            return []
        if self.availability is None:
            return [(a, b)]
        return self.availability.intervals(client, a, b)

    def compute_that_fits(
        self, client: int, version: int, start: float, deadline: float, down_bytes: int, up_bytes: int
    ) -> float:
        """The compute (in the clock's unit) a job handed over at `start` can do and still finish
        its download and upload by `deadline` (FedProx's partial work); may be negative."""
        down, _, up = self.durations(client, version, 0.0, down_bytes, up_bytes)
        available = self.online_time(client, start, deadline)
        return (available - down - up) / self.noise_factor(client, version) * self._speed[client]


_MASK64 = (1 << 64) - 1


def _mix(key: int, *values: int) -> int:
    """A 64-bit hash of `key` and integers: splitmix64's finalizer (Steele, Lea and Flood 2014,
    "Fast Splittable Pseudorandom Number Generators") applied after each value."""
    h = key & _MASK64
    for value in values:
        h = (h + 0x9E3779B97F4A7C15 + (int(value) & _MASK64)) & _MASK64
        h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & _MASK64
        h ^= h >> 31
    return h


def _positive(key: str, values: Sequence[float] | np.ndarray) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    bad = np.flatnonzero(~(np.isfinite(array) & (array > 0)))
    if len(bad):
        raise OptionError(key, float(array[bad[0]]), f"a finite number > 0 for every client (client {int(bad[0])})")
    return array


# -- building a clock from config -------------------------------------------------------------------
def distribution_clock(
    num_clients: int,
    seed: int,
    speed: Any,
    download: Any,
    upload: Any,
    availability: str | None = None,
    period: float | None = None,
    unit: str = "steps",
    noise: float = 0.0,
) -> VirtualClock:
    """Profiles drawn from distributions (`clock=distributions`), from the (seed, "clock_profiles")
    stream: speed, then download, then upload bandwidth, each for every client in id order."""
    dists = [distribution("clock.speed", speed), distribution("clock.download", download)]
    dists.append(distribution("clock.upload", upload))
    check_choice("clock.unit", unit, UNITS)
    check_number("clock.noise", noise, 0.0)
    rng = numpy_rng(seed, "clock_profiles")
    values = [d.sample(num_clients, rng) for d in dists]
    windows = None if availability is None else read_availability(availability, num_clients, period)
    return VirtualClock(*values, availability=windows, unit=unit, noise=noise, seed=seed)


def trace_clock(
    num_clients: int,
    seed: int,
    devices: str,
    availability: str | None = None,
    period: float | None = None,
    unit: str = "steps",
    noise: float = 0.0,
) -> VirtualClock:
    """Profiles read from a device trace and an optional availability trace (`clock=trace`)."""
    check_choice("clock.unit", unit, UNITS)
    check_number("clock.noise", noise, 0.0)
    speed, down, up = read_devices(devices, num_clients)
    windows = None if availability is None else read_availability(availability, num_clients, period)
    return VirtualClock(speed, down, up, availability=windows, unit=unit, noise=noise, seed=seed)


def resolve_path(key: str, path: str | Path) -> Path:
    """`path` as given, else relative to the repository (so `conf/clock/traces/...` works anywhere)."""
    given = Path(path).expanduser()
    for candidate in (given, REPO_ROOT / given):
        if candidate.is_file():
            return candidate
    raise OptionError(
        key, str(path), "an existing CSV file (relative paths: from the working directory or the repository)"
    )


def _rows(key: str, path: str | Path, columns: tuple[str, ...]) -> list[tuple[int, list[float]]]:
    """(line number, values) of a CSV with exactly `columns` (header first), every value a number."""
    file = resolve_path(key, path)
    with file.open(newline="") as handle:
        reader = csv.reader(handle)
        header = [h.strip() for h in next(reader, [])]
        if tuple(header) != columns:
            raise OptionError(key, str(path), f"a CSV whose header is {','.join(columns)} (found {','.join(header)})")
        rows = []
        for line, row in enumerate(reader, start=2):
            if not row or all(not cell.strip() for cell in row):
                continue
            try:
                values = [float(cell) for cell in row]
            except ValueError:
                values = []
            if len(values) != len(columns) or not all(math.isfinite(v) for v in values):
                raise OptionError(key, f"{file.name} line {line}", f"{len(columns)} numbers ({','.join(columns)})")
            rows.append((line, values))
    return rows


def _client_id(key: str, value: float, line: int, num_clients: int, name: str) -> int:
    if value != int(value) or not 0 <= value < num_clients:
        raise OptionError(key, f"{name} line {line}: client {value:g}", f"a client id in 0..{num_clients - 1}")
    return int(value)


def read_devices(path: str | Path, num_clients: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """speed, download, upload per client from `client,speed,download,upload` rows: one per client."""
    key = "clock.devices"
    name = Path(path).name
    speed = np.full(num_clients, np.nan)
    down, up = speed.copy(), speed.copy()
    for line, (client, s, d, u) in _rows(key, path, ("client", "speed", "download", "upload")):
        k = _client_id(key, client, line, num_clients, name)
        if not np.isnan(speed[k]):
            raise OptionError(key, f"{name} line {line}: client {k}", "one row per client (it appears twice)")
        for what, value in (("speed", s), ("download", d), ("upload", u)):
            if value <= 0:
                raise OptionError(f"clock.{what}", value, f"a number > 0 ({name} line {line}, client {k})")
        speed[k], down[k], up[k] = s, d, u
    missing = np.flatnonzero(np.isnan(speed))
    if len(missing):
        raise OptionError(
            key, str(path), f"a row for every client 0..{num_clients - 1} (missing: {_some(missing.tolist())})"
        )
    return speed, down, up


def read_availability(path: str | Path, num_clients: int, period: float | None) -> Availability:
    """Online windows from `client,start,end` rows (seconds; start < end)."""
    key = "clock.availability"
    name = Path(path).name
    rows = []
    for line, (client, start, end) in _rows(key, path, ("client", "start", "end")):
        k = _client_id(key, client, line, num_clients, name)
        if not 0 <= start < end:
            raise OptionError(key, f"{name} line {line}: [{start:g}, {end:g}]", "0 <= start < end")
        rows.append((k, start, end))
    present = {k for k, _, _ in rows}
    missing = [k for k in range(num_clients) if k not in present]
    if missing:
        raise OptionError(key, str(path), f"a window for every client 0..{num_clients - 1} (missing: {_some(missing)})")
    return Availability.from_rows(rows, num_clients, period)


def _some(ids: list[int], shown: int = 5) -> str:
    text = ", ".join(str(k) for k in ids[:shown])
    return text + (f" and {len(ids) - shown} more" if len(ids) > shown else "")


def compute_units(unit: str, steps: int, num_samples: int, batch_size: int) -> float:
    """What a job of `steps` local steps costs in the clock's unit: the steps, or the sample visits
    (every epoch visits all n samples in ceil(n / B) steps, the last batch n - (ceil(n/B) - 1) B)."""
    if unit == "steps" or steps == 0:
        return float(steps)
    batch = num_samples if batch_size == -1 else batch_size
    per_epoch = -(-num_samples // batch)
    epochs, rest = divmod(steps, per_epoch)
    return float(epochs * num_samples + rest * batch)  # the first `rest` steps of an epoch are full batches


def time_to_target(
    history: Sequence[Mapping[str, float]], metric: str, target: float, higher_is_better: bool = True
) -> float | None:
    """The virtual second (`time/virtual_seconds`) of the first row whose `metric` reaches `target`, or None.

    For the report: the time-to-accuracy that compares synchronous and asynchronous servers.
    """
    for row in history:
        value = row.get(metric)
        if value is None or "time/virtual_seconds" not in row:
            continue
        if (value >= target) if higher_is_better else (value <= target):
            return float(row["time/virtual_seconds"])
    return None


def union_length(intervals: Sequence[tuple[float, float]]) -> float:
    """The total length covered by a set of intervals (overlaps counted once)."""
    total, reach = 0.0, -math.inf
    for start, end in sorted(intervals):
        if end <= reach:
            continue
        total += end - max(start, reach)
        reach = end
    return total


def step_metrics(
    clock: VirtualClock, start: float, end: float, slots: int, jobs: Mapping[int, JobTiming]
) -> dict[str, float]:
    """What a server step looks like on the virtual clock, for the logs.

    time/virtual_seconds   the virtual time at the end of the step
    time/step_seconds      how long the step took
    clock/utilization      the busy fraction of the step's client slots (the cohort, or the
                           asynchronous server's concurrency): online seconds spent on jobs
                           (downloading, training, uploading) / (slots x step seconds)
    clock/idle_seconds     seconds of the step during which no client worked on a job (every
                           client offline, or done and waiting for the step to end)

    `jobs` are the jobs that ran during [start, end] (a job still running at `end` counts until then).
    """
    elapsed = end - start
    metrics = {"time/virtual_seconds": float(end), "time/step_seconds": float(elapsed)}
    if elapsed <= 0 or slots <= 0:
        return metrics
    if clock.availability is None:
        # Always online: a job works on [max(its start, start), min(its end, end)], vectorized (the
        # asynchronous server calls this every step with `concurrency` jobs).
        spans = np.array([(job.start, job.end) for job in jobs.values()], dtype=np.float64).reshape(-1, 2)
        lo, hi = np.maximum(spans[:, 0], start), np.minimum(spans[:, 1], end)
        keep = hi > lo
        active = list(zip(lo[keep].tolist(), hi[keep].tolist()))
    else:
        active = [
            span
            for client, job in jobs.items()
            for span in clock.active_intervals(client, max(job.start, start), min(job.end, end))
        ]
    metrics["clock/utilization"] = sum(e - s for s, e in active) / (slots * elapsed)
    metrics["clock/idle_seconds"] = max(0.0, elapsed - union_length(active))
    return metrics
