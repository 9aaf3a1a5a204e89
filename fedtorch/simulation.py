"""The server's round loop: sample -> local training -> aggregate -> evaluate -> callbacks.

`Simulation` owns the global weights (one flat vector), a single worker model whose parameters
are views into its own flat vector (loaded in place for every client: no deepcopy), and the
random streams, all derived from the root seed. The loop itself does no logging: callbacks do.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from fedtorch.callbacks.base import Callback
from fedtorch.checkpoint import kill_point, rng_state, set_rng_state
from fedtorch.client import ClientUpdate, LocalTrainer, default_loss
from fedtorch.data.base import FederatedDataset
from fedtorch.evaluation import evaluate
from fedtorch.params import FlatModel
from fedtorch.samplers import ClientSampler, Cohort
from fedtorch.seeding import derive_seed, numpy_rng, torch_generator
from fedtorch.strategies.base import Strategy, UpdateTransform


def _seed_torch(seed: int, device: torch.device) -> None:
    """`torch.manual_seed` for the streams local training on `device` draws from: the CPU one and
    the device's. (`torch.manual_seed` also queues the seed for every accelerator type not yet
    initialized, formatting a stack trace each time: ~0.3 ms per client on a CPU-only machine.)"""
    torch.default_generator.manual_seed(seed)
    if device.type == "cuda":
        with torch.cuda.device(device):
            torch.cuda.manual_seed(seed)
    elif device.type != "cpu":
        torch.manual_seed(seed)


@dataclass
class RoundAccumulator:
    """Training statistics of one round, summed as tensors (one host sync per round)."""

    loss_sum: Tensor
    correct: Tensor
    samples: int = 0
    steps: int = 0
    clients: int = 0

    def add(self, update: ClientUpdate) -> None:
        self.loss_sum += update.metrics["loss_sum"].to(self.loss_sum)
        if "correct" in update.metrics:
            self.correct += update.metrics["correct"].to(self.correct)
        self.samples += int(update.metrics["samples_seen"])
        self.steps += update.num_steps
        self.clients += 1


@dataclass
class SimulationState:
    """What a simulation carries between rounds (and what a checkpoint must hold)."""

    round: int = 0
    history: list[dict[str, float]] = field(default_factory=list)


class Simulation:
    """One federated experiment.

    Args:
        federation: the clients' data and the central test set.
        model: a freshly built module; it becomes the worker and evaluation model.
        strategy: server logic (aggregation, server optimizer, client hooks).
        sampler: which clients take part in each round.
        trainer: local training on one client.
        rounds: number of communication rounds.
        seed: the root seed from which every random stream is derived.
        device: where the model and the (resident) data live.
        eval_every: evaluate the global model every this many rounds (and after the last).
        backend: who trains the round's clients (sequential, vectorized, distributed); default
            sequential.
        transforms: update transforms (DP, compression, attacks) in the order they apply.
        callbacks: observers (TensorBoard, metrics file, progress bar, ...).
        loss_fn: training and evaluation loss; default from the task.
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
        backend: Any = None,
        transforms: Sequence[UpdateTransform] = (),
        callbacks: Sequence[Callback] = (),
        loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
    ) -> None:
        self.device = torch.device(device)
        self.federation = federation.to(self.device)
        self.model = model.to(self.device)
        self.flat = FlatModel(self.model)
        self.global_vector = self.flat.vector.detach().clone()
        self.strategy = strategy
        self.sampler = sampler
        self.trainer = trainer
        self.rounds = rounds
        self.seed = seed
        self.eval_every = eval_every
        self.loss_fn = loss_fn or default_loss(federation.num_classes)
        self.callbacks = list(callbacks)
        self.state = SimulationState()
        self.stop_reason: str | None = None

        from fedtorch.backends.sequential import SequentialBackend  # local: backends import this module

        self.backend = backend or SequentialBackend()
        self.strategy.transforms = list(transforms)
        self.sampler.setup(self.federation.client_sizes())
        self.strategy.setup(self.global_vector, self.flat.layout, self.federation.num_clients)
        self.strategy.attach(self)
        self._cohort: tuple[int, Cohort] | None = None  # (round, its cohort) from the sampler
        self.backend.setup(self)

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

    # -- one client, shared by every backend --------------------------------------------------
    def train_client(self, round_idx: int, client_id: int, max_steps: int | None = None) -> ClientUpdate:
        """Local training of `client_id` from the current global weights (not yet aggregated).

        A straggler's step budget from the sampler (`client_max_steps`) caps `max_steps`.
        """
        fed = self.federation
        budget = self.client_max_steps(round_idx, client_id)
        if budget is not None:
            max_steps = budget if max_steps is None else min(max_steps, budget)
        # Dropout and other stochastic layers draw from the global torch stream: pin it to
        # (seed, round, client) so results do not depend on the order clients are trained in.
        _seed_torch(derive_seed(self.seed, "client_torch", round_idx, client_id), self.device)
        return self.trainer.train(
            self.flat,
            self.global_vector,
            fed.train_x,
            fed.train_y,
            fed.client_indices[client_id],
            torch_generator(self.seed, "batches", round_idx, client_id),
            self.loss_fn,
            client_id=client_id,
            hooks=self.strategy.client_hooks(round_idx, client_id),
            max_steps=max_steps,
        )

    # -- the loop ------------------------------------------------------------------------------
    def sample_clients(self, round_idx: int) -> np.ndarray:
        """The clients that train and report in round `round_idx` (after the sampler's dropouts).

        The sampler's cohort (with the stragglers' shares of work) is kept for `client_max_steps`.
        """
        rng = numpy_rng(self.seed, "sampler", round_idx)
        if hasattr(self.sampler, "cohort"):
            cohort = self.sampler.cohort(round_idx, rng)
        else:  # a duck-typed sampler with only `sample`
            ids = np.sort(np.asarray(self.sampler.sample(round_idx, rng), dtype=np.int64))
            cohort = Cohort(ids=ids, work=np.ones(len(ids)), sampled=len(ids))
        self._cohort = (round_idx, cohort)
        return cohort.ids

    def client_max_steps(self, round_idx: int, client_id: int) -> int | None:
        """A straggler's step budget in `round_idx`: max(1, floor(work * its full local steps));
        None for a client that does all its work. Backends that plan steps ahead (vectorized) ask here."""
        if self._cohort is None or self._cohort[0] != round_idx:
            return None
        cohort = self._cohort[1]
        position = np.searchsorted(cohort.ids, client_id)
        if position >= len(cohort.ids) or cohort.ids[position] != client_id or cohort.work[position] >= 1.0:
            return None
        full = self.trainer.num_steps(len(self.federation.client_indices[client_id]))
        return max(1, int(math.floor(cohort.work[position] * full)))

    def run_round(self, round_idx: int) -> dict[str, float]:
        """Run round `round_idx` (1-based) and return its metrics."""
        start = time.perf_counter()
        client_ids = self.sample_clients(round_idx)
        self.strategy.begin_round(round_idx, client_ids)
        stats = RoundAccumulator(
            loss_sum=torch.zeros((), device=self.device, dtype=torch.float64),
            correct=torch.zeros((), device=self.device, dtype=torch.int64),
        )
        if len(client_ids) > 0:  # Poisson sampling or dropouts can leave a round without clients
            self.backend.train_round(self, round_idx, client_ids, stats)
        kill_point("round", round_idx)  # crash-test hook (no-op unless $FEDTORCH_KILL_AT asks for it)
        server_metrics = self.strategy.finish_round(round_idx)

        metrics: dict[str, float] = {}
        if stats.samples > 0:
            metrics["train/loss"] = float(stats.loss_sum) / stats.samples
            if self.federation.is_classification:
                metrics["train/accuracy"] = float(stats.correct) / stats.samples
        metrics["round/clients"] = float(stats.clients)
        metrics["round/samples"] = float(stats.samples)
        metrics["round/local_steps"] = float(stats.steps)
        if getattr(self.sampler, "heterogeneous", False) and self._cohort is not None:
            metrics["round/dropped"] = float(self._cohort[1].dropped)
            metrics["round/stragglers"] = float(self._cohort[1].stragglers)
        # Bare strategy keys go under server/; transforms name their own section (privacy/, comm/).
        metrics.update({(k if "/" in k else f"server/{k}"): v for k, v in server_metrics.items()})
        if round_idx % self.eval_every == 0 or round_idx == self.rounds:
            metrics.update({f"eval/{k}": v for k, v in self.evaluate().items()})
            # Strategies with per-client models (Ditto, FedPer) evaluate those too.
            metrics.update({f"eval/{k}": v for k, v in self.strategy.evaluate(self).items()})
        metrics["round/seconds"] = time.perf_counter() - start
        return metrics

    def evaluate(self) -> dict[str, float]:
        """Loss and accuracy of the global model on the central test set, and, where clients have
        their own test splits, the spread of per-client accuracy (mean, std, worst 10%)."""
        self.flat.load(self.global_vector)
        fed = self.federation
        groups = self._test_groups()
        return evaluate(
            self.model, fed.test_x, fed.test_y, self.loss_fn, groups=groups, num_groups=fed.num_clients
        )

    def _test_groups(self) -> Tensor | None:
        """Client id of every central test sample, when the test set is the union of client splits."""
        if not hasattr(self, "_test_group_cache"):
            fed = self.federation
            groups = None
            if fed.client_test_indices is not None:
                groups = torch.full((len(fed.test_y),), -1, dtype=torch.int64, device=self.device)
                for k, ix in enumerate(fed.client_test_indices):
                    groups[ix] = k
                if bool((groups < 0).any()):
                    groups = None  # some test samples belong to no client: no per-client view
            self._test_group_cache = groups
        return self._test_group_cache

    def run(self) -> dict[str, Any]:
        """Run the remaining rounds; returns the summary (final metrics and how it ran)."""
        wall_start = time.perf_counter()
        for callback in self.callbacks:
            callback.on_run_start(self)
        while self.state.round < self.rounds and self.stop_reason is None:
            round_idx = self.state.round + 1
            metrics = self.run_round(round_idx)
            self.state.round = round_idx
            self.state.history.append({"round": round_idx, **metrics})
            if not all(math.isfinite(v) for v in metrics.values()) or not bool(
                torch.isfinite(self.global_vector).all()
            ):
                self.stop_reason = "diverged"
            for callback in self.callbacks:
                callback.on_round_end(self, round_idx, metrics)
            # The processes of a distributed run stop together: rank 0's decision binds them all.
            agree_stop = getattr(self.backend, "agree_stop", None)
            if agree_stop is not None:
                self.stop_reason = agree_stop(self.stop_reason)
        summary = self.summary(time.perf_counter() - wall_start)
        for callback in self.callbacks:
            callback.on_run_end(self, summary)
        return summary

    def summary(self, wall_seconds: float) -> dict[str, Any]:
        """Final metrics (last evaluated values) and how the run ran."""
        final: dict[str, float] = {}
        for row in self.state.history:
            final.update({k: v for k, v in row.items() if k != "round"})
        return {
            "metrics": final,
            "rounds": self.state.round,
            "wall_seconds": wall_seconds,
            "device": str(self.device),
            "backend": getattr(self.backend, "name", type(self.backend).__name__),
            "world_size": getattr(self.backend, "world_size", 1),
            "num_clients": self.federation.num_clients,
            "num_parameters": self.flat.layout.num_params,
            "diverged": self.stop_reason == "diverged",
            "diverged_round": self.state.round if self.stop_reason == "diverged" else None,
            "stop_reason": self.stop_reason,
        }

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

        The global model, the strategy (server optimizer, per-client state, transforms), the
        sampler, stateful backends, trainers and callbacks, the global random streams, the round
        and the metrics history. Per-client and per-round streams need nothing: they derive from
        (seed, round, client).
        """
        state: dict[str, Any] = {
            "round": self.state.round,
            "history": [dict(row) for row in self.state.history],
            "global_vector": self.global_vector.detach().cpu().clone(),
            "strategy": self.strategy.state_dict(),
            "sampler": self.sampler.state_dict(),
            "rng": rng_state(),
        }
        for name in ("backend", "trainer"):
            component = getattr(self, name)
            if hasattr(component, "state_dict"):
                state[name] = component.state_dict()
        callbacks = {key: cb.state_dict() for key, cb in self._callback_keys() if hasattr(cb, "state_dict")}
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
        self.sampler.load_state_dict(state["sampler"])
        for name in ("backend", "trainer"):
            component = getattr(self, name)
            if name in state and hasattr(component, "load_state_dict"):
                component.load_state_dict(state[name])
        saved_callbacks = state.get("callbacks", {})
        for key, callback in self._callback_keys():
            if key in saved_callbacks and hasattr(callback, "load_state_dict"):
                callback.load_state_dict(saved_callbacks[key])
        self.state = SimulationState(round=int(state["round"]), history=[dict(row) for row in state["history"]])
        self.stop_reason = None
        set_rng_state(state["rng"])
