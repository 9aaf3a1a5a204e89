"""Asynchronous servers (FedAsync, FedBuff): the synchronous loop's pieces around an event queue.

Time is the virtual clock's (`fedtorch.clock`). C clients train at once; each downloads the model
version the server is at, trains from it, and its update *arrives* when its upload ends. Every
K arrivals the server steps (FedAsync: K = 1). One server step:

    begin        strategy.begin_round(step), pipeline.begin(step)
    repeat K times:
      dispatch   when nothing more arrives at the current virtual time, fill the free slots: clients
                 drawn uniformly among the idle ones from the (seed, "sampler", step) stream, as a
                 synchronous round `step` draws its cohort; each downloads version v = step - 1 and
                 its job is timed by the clock (arrival = the end of its upload)
      arrive     the next event by (virtual time, client id); its staleness is v - the version it
                 downloaded; its update goes through the pipeline: the transforms (the staleness
                 weighting after the client-side ones), the aggregator
    step         pipeline.result(), strategy.apply (any server optimizer), evaluation, callbacks

A client is *idle* when it is neither in flight nor in the open buffer, so a buffer holds at most
one update per client (a DP step's sensitivity is one clipped update per client) and a client
trains at most once per model version (its random streams, from (seed, version + 1, client), never
repeat).

Training is lazy and batched: the jobs dispatched from one model version (at any virtual time) are
one `backend.train(jobs, x_v, payload)` call, made when the model is about to move or when one of
them arrives first; the vectorized backend batches them, the distributed backend splits them (its
processes then exchange the updates, so every process, and the checkpoint, holds every update in
flight; each update enters the pipeline of the process that trained it, and the step's one
`reduce` combines them). Updates wait for their arrival in memory: C x model.

Deterministic: the timeline depends only on the seed, the profiles and the trainer's step counts
(never on the training itself or the backend), events are ordered by (virtual time, client id),
and at equal times arrivals come before dispatches. Resumable mid-stream: a checkpoint (at the end
of a server step) holds the clients in flight with their downloaded versions, their timings and
their already-computed updates, and a resumed run continues bit for bit.

With C = K = the cohort, equal device speeds and no staleness, FedBuff is synchronous FedAvg bit
for bit: the same clients (the same stream), the same batches, the same arrival order (ascending
ids at equal times) and a staleness weight of exactly 1.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from fedtorch.client import ClientUpdate, LocalTrainer
from fedtorch.clock import JobTiming, VirtualClock, step_metrics
from fedtorch.data.base import Federation
from fedtorch.pipeline import StepFailed, UpdateTransform
from fedtorch.privacy.accounting import Sampling
from fedtorch.runner import ClientJob, Payload
from fedtorch.samplers import ClientSampler
from fedtorch.seeding import numpy_rng
from fedtorch.servers import Asynchronous, staleness_summary
from fedtorch.simulation import RoundStats, Simulation
from fedtorch.strategies.base import Strategy


class BufferCohort(ClientSampler):
    """What the composition checks and the pipeline context read of an asynchronous server.

    A server step takes K updates (`expected_cohort_size` = `fixed_cohort_size` = K); clients are
    not sampled per step but dispatched as slots free up. Inclusion probabilities are K / N, the
    share of the federation in a buffer (arrivals favour fast clients: approximate).
    """

    def __init__(self, buffer_size: int) -> None:
        super().__init__()
        self.buffer_size = buffer_size

    def expected_cohort_size(self) -> float:
        return float(self.buffer_size)

    def fixed_cohort_size(self) -> int | None:
        return self.buffer_size

    def inclusion_probabilities(self) -> np.ndarray:
        return np.full(self.num_clients, self.buffer_size / self.num_clients)


@dataclass
class InFlight:
    """A client's job between its dispatch and its arrival.

    Attributes:
        client: the client.
        version: the model version it downloaded (server steps taken then).
        timing: its job on the clock (arrival = `timing.end`).
        update: its update once trained (None before; distributed: every process holds it).
        mine: this process trained it, so this process's pipeline takes it.
    """

    client: int
    version: int
    timing: JobTiming
    update: ClientUpdate | None = None
    mine: bool = True

    @property
    def trained(self) -> bool:
        return self.update is not None


class AsynchronousSimulation(Simulation):
    """FedAsync or FedBuff on the virtual clock (`server`: a `fedtorch.servers.Asynchronous`).

    Takes `Simulation`'s arguments, without a sampler (the server dispatches its own clients) and
    with the server mode and the clock; `rounds` counts server steps; `options` are `Simulation`'s
    keyword arguments (seed, device, eval_every, backend, callbacks, loss_fn, names). Reuses
    `Simulation`'s evaluation, run loop, callbacks, summary and checkpointing.
    """

    server: Asynchronous

    def __init__(
        self,
        federation: Federation,
        model: nn.Module,
        strategy: Strategy,
        trainer: LocalTrainer,
        server: Asynchronous,
        clock: VirtualClock,
        rounds: int,
        transforms: Sequence[UpdateTransform] = (),
        **options: Any,
    ) -> None:
        # The staleness weighting is server side: after attacks, compression and DP clipping, before
        # the byte meter (which must stay last to read what was encoded).
        self.staleness = server.transform()
        transforms = list(transforms)
        at = len(transforms) - 1 if transforms and transforms[-1].group == "meter" else len(transforms)
        transforms.insert(at, self.staleness)
        sampler = BufferCohort(server.buffer_size)
        super().__init__(
            federation, model, strategy, sampler, trainer, rounds, transforms=transforms, clock=clock, server=server,
            **options,
        )  # fmt: skip
        self.clock: VirtualClock = clock
        self.queue: list[tuple[float, int]] = []  # (arrival time, client): a heap
        self.in_flight: dict[int, InFlight] = {}
        self.busy = np.zeros(self.federation.num_clients, dtype=bool)  # in flight or in the open buffer
        self.pending: list[InFlight] = []  # dispatched from the current version, not trained yet
        self.versions: dict[int, Tensor] = {}  # FedAsync: old models that jobs in flight started from
        self.dispatched = 0  # jobs dispatched since the start of the run
        self.step_staleness: list[int] = []  # the last step's staleness values (a histogram for the logs)
        self._stream: tuple[int, np.random.Generator] | None = None
        self._payload: tuple[int, Payload] | None = None
        self._upload = self.pipeline.upload_bytes()

    def accounted_sampling(self, sampler: ClientSampler) -> Any:
        # Who lands in a buffer depends on device speeds, not on a uniform draw: no amplification by
        # subsampling is claimed. Each step is one Gaussian release over distinct clients' clipped
        # updates, composed step after step.
        return Sampling.poisson(1.0, sampler.num_clients)

    # -- the event loop ----------------------------------------------------------------------------
    @property
    def now(self) -> float:
        return self.state.virtual_time

    def payload(self, version: int) -> Payload:
        """What clients downloading `version` get besides the model (computed once per version)."""
        if self._payload is None or self._payload[0] != version:
            self._payload = (version, self.strategy.configure_round(version + 1))
        return self._payload[1]

    def dispatch_stream(self, step: int) -> np.random.Generator:
        """The (seed, "sampler", step) stream the dispatches of server step `step` draw from, in event order."""
        if self._stream is None or self._stream[0] != step:
            self._stream = (step, numpy_rng(self.seed, "sampler", step))
        return self._stream[1]

    def dispatch(self, step: int, version: int, download: int) -> int:
        """Fill the free slots at the current virtual time; returns how many clients started."""
        free = self.server.concurrency - len(self.in_flight)
        if free <= 0:
            return 0
        stream = self.dispatch_stream(step)
        # Drawn as a synchronous round draws its cohort (uniformly, without replacement, from every
        # client: O(free)); busy candidates are replaced by a draw among the idle ones. By symmetry
        # the result is a uniform draw among the idle clients.
        candidates = stream.choice(len(self.busy), size=free, replace=False)
        chosen = candidates[~self.busy[candidates]]
        if len(chosen) < len(candidates):
            idle = ~self.busy
            idle[chosen] = False
            rest = np.flatnonzero(idle)
            more = stream.choice(rest, size=min(free - len(chosen), len(rest)), replace=False)
            chosen = np.concatenate([chosen, more])
        chosen = np.sort(chosen)
        started = 0
        for k in chosen.tolist():
            timing = self.time_job(ClientJob(k, version + 1), version, self.now, download, self._upload)
            if not timing.finishes:
                continue  # its device is never online long enough again: it is not handed the job
            job = InFlight(k, version, timing)
            self.busy[k] = True
            self.in_flight[k] = job
            self.pending.append(job)
            heapq.heappush(self.queue, (timing.end, k))
            started += 1
        self.dispatched += started
        return started

    def next_arrival(self, step: int, version: int, download: int) -> InFlight:
        """The next arrival; when nothing more arrives at the current time, first fill the free slots."""
        if not self.queue or self.queue[0][0] > self.now:
            self.dispatch(step, version, download)
        if not self.queue:
            raise StepFailed(
                f"server step {step}: no client is in flight and none can finish a job (every idle client's "
                "availability has ended): set clock.period to repeat the availability trace"
            )
        end, client = heapq.heappop(self.queue)
        self.state.virtual_time = end
        return self.in_flight.pop(client)

    def train_pending(self, version: int) -> None:
        """Train every job dispatched from `version` not trained yet, as one backend call."""
        if not self.pending:
            return
        pending, self.pending = self.pending, []
        by_client = {job.client: job for job in pending}
        jobs = [ClientJob(job.client, job.version + 1) for job in pending]
        for update in self.backend.train(jobs, self.global_vector, self.payload(version)):
            by_client[update.client_id].update = update
        if self.backend.world_size > 1:
            # Every process keeps every update in flight (the checkpoint is rank 0's); each enters
            # the pipeline of the process that trained it.
            mine = {job.client: _to_state(job.update) for job in pending if job.update is not None}
            parts: list[Any] = [None] * self.backend.world_size
            dist.all_gather_object(parts, mine)
            for part in parts:
                for client, state in part.items():
                    job = by_client[client]
                    if job.update is None:
                        job.update = _from_state(state, self.device)
                        job.mine = False

    def run_round(self, round_idx: int) -> dict[str, float]:
        """One server step: the next K arrivals into the pipeline, then the server optimizer's step."""
        wall = time.perf_counter()
        step, version = round_idx, round_idx - 1
        start = self.now
        dispatched = self.dispatched
        download = self.download_bytes(self.payload(version))
        self.strategy.begin_round(step, ())
        # An asynchronous step has no cohort fixed in advance: the record's contributors fill as updates arrive.
        self.pipeline.begin(step, (), download_bytes=download)
        stats = RoundStats.zeros(self.device)
        arrived: dict[int, JobTiming] = {}
        staleness: list[int] = []
        while len(arrived) < self.server.buffer_size:
            job = self.next_arrival(step, version, download)
            if not job.trained:
                self.train_pending(version)
            stale = version - job.version
            staleness.append(stale)
            arrived[job.client] = job.timing
            update, job.update = job.update, None
            if job.mine and update is not None:
                drift = None
                if self.server.rebase and stale > 0:
                    drift = self.versions[job.version] - self.global_vector
                self.staleness.expect(job.client, stale, drift)
                stats.add(update)
                self.pipeline.accept(update)
        # Jobs dispatched from this version train before the model moves on.
        self.train_pending(version)
        if self.server.rebase:
            live = {job.version for job in self.in_flight.values()}
            if version in live:
                self.versions[version] = self.global_vector.detach().clone()
            self.versions = {v: x for v, x in self.versions.items() if v in live}
        self.backend.reduce([self.pipeline, self.strategy, self.runner.state, stats])
        server_metrics = self.strategy.apply(step, self.pipeline.result())
        self.busy[list(arrived)] = False  # the buffer is flushed: its clients are idle again

        metrics = self.training_metrics(stats)
        metrics.update({(k if "/" in k else f"server/{k}"): v for k, v in server_metrics.items()})
        metrics.update(self.pipeline.step_metrics())
        jobs = {**arrived, **{k: job.timing for k, job in self.in_flight.items()}}
        metrics.update(step_metrics(self.clock, start, self.now, self.server.concurrency, jobs))
        metrics.update(staleness_summary(staleness))
        metrics["async/weight_mean"] = sum(self.staleness.weight(s) for s in staleness) / len(staleness)
        metrics["async/dispatched"] = float(self.dispatched - dispatched)
        self.step_staleness = staleness
        if round_idx % self.eval_every == 0 or round_idx == self.rounds:
            metrics.update(self.evaluate())
        metrics["round/seconds"] = time.perf_counter() - wall
        return metrics

    # -- checkpointing --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """`Simulation.state_dict()` plus the stream in flight (taken between server steps, when the
        buffer is empty and every job in flight is trained): each job's client, downloaded version,
        timing and update, the old models FedAsync still needs, and the dispatch count."""
        state = super().state_dict()
        jobs = []
        for job in sorted(self.in_flight.values(), key=lambda j: (j.timing.end, j.client)):
            assert job.update is not None, "a checkpoint is taken between server steps, with every job trained"
            t = job.timing
            jobs.append(
                {
                    "client": job.client,
                    "version": job.version,
                    "timing": [t.start, t.download, t.compute, t.upload, t.end],
                    "update": _to_state(job.update),
                }
            )
        state["asynchronous"] = {
            "jobs": jobs,
            "versions": {v: x.detach().cpu().clone() for v, x in self.versions.items()},
            "dispatched": self.dispatched,
        }
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        saved = state["asynchronous"]
        self.queue, self.in_flight, self.pending = [], {}, []
        self.busy[:] = False
        world, rank = self.backend.world_size, self.backend.rank
        for entry in saved["jobs"]:
            client = int(entry["client"])
            job = InFlight(
                client,
                int(entry["version"]),
                JobTiming(*(float(v) for v in entry["timing"])),
                _from_state(entry["update"], self.device),
                mine=client % world == rank,  # exactly one process takes each restored update
            )
            self.in_flight[client] = job
            self.busy[client] = True
            heapq.heappush(self.queue, (job.timing.end, client))
        self.versions = {int(v): x.to(self.device) for v, x in saved["versions"].items()}
        self.dispatched = int(saved["dispatched"])
        self._stream = None
        self._payload = None


def _to_state(update: ClientUpdate | None) -> dict[str, Any]:
    """A `ClientUpdate` as plain tensors on the CPU (checkpoints, process exchange)."""
    assert update is not None
    return {
        "client_id": update.client_id,
        "delta": update.delta.detach().cpu().clone(),
        "num_samples": update.num_samples,
        "num_steps": update.num_steps,
        "metrics": {k: v.detach().cpu().clone() for k, v in update.metrics.items()},
        "extra": {k: v.detach().cpu().clone() for k, v in update.extra.items()},
    }


def _from_state(state: Mapping[str, Any], device: torch.device) -> ClientUpdate:
    return ClientUpdate(
        client_id=int(state["client_id"]),
        delta=state["delta"].to(device),
        num_samples=int(state["num_samples"]),
        num_steps=int(state["num_steps"]),
        metrics={k: v.to(device) for k, v in state["metrics"].items()},
        extra={k: v.to(device) for k, v in state["extra"].items()},
    )
