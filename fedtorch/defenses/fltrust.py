"""FLTrust (Cao, Fang, Liu and Gong, NDSS 2021, "FLTrust: Byzantine-robust Federated Learning via
Trust Bootstrapping", Algorithm 1).

The server holds a small clean root dataset and, every round, trains the current global model on
it exactly as a client would (the same local trainer), which gives its own update g_0. Each
client update g_i then gets a trust score and is rescaled to g_0's norm:

    TS_i   = ReLU(cos(g_i, g_0))                    (updates pointing away from g_0 count nothing)
    g_i'   = g_i * ||g_0|| / ||g_i||                (no update can outweigh by its size)
    update = sum_i TS_i g_i' / sum_i TS_i           (zero when no client is trusted)

Sample counts are ignored (a Byzantine client could lie about them). The root dataset is drawn
once, uniformly from the federation's (clean) training samples, from the (seed, "root_dataset")
stream, as the paper's experiments sample it from the training data (100 samples by default);
the server's batches come from the (seed, "root_batches", step) stream.

How the run provides g_0: the aggregator declares `needs_server_update`; `attach_root_dataset`
(which `fedtorch.experiment` calls once the simulation is built) draws the root dataset and binds
a `RootUpdate`, which trains the simulation's worker model on it from the current global weights
when the step is reduced (after the clients trained, before the server step). A step that starts
without a bound server update is refused in one line, before any client trains.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from fedtorch.aggregators import StackedAggregator
from fedtorch.data.base import FederatedDataset
from fedtorch.errors import OptionError, check_int
from fedtorch.runner import ClientRunner, seed_torch
from fedtorch.seeding import derive_seed, numpy_rng, torch_generator

if TYPE_CHECKING:  # only for the type of attach_root_dataset's argument (no import at run time)
    from fedtorch.simulation import Simulation

#: The server's own update for a step, from the global weights the step's clients started from.
ServerUpdate = Callable[[int], Tensor]


@dataclass(frozen=True)
class RootDataset:
    """The server's clean samples (on the simulation's device)."""

    x: Tensor
    y: Tensor

    def __len__(self) -> int:
        return len(self.y)


def draw_root_dataset(federation: FederatedDataset, size: int, seed: int) -> RootDataset:
    """`size` distinct training samples, uniformly from the (seed, "root_dataset") stream."""
    if not isinstance(federation, FederatedDataset):  # a generated or memory-mapped federation
        raise OptionError(
            "strategy.aggregator", "fltrust", "draws its root dataset from an in-memory federation (not a lazy one)"
        )
    total = len(federation.train_y)
    if size > total:
        raise OptionError("strategy.aggregator.root_size", size, f"at most the {total} training samples")
    chosen = numpy_rng(seed, "root_dataset").choice(total, size=size, replace=False)
    index = torch.as_tensor(chosen, device=federation.train_y.device)
    return RootDataset(federation.train_x[index].clone(), federation.train_y[index].clone())


class RootUpdate:
    """g_0: the local trainer run on the root dataset from the current global weights.

    Args:
        runner: the simulation's client runner (its worker model, trainer and loss; the worker
            model is free once the step's clients have trained).
        root: the root dataset.
        global_weights: the server's global weight vector (read when called, never written).
        seed: the run's root seed.
    """

    def __init__(self, runner: ClientRunner, root: RootDataset, global_weights: Tensor, seed: int) -> None:
        self.runner = runner
        self.root = RootDataset(root.x.to(runner.device), root.y.to(runner.device))
        self.indices = torch.arange(len(root), device=runner.device)
        self.global_weights = global_weights
        self.seed = int(seed)

    def __call__(self, step: int) -> Tensor:
        runner = self.runner
        seed_torch(derive_seed(self.seed, "root_torch", step), runner.device)  # as ClientRunner.run does
        update = runner.trainer.train(
            runner.flat,
            self.global_weights,
            self.root.x,
            self.root.y,
            self.indices,
            torch_generator(self.seed, "root_batches", step),
            runner.loss_fn,
            client_id=-1,
        )
        return update.delta.detach().clone()


class FLTrust(StackedAggregator):
    """Trust-weighted mean of the updates rescaled to the server's own update (see the module).

    Args:
        root_size: samples in the server's root dataset (the paper uses 100); required.
    """

    needs_server_update = True

    def __init__(self, root_size: int = 100) -> None:
        self.root_size = check_int(
            "strategy.aggregator.root_size",
            root_size,
            1,
            extra=": FLTrust needs a root dataset (the server's own clean samples; Cao et al. use 100)",
        )
        self.server_update: ServerUpdate | None = None
        self.step = 0
        self.trust: Tensor | None = None
        self._metrics: dict[str, float] = {}
        super().__init__()

    def bind_server_update(self, server_update: ServerUpdate) -> None:
        """Give the aggregator the server's update (normally done by `attach_root_dataset`)."""
        self.server_update = server_update

    def begin_step(self, step: int) -> None:
        if self.server_update is None:
            raise OptionError(
                "strategy.aggregator",
                "FLTrust",
                "FLTrust needs the server's update on a root dataset: run it through fedtorch.experiment "
                "(strategy.aggregator.root_size) or call fedtorch.defenses.attach_root_dataset(simulation) first",
            )
        self.step = int(step)

    def combine(self, stack: Tensor, reference: Tensor) -> Tensor:
        """FLTrust's rule for the (n, d) client updates and the server's update `reference`."""
        x = stack.to(torch.float64)
        g0 = reference.to(x)
        g0_norm = torch.linalg.vector_norm(g0)
        norms = torch.linalg.vector_norm(x, dim=1)
        cosine = (x @ g0) / (norms * g0_norm).clamp(min=1e-300)
        self.trust = torch.relu(cosine)
        total = self.trust.sum()
        scaled = x * (g0_norm / norms.clamp(min=1e-300)).unsqueeze(1)
        aggregate = (self.trust @ scaled) / total if float(total) > 0 else torch.zeros_like(g0)
        self._metrics = {
            "defense/trust_mean": float(self.trust.mean()),
            "defense/trusted_clients": float((self.trust > 0).sum()),
            "defense/server_update_norm": float(g0_norm),
        }
        return aggregate.to(stack.dtype)

    def reduce(self, stack: Tensor, weights: Tensor) -> Tensor:
        assert self.server_update is not None, "begin_step() refuses a step without a server update"
        return self.combine(stack, self.server_update(self.step))

    def step_metrics(self) -> dict[str, float]:
        return dict(self._metrics)


def attach_root_dataset(simulation: Simulation, federation: FederatedDataset | None = None) -> RootDataset | None:
    """Draw the root dataset of the simulation's server-update reducer (FLTrust) and bind its `RootUpdate`.

    `federation` is the clean federation to draw from (default: the simulation's; pass the clean one
    when an attack poisoned the training data). Returns the root dataset, or None when the
    simulation's reducer needs none.
    """
    aggregator = simulation.strategy.aggregator
    if not aggregator.needs_server_update:
        return None
    source = federation if federation is not None else simulation.federation
    root = draw_root_dataset(source, aggregator.root_size, simulation.seed)  # type: ignore[attr-defined]
    update = RootUpdate(simulation.runner, root, simulation.global_vector, simulation.seed)
    aggregator.bind_server_update(update)  # type: ignore[attr-defined]
    return root
