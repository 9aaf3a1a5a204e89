"""Pre-aggregation: a step that turns the round's updates into new vectors before a robust reducer.

Robust reducers (median, Krum, trimmed mean, geometric median) are built for identically
distributed honest updates; under heterogeneous (non-IID) clients the honest updates themselves
are spread out, the reducers keep one client's view or a coordinate-wise compromise, and lose
accuracy even without an attack (Karimireddy, He and Jaggi, ICLR 2022). A pre-aggregation step
first mixes the updates, so that the reducer sees vectors whose honest spread is smaller:
bucketing averages random groups of s (`fedtorch.defenses.bucketing`), nearest-neighbour mixing
replaces each update by the mean of its closest ones (`fedtorch.defenses.nnm`).

`PreAggregation` wraps any stacked reducer: `mix(stack, weights)` gives the new (stack, weights),
the inner reducer's `reduce` then gives the result. The wrapper forwards the inner reducer's
set-up, per-step hook, metrics, state and declarations.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from fedtorch.aggregators import Aggregator, StackedAggregator
from fedtorch.errors import OptionError


class PreAggregation(StackedAggregator):
    """Base of the wrappers: `mix` the (n, d) stack, then the inner reducer.

    Args:
        inner: the robust reducer applied to the mixed vectors (a stacked aggregator: median,
            trimmed mean, Krum, Multi-Krum, Bulyan, geometric median, centered clipping, ...).
    """

    def __init__(self, inner: Aggregator) -> None:
        if not isinstance(inner, StackedAggregator):
            raise OptionError(
                "strategy.aggregator.inner",
                type(inner).__name__,
                "a reducer of the whole stack (median, trimmed_mean, krum, multikrum, bulyan, geomed, "
                "centered_clipping)",
            )
        self.inner = inner
        self.seed, self.step = 0, 0
        super().__init__()

    # -- what the wrapper inherits from its inner reducer ----------------------------------------
    @property
    def needs_server_update(self) -> bool:  # type: ignore[override]
        return self.inner.needs_server_update

    def bind_server_update(self, server_update: Any) -> None:
        self.inner.bind_server_update(server_update)  # type: ignore[attr-defined]

    @property
    def root_size(self) -> int:
        return self.inner.root_size  # type: ignore[attr-defined]

    def setup(self, seed: int) -> None:
        self.seed = int(seed)
        self.inner.setup(seed)

    def begin_step(self, step: int) -> None:
        self.step = int(step)
        self.inner.begin_step(step)

    def step_metrics(self) -> dict[str, float]:
        return self.inner.step_metrics()

    def state_dict(self) -> dict[str, Any]:
        inner = self.inner.state_dict()
        return {"inner": inner} if inner else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "inner" in state:
            self.inner.load_state_dict(state["inner"])

    # -- the reduction ---------------------------------------------------------------------------
    def mix(self, stack: Tensor, weights: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def reduce(self, stack: Tensor, weights: Tensor) -> Tensor:
        mixed, mixed_weights = self.mix(stack, weights)
        return self.inner.reduce(mixed, mixed_weights)
