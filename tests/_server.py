"""Drive a strategy's server half (and a pipeline of transforms) by hand, with made-up updates.

For tests that check the server step against hand-computed numbers: `Server(strategy, x0)` binds
the strategy to a flat weight vector starting at `x0`, and `server.round(r, deltas, samples)` feeds
one round of client updates through the update pipeline (transforms, the strategy's bookkeeping,
the aggregator) and takes the server step, exactly as `Simulation.run_round` does.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from fedtorch.client import ClientUpdate, OptimizerSettings
from fedtorch.compatibility import check_composition, weighting_for
from fedtorch.params import VectorLayout
from fedtorch.pipeline import UpdatePipeline, UpdateTransform
from fedtorch.samplers import FullParticipation
from fedtorch.simulation import pipeline_context
from fedtorch.strategies.base import Strategy, StrategyContext


def flat_layout(size: int) -> VectorLayout:
    """One parameter tensor of `size` values."""
    return VectorLayout(names=("w",), shapes=(torch.Size([size]),), offsets=(0,), num_params=size, size=size)


class _Everyone(FullParticipation):
    """Every client, with an expected cohort and a report probability as the test says."""

    def __init__(self, expected_cohort: float | None, report_probability: float) -> None:
        super().__init__()
        self._expected = expected_cohort
        self._report = report_probability

    def expected_cohort_size(self) -> float:
        return float(self.num_clients) if self._expected is None else float(self._expected)

    def report_probability(self) -> float:
        return self._report

    def inclusion_probabilities(self) -> np.ndarray:
        return np.full(self.num_clients, self.expected_cohort_size() / self.num_clients)


class Server:
    """A strategy bound to its own global vector, with a pipeline of `transforms`.

    Args:
        strategy: the strategy under test.
        x0: the initial global weights (a list or a tensor); its length is the model size.
        transforms: update transforms, in order.
        num_clients: K; `client_sizes` default to 10 each.
        expected_cohort: E[m] for transforms that need it (DP's normalizer); default K.
        local_lr: the local optimizer's learning rate strategies may read (SCAFFOLD, q-FFL).
        check: run `fedtorch.compatibility.check_composition` first (refusals raise).
    """

    def __init__(
        self,
        strategy: Strategy,
        x0: Sequence[float] | torch.Tensor,
        transforms: Sequence[UpdateTransform] = (),
        num_clients: int = 10,
        client_sizes: Sequence[int] | None = None,
        expected_cohort: float | None = None,
        local_lr: float = 0.1,
        seed: int = 0,
        report_probability: float = 1.0,
        check: bool = True,
    ) -> None:
        vector = torch.as_tensor(x0, dtype=torch.float32).clone().reshape(-1)
        self.vector = vector
        self.strategy = strategy
        sizes = np.asarray(client_sizes if client_sizes is not None else [10] * num_clients, dtype=np.int64)
        layout = flat_layout(vector.numel())
        local = OptimizerSettings(name="SGD", lr=local_lr)
        transforms = list(transforms)
        sampler = _Everyone(expected_cohort, report_probability)
        sampler.setup(sizes)
        if check:
            check_composition(strategy, strategy.aggregator, transforms, sampler, local)
        strategy.setup(StrategyContext(len(sizes), sizes, layout, local, vector.device, seed), vector)
        self.pipeline = UpdatePipeline(transforms, strategy.aggregator, weighting_for(strategy, transforms), strategy)
        # The context Simulation builds, from a sampler that picks everyone (or E[m] as given).
        self.pipeline.setup(
            pipeline_context(strategy, transforms, sampler, sizes, layout, vector, seed, 100, self.pipeline)
        )

    def round(
        self,
        round_idx: int,
        deltas: Sequence[Sequence[float] | torch.Tensor],
        samples: Sequence[int] | None = None,
        clients: Sequence[int] | None = None,
        steps: int = 1,
    ) -> dict[str, float]:
        """One round fed with hand-made client deltas (client ids 0..n-1 unless given)."""
        clients = list(range(len(deltas))) if clients is None else list(clients)
        self.strategy.begin_round(round_idx, clients)
        self.pipeline.begin(round_idx, clients)
        for k, delta in zip(clients, deltas):
            n = 10 if samples is None else samples[clients.index(k)]
            update = ClientUpdate(k, torch.as_tensor(delta, dtype=torch.float32).clone(), int(n), steps)
            self.pipeline.accept(update)
        metrics = self.strategy.apply(round_idx, self.pipeline.result())
        metrics.update(self.pipeline.step_metrics())
        return metrics
