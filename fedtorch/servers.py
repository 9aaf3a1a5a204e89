"""Server modes: when the server steps, and whose updates it waits for (`server=<name>`).

    sync       every selected client reports; the round lasts as long as its slowest client
    deadline   a round deadline and/or over-selection (Bonawitz et al. 2019, "Towards Federated
               Learning at Scale: System Design", Section 4: select 130% of the target, keep the
               first K to report); late clients are dropped or, as in FedProx (Li et al. 2020,
               Section 5.2), report the partial work that fits before the deadline
    fedasync   every arrival is a server step, mixed in with alpha * s(staleness) (Xie et al. 2019)
    fedbuff    a buffer of K arrivals per server step, damped by 1/sqrt(1 + staleness), any server
               optimizer (Nguyen et al. 2022)

The synchronous modes run in `fedtorch.simulation.Simulation`, the asynchronous ones in
`fedtorch.asynchronous.AsynchronousSimulation`. Every mode but plain `sync` needs the virtual
clock (`fedtorch.clock`); `fedtorch.compatibility.check_server` refuses, in one line, what cannot
run together. A mode is a plain description: the simulations do the work.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fedtorch.clock import JobTiming
from fedtorch.errors import check_choice, check_int, check_number
from fedtorch.staleness import StalenessFunction, StalenessWeighting, staleness_function


class ServerMode:
    """Base: what the simulations and `fedtorch.compatibility` read.

    Declarations:
        asynchronous: runs on the event queue (`AsynchronousSimulation`).
        needs_clock: needs device profiles (a deadline, over-selection, any asynchronous server).
        supports_central_dp: the papers define DP-FedAvg's per-step noise for this mode.
    """

    name = "server"
    asynchronous = False
    needs_clock = False
    supports_central_dp = True


@dataclass(frozen=True)
class RoundReports:
    """Who of a synchronous round's selected clients count, and when the round ends.

    Attributes:
        kept: the clients whose update the server aggregates, by finish time (ties: client id).
        late: selected clients that did not report by the round's end (deadline, or their device
            is never online long enough); FedProx's partial reporters are not late.
        surplus: over-selected clients that finished in time but after the first K.
        end: the virtual time the round ends.
    """

    kept: tuple[int, ...]
    late: tuple[int, ...]
    surplus: tuple[int, ...]
    end: float


class Synchronous(ServerMode):
    """Synchronous rounds, optionally with a deadline and over-selection.

    Args:
        deadline: virtual seconds a round waits at most, from its start; None: no deadline.
        over_selection: select ceil(over_selection * K) clients for a cohort of K and keep the first K
            to report (Bonawitz et al. 2019 use 1.3); 1: no over-selection.
        late: what a client that cannot finish by the deadline does: "drop" (reports nothing) or
            "partial" (reports the local steps that fit, at least one; FedProx's partial work).
    """

    name = "sync"

    def __init__(self, deadline: float | None = None, over_selection: float = 1.0, late: str = "drop") -> None:
        self.deadline = check_number("server.deadline", deadline, 0.0, low_open=True, none=True)
        self.over_selection = check_number("server.over_selection", over_selection, 1.0)
        self.late = check_choice("server.late", late, ("drop", "partial"))
        self.needs_clock = self.deadline is not None or self.over_selection > 1.0
        if self.needs_clock:
            self.name = "deadline"

    def selected(self, cohort_size: int, num_clients: int) -> int:
        """How many clients to select for a cohort of `cohort_size`: ceil(f K), at most the federation."""
        return min(num_clients, math.ceil(self.over_selection * cohort_size - 1e-9))

    def reports(self, timings: Mapping[int, JobTiming], start: float, target: int) -> RoundReports:
        """Keep the first `target` clients that finish by the deadline; the round ends when the
        target is met, else at the deadline (or, without one, when the last client that can finish does).

        Clients whose device is never online long enough to finish are late whatever the deadline.
        """
        deadline = math.inf if self.deadline is None else start + self.deadline
        order = sorted((t.end, k) for k, t in timings.items())
        in_time = [k for end, k in order if end <= deadline and math.isfinite(end)]
        kept = tuple(in_time[:target])
        surplus = tuple(in_time[target:])
        late = tuple(sorted(set(timings) - set(in_time)))
        if target > 0 and len(kept) == target:
            end = timings[kept[-1]].end  # the K-th report: the server stops waiting
        elif late and math.isfinite(deadline):
            end = deadline  # it waited for clients that never came
        else:
            end = max((timings[k].end for k in kept), default=start)
        return RoundReports(kept, late, surplus, end)


class Asynchronous(ServerMode):
    """Shared part of the asynchronous servers: C clients train at once, a server step every K arrivals.

    Args:
        concurrency: C, clients training at the same time (at most the federation).
        buffer_size: K, arrivals per server step (at most C).
        staleness: s, {kind: constant|polynomial|hinge, a, b} or a `StalenessFunction`.
        alpha: the mixing weight alpha_t = alpha * s(staleness) (FedAsync; 1 for FedBuff).
        rebase: mix the client's model into the current one (FedAsync) instead of averaging the
            deltas relative to the downloaded models (FedBuff).
    """

    asynchronous = True
    needs_clock = True
    #: Whether to mix into the current model (FedAsync) rather than average deltas (FedBuff).
    rebase = False

    def __init__(
        self,
        concurrency: int,
        buffer_size: int,
        staleness: StalenessFunction | Mapping[str, Any] | None = None,
        alpha: float = 1.0,
    ) -> None:
        self.concurrency = check_int("server.concurrency", concurrency, 1)
        self.buffer_size = check_int("server.buffer_size", buffer_size, 1)
        self.staleness = staleness_function(staleness if staleness is not None else {"kind": "polynomial", "a": 0.5})
        self.alpha = check_number("server.alpha", alpha, 0.0, 1.0, low_open=True)

    def transform(self) -> StalenessWeighting:
        """The aggregation's staleness weighting, placed after the client-side transforms."""
        return StalenessWeighting(self.staleness, alpha=self.alpha, rebase=self.rebase)


class FedBuff(Asynchronous):
    """FedBuff (Nguyen et al. 2022, "Federated Learning with Buffered Asynchronous Aggregation").

    C clients train at once from the model version they downloaded; the server aggregates every K
    arrivals, each delta damped by s(staleness) = 1/sqrt(1 + staleness) by default, and steps the
    strategy's server optimizer (SGD(lr=1) is FedAvg, `strategy=fedadam` ...). The paper averages
    the buffer uniformly, (1/K) sum_k s_k delta_k: `strategy.weighted=false`; the default
    sample-weighted mean gives sum_k n_k s_k delta_k / sum_k n_k.
    """

    name = "fedbuff"

    def __init__(
        self, concurrency: int = 100, buffer_size: int = 10, staleness: Any = None, alpha: float = 1.0
    ) -> None:
        super().__init__(concurrency, buffer_size, staleness, alpha)


class FedAsync(Asynchronous):
    """FedAsync (Xie, Koyejo and Gupta 2019, "Asynchronous Federated Optimization", Algorithm 1).

    Every arrival is a server step: x_t = (1 - alpha_t) x_{t-1} + alpha_t x_new with
    alpha_t = alpha * s(t - tau). With `strategy=fedavg` (SGD, lr 1) that is the paper's update;
    another server optimizer steps on the mixed delta alpha_t (x_new - x_{t-1}).
    """

    name = "fedasync"
    rebase = True
    supports_central_dp = False  # noise per single update: not defined by the paper

    def __init__(self, concurrency: int = 10, alpha: float = 0.6, staleness: Any = None) -> None:
        super().__init__(concurrency, 1, staleness, alpha)


def staleness_summary(values: Sequence[int]) -> dict[str, float]:
    """Mean and max staleness of a server step's updates."""
    if not values:
        return {}
    return {"async/staleness_mean": float(sum(values)) / len(values), "async/staleness_max": float(max(values))}
