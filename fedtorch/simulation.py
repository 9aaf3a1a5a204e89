"""The server's round loop: it owns the protocol of one synchronous round.

    cohort  = sampler.cohort(round, rng(seed, "sampler", round))        # who trains, how much
    payload = strategy.configure_round(round)                           # e.g. SCAFFOLD's c
    pipeline.begin(round, cohort)
    for update in backend.train(jobs(cohort), global_weights, payload): # client halves
        pipeline.accept(update)                                         # transforms -> aggregator
    backend.reduce([pipeline, strategy, client state, stats])           # across processes
    metrics = strategy.apply(round, pipeline.result())                  # server optimizer step
    if round % eval_every == 0: metrics |= evaluate(global_weights)
    for cb in callbacks: cb.on_round_end(run, round, metrics)

`Simulation` owns the global weights (one flat vector), the update pipeline, the sampler and the
callbacks; the `ClientRunner` owns the client side (data, worker model, trainer, client state).
Every random stream derives from the root seed. The loop itself does no logging: callbacks do.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from fedtorch.backends.base import Backend
from fedtorch.backends.sequential import SequentialBackend
from fedtorch.callbacks.base import Callback
from fedtorch.checkpoint.rng import rng_state, set_rng_state
from fedtorch.client import ClientUpdate, LocalTrainer
from fedtorch.client_state import ClientStateStore
from fedtorch.compatibility import check_composition, uses_sample_weights, weighting_for
from fedtorch.data.base import FederatedDataset
from fedtorch.evaluation import evaluate, evaluate_per_client
from fedtorch.pipeline import PipelineContext, StepFailed, UpdatePipeline, UpdateTransform
from fedtorch.privacy.accounting import sampling_of
from fedtorch.runner import ClientJob, ClientRunner
from fedtorch.samplers import ClientSampler, Cohort
from fedtorch.seeding import numpy_rng
from fedtorch.strategies.base import Strategy, StrategyContext

log = logging.getLogger("fedtorch")


@dataclass
class RoundStats:
    """Training statistics of one round, summed as tensors (one host sync per round)."""

    loss_sum: Tensor
    correct: Tensor
    samples: int = 0
    steps: int = 0
    clients: int = 0
    failures: int = 0  # processes whose share of the round failed (a StepFailed), summed by merge

    @classmethod
    def zeros(cls, device: torch.device) -> RoundStats:
        return cls(
            loss_sum=torch.zeros((), device=device, dtype=torch.float64),
            correct=torch.zeros((), device=device, dtype=torch.int64),
        )

    def add(self, update: ClientUpdate) -> None:
        self.loss_sum += update.metrics["loss_sum"].to(self.loss_sum)
        if "correct" in update.metrics:
            self.correct += update.metrics["correct"].to(self.correct)
        self.samples += int(update.metrics["samples_seen"])
        self.steps += update.num_steps
        self.clients += 1

    def merge(self, group: dist.ProcessGroup | None = None) -> None:
        """Sum over processes (one small all_reduce)."""
        counts = torch.tensor(
            [self.samples, self.steps, self.clients], dtype=torch.float64, device=self.loss_sum.device
        )
        packed = torch.cat([self.loss_sum.reshape(1).double(), self.correct.reshape(1).double(), counts])
        dist.all_reduce(packed, group=group)
        self.loss_sum.copy_(packed[0])
        self.correct.copy_(packed[1].round())
        self.samples, self.steps, self.clients = (int(v) for v in packed[2:].round().tolist())


@dataclass
class SimulationState:
    """What a simulation carries between rounds (and what a checkpoint must hold)."""

    round: int = 0
    history: list[dict[str, float]] = field(default_factory=list)


def expected_total_weight(
    sampler: ClientSampler, client_sizes: np.ndarray, sample_weights: bool, report_probability: float
) -> float:
    """E[sum of the aggregation weights of a round's reports] = sum_k P(k reports) w_k."""
    if not sample_weights:
        return sampler.expected_cohort_size() * report_probability
    return float(sampler.inclusion_probabilities() @ client_sizes.astype(np.float64)) * report_probability


def pipeline_context(
    strategy: Strategy,
    transforms: Sequence[UpdateTransform],
    sampler: ClientSampler,
    sizes: np.ndarray,
    layout: Any,
    global_vector: Tensor,
    seed: int,
    rounds: int,
    pipeline: UpdatePipeline,
) -> PipelineContext:
    """What the transforms may know about the run, from the (set-up) sampler and the strategy."""
    report = sampler.report_probability() * math.prod(t.report_probability for t in transforms)
    try:
        sampling: Any = sampling_of(sampler)
    except ValueError as error:  # only a privacy accountant needs it, and says so
        sampling = str(error)
    total = None
    if not strategy.sets_weights:
        total = expected_total_weight(sampler, sizes, uses_sample_weights(strategy, transforms), report)
    return PipelineContext(
        layout=layout,
        num_clients=len(sizes),
        client_sizes=sizes,
        device=global_vector.device,
        dtype=global_vector.dtype,
        seed=seed,
        rounds=rounds,
        expected_cohort=sampler.expected_cohort_size(),
        report_probability=report,
        weighting=pipeline.weighting,
        expected_total_weight=total,
        server_lr=strategy.server_lr,
        sampling=sampling,
    )


class Simulation:
    """One federated experiment.

    Args:
        federation: the clients' data and the central test set.
        model: a freshly built module; it becomes the worker and evaluation model.
        strategy: the algorithm (server half and client half, aggregator included).
        sampler: which clients take part in each round.
        trainer: local training on one client.
        rounds: number of communication rounds.
        seed: the root seed from which every random stream is derived.
        device: where the model and the (resident) data live.
        eval_every: evaluate the global model every this many rounds (and after the last).
        backend: who trains the round's clients (sequential, vectorized, distributed); default
            sequential.
        transforms: update transforms (attacks, compression, DP, secure aggregation, the byte
            meter) in the order they apply, client side first.
        callbacks: observers (TensorBoard, metrics file, progress bar, checkpoints, ...).
        loss_fn: training and evaluation loss; default from the task.
        names: the config options the components were chosen by (for one-line refusals).
        eval_train: also evaluate the global model on the clients' training data at every
            evaluation (`eval/train_loss`, `eval/train_accuracy`): the training objective
            sum_k n_k F_k(w) / n that optimization papers plot (FedProx's "training loss"), unlike
            `train/loss`, the clients' minibatch loss during local training.
        eval_train_max_samples: evaluate on a fixed subset of at most this many training samples
            (drawn once from a stream of its own, independent of the seed); None: all of them.
    """

    def __init__(
        self,
        federation: FederatedDataset,
        model: nn.Module,
        strategy: Strategy,
        sampler: ClientSampler,
        trainer: LocalTrainer,
        rounds: int,
        seed: int = 0,
        device: torch.device | str = "cpu",
        eval_every: int = 1,
        backend: Backend | None = None,
        transforms: Sequence[UpdateTransform] = (),
        callbacks: Sequence[Callback] = (),
        loss_fn: Callable[..., Tensor] | None = None,
        names: Mapping[str, Any] | None = None,
        eval_train: bool = False,
        eval_train_max_samples: int | None = None,
    ) -> None:
        self.device = torch.device(device)
        self.runner = ClientRunner(federation, model, trainer, strategy, seed, self.device, loss_fn, ClientStateStore())
        self.federation = self.runner.federation
        self.model = self.runner.model
        self.flat = self.runner.flat
        self.global_vector = self.flat.vector.detach().clone()
        self.strategy = strategy
        self.sampler = sampler
        self.trainer = trainer
        self.rounds = rounds
        self.seed = seed
        self.eval_every = eval_every
        self.loss_fn = self.runner.loss_fn
        self.callbacks = list(callbacks)
        self.backend = backend or SequentialBackend()
        self.state = SimulationState()
        self.stop_reason: str | None = None
        self.stop_message: str | None = None

        transforms = list(transforms)
        sizes = self.runner.client_sizes()
        sampler.setup(sizes)
        check_composition(strategy, strategy.aggregator, transforms, sampler, self.runner.optimizer, names)
        layout = self.flat.layout
        strategy.setup(
            StrategyContext(sampler.num_clients, sizes, layout, self.runner.optimizer, self.device, seed),
            self.global_vector,
        )
        self.pipeline = UpdatePipeline(transforms, strategy.aggregator, weighting_for(strategy, transforms), strategy)
        self.pipeline.setup(
            pipeline_context(
                strategy, transforms, sampler, sizes, layout, self.global_vector, seed, rounds, self.pipeline
            )
        )
        self.backend.setup(self.runner)
        self.backend.broadcast(self.global_vector)
        self._train_eval_index = self._training_subset(eval_max=eval_train_max_samples) if eval_train else None

    def _training_subset(self, eval_max: int | None) -> Tensor:
        """Positions of the training samples the training objective is evaluated on (every client's
        samples, or a fixed uniform subset of them: every sample counts once, so the loss is the
        sample-weighted mean over clients)."""
        owned = torch.cat([ix.cpu() for ix in self.federation.client_indices]) if self.federation.num_clients else None
        if owned is None or len(owned) == 0:
            return torch.zeros(0, dtype=torch.int64, device=self.device)
        owned = torch.sort(owned).values
        if eval_max is not None and eval_max < len(owned):
            pick = np.sort(numpy_rng(0, "eval_train_subset").choice(len(owned), size=eval_max, replace=False))
            owned = owned[torch.from_numpy(pick)]
        return owned.to(self.device)

    # -- what callbacks read (fedtorch.callbacks.base.RunView) ---------------------------------
    @property
    def round(self) -> int:
        return self.state.round

    @property
    def history(self) -> list[dict[str, float]]:
        return self.state.history

    def request_stop(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason

    # -- the round -------------------------------------------------------------------------------
    def sample(self, round_idx: int) -> Cohort:
        """The clients that train and report in round `round_idx` (after the sampler's dropouts)."""
        return self.sampler.cohort(round_idx, numpy_rng(self.seed, "sampler", round_idx))

    def jobs(self, round_idx: int, cohort: Cohort) -> list[ClientJob]:
        """The cohort as client jobs; a straggler's budget is max(1, floor(work * its full local steps))."""
        sizes = self.runner.client_sizes()
        jobs = []
        for client, work in zip(cohort.ids.tolist(), cohort.work.tolist()):
            budget = None
            if work < 1.0:
                budget = max(1, int(math.floor(work * self.trainer.num_steps(int(sizes[client])))))
            jobs.append(ClientJob(client_id=int(client), round=round_idx, max_steps=budget))
        return jobs

    def train_client(self, round_idx: int, client_id: int, max_steps: int | None = None) -> ClientUpdate:
        """One client's turn from the current global weights, as round `round_idx` would train it
        (not aggregated): for tests and notebooks. `max_steps` caps its local steps."""
        job = ClientJob(client_id=int(client_id), round=round_idx, max_steps=max_steps)
        return self.runner.run(job, self.global_vector, self.strategy.configure_round(round_idx))

    def run_round(self, round_idx: int) -> dict[str, float]:
        """Run round `round_idx` (1-based) and return its metrics."""
        start = time.perf_counter()
        cohort = self.sample(round_idx)
        payload = self.strategy.configure_round(round_idx)
        download = self.global_vector.numel() * self.global_vector.element_size()
        download += sum(t.numel() * t.element_size() for t in payload.values())
        self.strategy.begin_round(round_idx, cohort.ids)
        self.pipeline.begin(round_idx, cohort.ids, download_bytes=download)
        stats = RoundStats.zeros(self.device)
        failure: StepFailed | None = None
        try:
            for update in self.backend.train(self.jobs(round_idx, cohort), self.global_vector, payload):
                stats.add(update)
                self.pipeline.accept(update)
        except StepFailed as error:
            # Under the distributed backend only this process knows: the others must not wait for
            # it in the reduce, so the failure travels with the round's statistics.
            failure, stats.failures = error, 1
        self.backend.reduce([self.pipeline, self.strategy, self.runner.state, stats])
        if stats.failures:
            raise failure or StepFailed(f"round {round_idx} failed in another process")
        aggregate = self.pipeline.result()
        if aggregate is None and not self.pipeline.aborted and self.pipeline.count:
            log.warning(
                "round %d: %d client updates, %s needs at least %d: server step skipped",
                round_idx,
                self.pipeline.count,
                type(self.strategy.aggregator).__name__,
                self.strategy.aggregator.min_updates,
            )
        server_metrics = self.strategy.apply(round_idx, aggregate)

        metrics: dict[str, float] = {}
        if stats.samples > 0:
            metrics["train/loss"] = float(stats.loss_sum) / stats.samples
            if self.federation.is_classification:
                metrics["train/accuracy"] = float(stats.correct) / stats.samples
        metrics["round/clients"] = float(stats.clients)
        metrics["round/samples"] = float(stats.samples)
        metrics["round/local_steps"] = float(stats.steps)
        if self.sampler.heterogeneous:
            metrics["round/dropped"] = float(cohort.dropped)
            metrics["round/stragglers"] = float(cohort.stragglers)
        # Bare strategy keys go under server/; transforms name their own section (privacy/, comm/).
        metrics.update({(k if "/" in k else f"server/{k}"): v for k, v in server_metrics.items()})
        metrics.update(self.pipeline.step_metrics())
        if round_idx % self.eval_every == 0 or round_idx == self.rounds:
            metrics.update(self.evaluate())
        metrics["round/seconds"] = time.perf_counter() - start
        return metrics

    # -- evaluation --------------------------------------------------------------------------------
    def evaluate(self) -> dict[str, float]:
        """The global model on the central test set (and, where clients have their own test splits,
        the spread of per-client accuracy), personalized models on their clients' splits, and the
        transforms' model metrics (a backdoor's success rate)."""
        self.flat.load(self.global_vector)
        fed = self.federation
        metrics = {
            f"eval/{k}": v
            for k, v in evaluate(
                self.model, fed.test_x, fed.test_y, self.loss_fn, groups=self._test_groups(), num_groups=fed.num_clients
            ).items()
        }
        if self._train_eval_index is not None and len(self._train_eval_index):
            ix = self._train_eval_index
            train = evaluate(self.model, fed.train_x[ix], fed.train_y[ix], self.loss_fn)
            metrics.update({f"eval/train_{k}": v for k, v in train.items()})
        if self.strategy.personalized and fed.client_test_indices is not None:
            store = self.runner.state
            personal = evaluate_per_client(
                self.flat,
                fed.test_x,
                fed.test_y,
                fed.client_test_indices,
                lambda k: self.strategy.personal_vector(k, self.global_vector, store),
                self.loss_fn,
                fed.is_classification,
                prefix="personal",
            )
            metrics.update({f"eval/{k}": v for k, v in personal.items()})
        evaluators = [t for t in self.pipeline.transforms if t.evaluates_model]
        if evaluators:
            self.flat.load(self.global_vector)
            for transform in evaluators:
                metrics.update(transform.evaluate_model(self.model))
        return metrics

    def _test_groups(self) -> Tensor | None:
        """Client id of every central test sample (-1 for a sample of no client), when clients have
        their own test splits: per-client metrics are over each client's own samples."""
        if not hasattr(self, "_test_group_cache"):
            fed = self.federation
            groups = None
            if fed.client_test_indices is not None:
                groups = torch.full((len(fed.test_y),), -1, dtype=torch.int64, device=self.device)
                for k, ix in enumerate(fed.client_test_indices):
                    groups[ix] = k
            self._test_group_cache = groups
        return self._test_group_cache

    # -- the run ---------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Run the remaining rounds; returns the summary (final metrics and how it ran)."""
        wall_start = time.perf_counter()
        for callback in self.callbacks:
            callback.on_run_start(self)
        while self.state.round < self.rounds and self.stop_reason is None:
            round_idx = self.state.round + 1
            for callback in self.callbacks:
                callback.on_round_start(self, round_idx)
            # The processes of a distributed run stop together: rank 0's decision binds them all.
            self.stop_reason = self.backend.agree_stop(self.stop_reason)
            if self.stop_reason is not None:
                break
            try:
                metrics = self.run_round(round_idx)
            except StepFailed as error:
                self.stop_reason, self.stop_message = error.reason, str(error)
                log.error("round %d failed: %s", round_idx, error)
                break
            self.state.round = round_idx
            self.state.history.append({"round": round_idx, **metrics})
            if not all(math.isfinite(v) for v in metrics.values()) or not bool(
                torch.isfinite(self.global_vector).all()
            ):
                self.stop_reason = "diverged"
            for callback in self.callbacks:
                callback.on_round_end(self, round_idx, metrics)
            self.stop_reason = self.backend.agree_stop(self.stop_reason)
        summary = self.summary(time.perf_counter() - wall_start)
        for callback in self.callbacks:
            callback.on_run_end(self, summary)
        return summary

    @property
    def failed(self) -> bool:
        """The run stopped on an error of its own (divergence, a failed step), not by plan."""
        return self.stop_reason == "diverged" or self.stop_message is not None

    def summary(self, wall_seconds: float) -> dict[str, Any]:
        """Final metrics (last evaluated values) and how the run ran."""
        final: dict[str, float] = {}
        for row in self.state.history:
            final.update({k: v for k, v in row.items() if k != "round"})
        summary = {
            "metrics": final,
            "rounds": self.state.round,
            "wall_seconds": wall_seconds,
            "device": str(self.device),
            "backend": self.backend.name,
            "world_size": self.backend.world_size,
            "num_clients": self.federation.num_clients,
            "num_parameters": self.flat.layout.num_params,
            "diverged": self.stop_reason == "diverged",
            "diverged_round": self.state.round if self.stop_reason == "diverged" else None,
            "stop_reason": self.stop_reason,
        }
        if self.stop_message is not None:
            summary["message"] = self.stop_message
        return summary

    def global_state_dict(self) -> dict[str, Tensor]:
        """The global model as a `state_dict` (cloned, on the CPU)."""
        self.flat.load(self.global_vector)
        return {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}

    # -- checkpointing ------------------------------------------------------------------------
    def _callback_keys(self) -> list[tuple[str, Callback]]:
        """Callbacks keyed by class name (numbered when repeated), stable when others are added or removed."""
        seen: dict[str, int] = {}
        keyed = []
        for callback in self.callbacks:
            name = type(callback).__name__
            seen[name] = seen.get(name, 0) + 1
            keyed.append((name if seen[name] == 1 else f"{name}#{seen[name]}", callback))
        return keyed

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly after the last finished round.

        The global model, the strategy (server optimizer, its state), the per-client state, the
        pipeline's transforms (accountants, residuals), the sampler, stateful trainers and
        callbacks, the global random streams, the round, the metrics history and a planned stop
        (a spent privacy budget stays spent). Per-client and per-round streams need nothing: they
        derive from (seed, round, client).
        """
        state: dict[str, Any] = {
            "round": self.state.round,
            "history": [dict(row) for row in self.state.history],
            "global_vector": self.global_vector.detach().cpu().clone(),
            "strategy": self.strategy.state_dict(),
            "client_state": self.runner.state.state_dict(),
            "pipeline": self.pipeline.state_dict(),
            "sampler": self.sampler.state_dict(),
            "rng": rng_state(),
            "stop_reason": None if self.failed else self.stop_reason,
        }
        if hasattr(self.trainer, "state_dict"):
            state["trainer"] = self.trainer.state_dict()
        callbacks = {key: cb.state_dict() for key, cb in self._callback_keys()}
        state["callbacks"] = {key: value for key, value in callbacks.items() if value}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore `state_dict()` output into this (freshly built, identically configured) simulation."""
        vector = state["global_vector"]
        if vector.shape != self.global_vector.shape:
            raise ValueError(
                f"checkpoint model has {vector.numel()} values, this model {self.global_vector.numel()}: "
                "not the same model"
            )
        with torch.no_grad():
            # In place: the strategy's server optimizer owns views of this vector.
            self.global_vector.copy_(vector)
        self.strategy.load_state_dict(state["strategy"])
        self.runner.state.load_state_dict(state.get("client_state", {}))
        self.pipeline.load_state_dict(state.get("pipeline", {}))
        self.sampler.load_state_dict(state["sampler"])
        if "trainer" in state and hasattr(self.trainer, "load_state_dict"):
            self.trainer.load_state_dict(state["trainer"])
        saved_callbacks = state.get("callbacks", {})
        for key, callback in self._callback_keys():
            if key in saved_callbacks:
                callback.load_state_dict(saved_callbacks[key])
        self.state = SimulationState(round=int(state["round"]), history=[dict(row) for row in state["history"]])
        self.stop_reason = state.get("stop_reason")
        self.stop_message = None
        set_rng_state(state["rng"])
