"""The strategy core shared by every algorithm: a server optimizer stepping on pseudo-gradients.

Following Reddi et al. 2021 ("Adaptive Federated Optimization") and FLSim, the server reduces the
client deltas with an `Aggregator` (the data-size-weighted mean by default), treats the negative
aggregate as a gradient, and steps a real `torch.optim` optimizer on the global weights:
SGD(lr=1) is exactly FedAvg (McMahan et al. 2017), SGD with momentum is FedAvgM, Adam is FedAdam.
The optimizer's `state_dict()` checkpoints the server state for free.

Algorithms that need more override small hooks: `client_hooks` (what the client does differently),
`client_weight` (how much an update counts), `on_update` (per-client server state), and
`apply_aggregate` (how the reduced update moves the global model); `attach` gives access to the
simulation (client sizes, trainer, data) and `evaluate` adds metrics to an evaluation round
(personalized models). One algorithm lives in one file in this package, both halves together.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import Tensor

from fedtorch.aggregators import Aggregator, WeightedMean
from fedtorch.client import ClientHooks, ClientUpdate
from fedtorch.params import VectorLayout

if TYPE_CHECKING:
    from fedtorch.simulation import Simulation

ServerOptimizerFactory = Callable[..., torch.optim.Optimizer]
log = logging.getLogger("fedtorch")


class UpdateTransform:
    """A step between "a client produced an update" and "the server reduced the updates".

    DP clipping and noise, secure-aggregation masking, compression and Byzantine attacks are
    transforms, so they compose with every strategy. `on_update` sees each client update before
    it is aggregated; `on_aggregate` sees the reduced update before the server optimizer step.
    """

    #: True when the server step must run even in a round without updates (central DP's noise).
    releases_empty_rounds: bool = False

    def setup(self, strategy: Strategy) -> None:
        """Called once with the strategy (layout, global vector, number of clients are known)."""

    def begin_round(self, round_idx: int, client_ids: Sequence[int]) -> None:
        """The round's cohort is known (secure aggregation derives its pairwise masks from it)."""

    def on_update(self, round_idx: int, update: ClientUpdate) -> ClientUpdate:
        return update

    def merge(self, group: dist.ProcessGroup | None = None) -> None:
        """Combine per-round state held by every process (distributed backend), like the aggregator."""

    def on_aggregate(self, round_idx: int, aggregate: Tensor, num_updates: int) -> Tensor:
        return aggregate

    def round_metrics(self) -> dict[str, float]:
        """Scalars to log for the round just finished (e.g. epsilon, bytes sent)."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class Strategy:
    """FedOpt: weighted-mean aggregation of client deltas + a server optimizer step.

    Args:
        server_optimizer: factory `f(params, lr=...)` for the server optimizer; default SGD.
        server_lr: the server learning rate (1.0 with SGD is FedAvg).
        aggregator: the reducer of client deltas; default the sample-weighted mean.
        weighted: weight each update by its client's number of samples (FedAvg) or uniformly.
    """

    name = "fedopt"

    def __init__(
        self,
        server_optimizer: ServerOptimizerFactory | None = None,
        server_lr: float = 1.0,
        aggregator: Aggregator | None = None,
        weighted: bool = True,
    ) -> None:
        self.server_optimizer_factory = server_optimizer or torch.optim.SGD
        self.server_lr = server_lr
        self.aggregator = aggregator or WeightedMean()
        self.weighted = weighted
        self.transforms: list[UpdateTransform] = []
        self.skipped_rounds = 0

    # -- set-up -------------------------------------------------------------------------------
    def setup(self, global_vector: Tensor, layout: VectorLayout, num_clients: int) -> None:
        """Bind the strategy to the global weights (a flat vector it updates in place)."""
        self.global_vector = global_vector
        self.layout = layout
        self.num_clients = num_clients
        # A view of the parameter segment; requires_grad is False, so it is a leaf the
        # optimizer can own, and the optimizer's in-place step updates global_vector.
        self.server_params = global_vector[: layout.num_params]
        self.server_optimizer = self.server_optimizer_factory([self.server_params], lr=self.server_lr)
        for transform in self.transforms:
            transform.setup(self)

    def attach(self, sim: Simulation) -> None:
        """Called once by the simulation after `setup`. Strategies that need more than the global
        weights (the clients' sizes, the local learning rate, client data for personalization or
        q-FFL's losses) keep a reference here; the default needs nothing."""

    # -- the round ----------------------------------------------------------------------------
    def begin_round(self, round_idx: int, client_ids: Sequence[int]) -> None:
        self.aggregator.reset(like=self.global_vector)
        for transform in self.transforms:
            transform.begin_round(round_idx, client_ids)

    def client_hooks(self, round_idx: int, client_id: int) -> ClientHooks | None:
        """Client-side behaviour for this client this round; None trains plainly."""
        return None

    def client_weight(self, update: ClientUpdate) -> float:
        return float(update.num_samples) if self.weighted else 1.0

    def accept(self, round_idx: int, update: ClientUpdate) -> None:
        """Take one client's update: transforms, then into the aggregator (streaming)."""
        for transform in self.transforms:
            update = transform.on_update(round_idx, update)
        self.on_update(round_idx, update)
        self.aggregator.add(update.delta, self.client_weight(update))

    def on_update(self, round_idx: int, update: ClientUpdate) -> None:
        """Per-client server-side bookkeeping (SCAFFOLD's control variates, ...)."""

    def merge(self, group: dist.ProcessGroup | None = None) -> None:
        """Combine the partial round state of all processes (distributed backend)."""
        self.aggregator.merge(group)
        for transform in self.transforms:
            transform.merge(group)

    def finish_round(self, round_idx: int) -> dict[str, float]:
        """Reduce the round's updates and move the global model; returns server metrics.

        A round with fewer updates than the reducer needs (none at all after Poisson sampling or
        dropouts; fewer than 2f + 3 for Krum) leaves the model and the server optimizer's state
        unchanged, as a server that waits for enough reports would; `skipped_rounds` counts them.
        """
        if self.aggregator.count == 0 and any(t.releases_empty_rounds for t in self.transforms):
            # Central DP must publish noise even when nobody took part: skipping the step would
            # reveal that the cohort was empty. The transforms turn a zero aggregate into that release.
            aggregate = torch.zeros_like(self.global_vector)
        elif self.aggregator.count < max(1, getattr(self.aggregator, "min_updates", 1)):
            return self.skip_round(round_idx)
        else:
            aggregate = self.aggregator.result().to(self.global_vector.dtype)
        for transform in self.transforms:
            aggregate = transform.on_aggregate(round_idx, aggregate, self.aggregator.count)
        self.apply_aggregate(round_idx, aggregate)
        metrics = {"update_norm": float(aggregate[: self.layout.num_params].norm())}
        if self.skipped_rounds:
            metrics["skipped_rounds"] = float(self.skipped_rounds)
        for transform in self.transforms:
            metrics.update(transform.round_metrics())
        return metrics

    def skip_round(self, round_idx: int) -> dict[str, float]:
        """No server step this round (too few updates); metrics say so."""
        self.skipped_rounds += 1
        if self.aggregator.count:
            log.warning(
                "round %d: %d client updates, %s needs at least %d: server step skipped",
                round_idx,
                self.aggregator.count,
                type(self.aggregator).__name__,
                self.aggregator.min_updates,
            )
        metrics = {"update_norm": 0.0, "skipped_rounds": float(self.skipped_rounds)}
        for transform in self.transforms:
            metrics.update(transform.round_metrics())
        return metrics

    def evaluate(self, sim: Simulation) -> dict[str, float]:
        """Extra evaluation metrics, called whenever the simulation evaluates the global model
        (personalized strategies report their per-client models here); keys are logged as is."""
        return {}

    def apply_aggregate(self, round_idx: int, aggregate: Tensor) -> None:
        """Step the server optimizer with pseudo-gradient -aggregate; buffers take the mean."""
        num_params = self.layout.num_params
        self.server_params.grad = -aggregate[:num_params]
        self.server_optimizer.step()
        self.server_params.grad = None
        if num_params < self.layout.size:
            with torch.no_grad():
                self.global_vector[num_params:] += aggregate[num_params:]

    # -- checkpointing ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "server_optimizer": self.server_optimizer.state_dict(),
            "transforms": [t.state_dict() for t in self.transforms],
            "skipped_rounds": self.skipped_rounds,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.server_optimizer.load_state_dict(state["server_optimizer"])
        self.skipped_rounds = int(state.get("skipped_rounds", 0))
        for transform, transform_state in zip(self.transforms, state.get("transforms", [])):
            transform.load_state_dict(transform_state)
