"""The update pipeline: from "a client sent an update" to "the server has one aggregate".

    update -> transform_1 -> ... -> transform_n -> strategy bookkeeping -> aggregator
                                                    (only if it reads updates)
    aggregator.result() -> transform_1.on_aggregate -> ... -> transform_n.on_aggregate -> Aggregate

Transforms are the parts that compose with every strategy: Byzantine attacks, compression,
differential-privacy clipping and noise, secure-aggregation masking, the byte meter. They see
updates one at a time and the reduced aggregate once per server step; they never touch the
strategy. What they need to know about the run comes once, at set-up, as a frozen
`PipelineContext`; what they need to know about a step comes with it as a `StepRecord` (the
cohort, the clients whose update really reached the aggregate). A transform that needs something
of the strategy or the other transforms declares it (`needs_uniform_weights`, `sum_only`, ...) and
`fedtorch.compatibility` checks the declarations in one place.

The pipeline consumes updates one at a time, so the same object serves a synchronous round (all
of the round's updates, then one step) and an asynchronous server (a buffer of K arrivals per
step). Its state for a step is reduced across processes by `merge` (the distributed backend).

Omniscient transforms. Colluding attackers that craft their updates from everything the honest
clients sent (ALIE, IPM, min-max, Fang et al.'s attacks) must see the whole step first. A
transform that declares `omniscient = True` gets, instead of `on_update`, one `on_step` call with
all of the step's updates sorted by client id (so every backend and arrival order gives the same
view), after the last update arrived and before the aggregator reduces; it replaces its own
clients' updates, and the rest of the path (later transforms, the strategy's bookkeeping, the
aggregator) then takes them in client-id order. Only then does the pipeline keep the step's
updates (O(clients x model) memory); without an omniscient transform it streams exactly as
before, in O(model) for the weighted mean. Under the distributed backend the processes first
all-gather the step's updates, so the transform sees the same view on every process, and each
process passes on only the updates it received.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from fedtorch.aggregators import Aggregator, all_gather_updates
from fedtorch.client import ClientUpdate
from fedtorch.params import VectorLayout

Weighting = Callable[[ClientUpdate], float]


class StepFailed(RuntimeError):
    """A step that cannot complete (an update too large for secure aggregation's ring): the run
    stops cleanly after the last good step, with `reason` as its stop reason and the message."""

    reason = "step_failed"


@dataclass(frozen=True)
class PipelineContext:
    """What every transform may know about the run, fixed at set-up.

    Attributes:
        layout: where each parameter lives in the flat update vector.
        num_clients: K, the size of the federation.
        client_sizes: n_k of every client (read-only).
        device, dtype: of the global weights (and of the aggregate).
        seed: the run's root seed (transforms derive their streams from it).
        rounds: the planned number of rounds (server steps).
        expected_cohort: E[clients selected per step] (the sampler's, before any dropout).
        report_probability: P(a selected client's update reaches the aggregate), the product over
            every dropout source (the sampler's dropouts, secure aggregation's, ...).
        weighting: the aggregation weight of an update (its sample count for FedAvg's weighted
            mean, 1 for a uniform mean): the weight the aggregator will give it.
        expected_total_weight: E[sum of the weights of one step's reports], or None where weights
            depend on the training itself (q-FFL).
        server_lr: the strategy's step size on the aggregate (1.0 is FedAvg's plain average).
        sampling: the sampler's scheme as the privacy accountant models it, or None.
    """

    layout: VectorLayout
    num_clients: int
    client_sizes: np.ndarray
    device: torch.device
    dtype: torch.dtype
    seed: int
    rounds: int
    expected_cohort: float
    report_probability: float
    weighting: Weighting
    expected_total_weight: float | None
    server_lr: float
    sampling: Any = None

    @property
    def expected_reports(self) -> float:
        """E[updates that reach the aggregate per step]: DP-FedAvg's public normalizer E[m]."""
        return self.expected_cohort * self.report_probability


@dataclass
class StepRecord:
    """One server step as the pipeline sees it.

    Attributes:
        step: the round (synchronous) or server step (asynchronous), 1-based.
        cohort: the clients asked to train for this step, sorted.
        contributors: the clients whose update is in the aggregate so far; a transform that drops
            an update (secure aggregation's dropouts) removes it here.
    """

    step: int
    cohort: tuple[int, ...]
    contributors: list[int] = field(default_factory=list)
    download_bytes: int = 0  # what each client downloads: the model and the strategy's payload


class UpdateTransform:
    """A step between "a client produced an update" and "the server reduced the updates".

    Declarations (class attributes) that `fedtorch.compatibility` checks:
        sum_only: the server learns only the sum of the updates (secure aggregation): strategies
            and reducers that read individual updates cannot follow it.
        needs_uniform_weights: every update must count the same (DP-FedAvg's sensitivity).
        needs_mean: the aggregator must be the (streaming) weighted mean.
        releases_empty_steps: the server step runs even with no update (central DP's noise).
        report_probability: P(an update that enters this transform leaves it), e.g.
            1 - secagg.dropout; it enters `PipelineContext.report_probability`.
        evaluates_model: `evaluate_model` adds metrics whenever the global model is evaluated
            (a backdoor's success rate).
        omniscient: the transform sees the whole step at once (`on_step`, after every update of
            the step arrived) instead of one update at a time; the pipeline then keeps the step's
            updates, and it cannot follow secure aggregation.
        malicious_fraction: the share of the federation's clients it makes Byzantine (an
            attack's `fraction`); compared with what the reducer tolerates.
    """

    #: The config group it comes from (for messages): "attack", "compression", "privacy", "secagg".
    group: str = "transform"
    sum_only: bool = False
    needs_uniform_weights: bool = False
    needs_mean: bool = False
    releases_empty_steps: bool = False
    report_probability: float = 1.0
    evaluates_model: bool = False
    omniscient: bool = False
    malicious_fraction: float = 0.0

    def setup(self, context: PipelineContext) -> None:
        """Called once, before the first step."""

    def begin(self, record: StepRecord) -> None:
        """A step starts; its cohort is known (secure aggregation derives its pairwise masks from it)."""

    def on_update(self, update: ClientUpdate, record: StepRecord) -> ClientUpdate:
        return update

    def upload_bytes(self, numel: int, current: int) -> int:
        """Bytes an update of `numel` coordinates takes on the wire after this transform, given
        `current` before it: what the virtual clock times an upload by, known before training.
        An encoder whose payload size depends only on the update's length overrides it."""
        return current

    def on_step(self, updates: list[ClientUpdate], record: StepRecord) -> list[ClientUpdate]:
        """An omniscient transform's view of the whole step: every update, sorted by client id
        (also other processes' under the distributed backend); returns them, changed."""
        return updates

    def merge(self, group: dist.ProcessGroup | None = None) -> None:
        """Combine per-step state held by every process (distributed backend), like the aggregator."""

    def on_aggregate(self, aggregate: Tensor, record: StepRecord) -> Tensor | None:
        """The reduced update before the server step; None aborts the step (no model change)."""
        return aggregate

    def step_metrics(self) -> dict[str, float]:
        """Scalars to log for the step just finished (e.g. epsilon, bytes sent)."""
        return {}

    def evaluate_model(self, model: nn.Module) -> dict[str, float]:
        """Metrics of the global model (loaded into `model`), logged under `eval/`."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class UpdateSink(Protocol):
    """The strategy's server half as the pipeline sees it: per-update bookkeeping, if any."""

    reads_updates: bool

    def on_update(self, update: ClientUpdate) -> None: ...


class UpdatePipeline:
    """Transforms, then (optionally) the strategy's bookkeeping, then the aggregator.

    Args:
        transforms: in the order they apply, client side first.
        aggregator: the reducer of the (transformed) deltas.
        weighting: the weight of each update in the aggregator.
        sink: the strategy's per-update bookkeeping (called only if it `reads_updates`).
    """

    def __init__(
        self,
        transforms: Sequence[UpdateTransform],
        aggregator: Aggregator,
        weighting: Weighting,
        sink: UpdateSink | None = None,
    ) -> None:
        self.transforms = list(transforms)
        self.aggregator = aggregator
        self.weighting = weighting
        self.sink = sink if sink is not None and sink.reads_updates else None
        self.record: StepRecord | None = None
        self.aborted = False
        omniscient = [i for i, t in enumerate(self.transforms) if t.omniscient]
        if len(omniscient) > 1:
            raise ValueError("at most one omniscient transform per pipeline (one attack sees the step)")
        #: Position of the omniscient transform; the updates of a step wait there until `result`.
        self._view_at: int | None = omniscient[0] if omniscient else None
        self._held: list[ClientUpdate] | None = None

    def setup(self, context: PipelineContext) -> None:
        self.context = context
        self.aggregator.setup(context.seed)
        for transform in self.transforms:
            transform.setup(context)

    def begin(self, step: int, cohort: Sequence[int], download_bytes: int = 0) -> StepRecord:
        """Start a step whose updates come from `cohort`; each client downloaded `download_bytes`."""
        self.record = StepRecord(
            step=step, cohort=tuple(sorted(int(k) for k in cohort)), download_bytes=int(download_bytes)
        )
        self.aborted = False
        like = torch.zeros(self.context.layout.size, device=self.context.device, dtype=self.context.dtype)
        self.aggregator.reset(like=like)
        self.aggregator.begin_step(step)
        self._held = [] if self._view_at is not None else None
        for transform in self.transforms:
            transform.begin(self.record)
        return self.record

    def accept(self, update: ClientUpdate) -> None:
        """Take one client's update: transforms, bookkeeping, then into the aggregator (streaming)."""
        assert self.record is not None, "accept() before begin()"
        self.record.contributors.append(update.client_id)
        if self._held is None:
            self._deliver(update, self.transforms)
            return
        # An omniscient transform comes: apply the ones before it, then wait for the whole step.
        # A copy: a backend may reuse the buffer an update arrived in for the next client.
        for transform in self.transforms[: self._view_at]:
            update = transform.on_update(update, self.record)
        update.delta = update.delta.detach().clone()
        self._held.append(update)

    def _deliver(self, update: ClientUpdate, transforms: Sequence[UpdateTransform]) -> None:
        """`transforms`, then the strategy's bookkeeping, then into the aggregator."""
        assert self.record is not None
        for transform in transforms:
            update = transform.on_update(update, self.record)
        if self.sink is not None:
            self.sink.on_update(update)
        self.aggregator.add(update.delta, self.weighting(update), client_id=update.client_id)

    def upload_bytes(self) -> int:
        """Bytes one client's update takes on the wire as the transforms encode it (a compressor's
        payload, else the dense delta): the virtual clock's upload size. Strategy tensors a client
        attaches to its update (`update.extra`) are not included (the byte meter counts them)."""
        numel = self.context.layout.size
        size = numel * torch.empty((), dtype=self.context.dtype).element_size()
        for transform in self.transforms:
            size = transform.upload_bytes(numel, size)
        return size

    def _release(self, view: list[ClientUpdate], mine: set[int] | None = None) -> None:
        """The omniscient transform sees `view` (the whole step, by client id); this process's
        updates (`mine`; None: all of them) then go down the rest of the path in client-id order."""
        assert self.record is not None and self._view_at is not None
        updates = self.transforms[self._view_at].on_step(sorted(view, key=lambda u: u.client_id), self.record)
        self._held = None
        rest = self.transforms[self._view_at + 1 :]
        for update in updates:
            if mine is None or update.client_id in mine:
                self._deliver(update, rest)

    def merge(self, group: dist.ProcessGroup | None = None) -> None:
        """Combine the partial step state of all processes (distributed backend)."""
        if self._held is not None:
            # The omniscient transform's view is every process's updates: gather them, let it act
            # on the same view everywhere, and pass on this process's own (merged below).
            held = self._held
            like = torch.zeros(self.context.layout.size, device=self.context.device, dtype=self.context.dtype)
            deltas, weights, ids = all_gather_updates(
                [u.delta for u in held], [float(u.num_samples) for u in held], [u.client_id for u in held], like, group
            )
            mine = {u.client_id for u in held}
            others = [ClientUpdate(k, d, int(w), 0) for d, w, k in zip(deltas, weights, ids) if k not in mine]
            self._release(held + others, mine)
        self.aggregator.merge(group)
        for transform in self.transforms:
            if not transform.omniscient:  # it saw the whole step on every process: nothing to merge
                transform.merge(group)
        assert self.record is not None
        parts: list[Any] = [None] * dist.get_world_size(group)
        dist.all_gather_object(parts, self.record.contributors, group=group)
        self.record.contributors = sorted(k for part in parts for k in part)

    @property
    def count(self) -> int:
        """Updates received this step (on this process, before a merge)."""
        if self._held is not None:
            return len(self._held)
        return self.aggregator.count

    def result(self) -> Tensor | None:
        """The step's aggregate after every transform, or None when the step must be skipped.

        A step with fewer updates than the reducer needs (none at all after Poisson sampling or
        dropouts; fewer than 2f + 3 for Krum) is skipped, as a server that waits for enough reports
        would, unless a transform must release something even then (central DP's noise: skipping
        would reveal that the cohort was empty). A transform may also abort the step (secure
        aggregation with too few survivors).
        """
        assert self.record is not None
        if self._held is not None:
            self._release(self._held)
        count = self.aggregator.count
        if count == 0 and any(t.releases_empty_steps for t in self.transforms):
            aggregate: Tensor | None = torch.zeros(
                self.context.layout.size, device=self.context.device, dtype=self.context.dtype
            )
        elif count < max(1, self.aggregator.min_updates):
            return None
        else:
            aggregate = self.aggregator.result().to(self.context.dtype)
        for transform in self.transforms:
            aggregate = transform.on_aggregate(aggregate, self.record)
            if aggregate is None:
                self.aborted = True
                return None
        return aggregate

    def step_metrics(self) -> dict[str, float]:
        metrics: dict[str, float] = {}
        for transform in self.transforms:
            metrics.update(transform.step_metrics())
        metrics.update(self.aggregator.step_metrics())
        return metrics

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"transforms": [t.state_dict() for t in self.transforms]}
        aggregator = self.aggregator.state_dict()
        if aggregator:  # a reducer with memory between steps (centered clipping's centre)
            state["aggregator"] = aggregator
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for transform, transform_state in zip(self.transforms, state.get("transforms", [])):
            transform.load_state_dict(transform_state)
        if "aggregator" in state:
            self.aggregator.load_state_dict(state["aggregator"])
