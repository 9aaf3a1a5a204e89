"""`backend=auto`: the vectorized backend where it is allowed and expected to be faster, else sequential.

The choice is made once, at set-up, from what decides the speed (measured in
`experiments/benchmarks/README.md`), and logged with its reason:

1. Allowed at all: `fedtorch.backends.vectorized.fallback_reason` (client hooks such as SCAFFOLD's,
   BatchNorm, dropout, custom losses, non-SGD optimizers, DP-SGD) -> sequential, for that reason.
2. Step counts: a chunk runs as many steps as its longest client, so clients with very different
   numbers of local steps waste the batched steps of the short ones. The efficiency is the mean
   local step count over the 90th percentile (1.0 when all clients are alike, as in an IID split;
   ~0.1 for FedProx Synthetic's log-normal sizes, where the vectorized backend was measured slower
   than sequential on a CPU). Below `min_efficiency` (0.5 on a CPU, 0.25 on a GPU) -> sequential.
3. The device and the model. On a GPU per-step launch and Python overhead dominate small models:
   vectorized was measured 11x faster than the hand-written loop for the 2NN and 3.9x for the CNN
   on an H100, so a GPU gets vectorized up to `max_parameters`. On a CPU, batching dense layers
   pays (2NN: 0.82x the floor against 1.08x sequential) but vmapped convolutions and recurrent
   layers run slower than separate ones (CNN: 1.1-1.2x against 1.04-1.10x): a CPU gets vectorized
   only for models without convolutional or recurrent layers.

The choice depends only on the configuration and the device, never on timing, so a run is
reproducible; the two backends train the same steps (their float32 results differ in the last
bits, see the benchmarks README). `summary.json` records the backend that was chosen.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

import numpy as np
from torch import Tensor, nn

from fedtorch.backends.base import Backend, Mergeable
from fedtorch.backends.sequential import SequentialBackend
from fedtorch.backends.vectorized import VectorizedBackend, fallback_reason
from fedtorch.client import ClientUpdate
from fedtorch.errors import check_int, check_number
from fedtorch.runner import ClientJob, ClientRunner, Payload

log = logging.getLogger("fedtorch")

#: Layers that `vmap` turns into slower batched kernels on a CPU.
_SLOW_ON_CPU = (nn.modules.conv._ConvNd, nn.RNNBase)


def step_efficiency(runner: ClientRunner) -> float:
    """Mean local steps of a client over the 90th percentile of the clients' local steps (1: alike)."""
    sizes = runner.client_sizes()
    if len(sizes) == 0:
        return 1.0
    trainer = runner.trainer
    batch = np.where(sizes > 0, sizes if trainer.batch_size == -1 else trainer.batch_size, 1)
    steps = trainer.epochs * -(-sizes // batch)
    if trainer.max_steps is not None:
        steps = np.minimum(steps, trainer.max_steps)
    top = float(np.quantile(steps, 0.9))
    return float(steps.mean() / top) if top > 0 else 1.0


class AutoBackend(Backend):
    """Picks `VectorizedBackend` or `SequentialBackend` at set-up (see the module docstring).

    Args:
        chunk_size: the vectorized backend's chunk (None: the whole round).
        min_efficiency_cpu, min_efficiency_gpu: the step-count efficiency below which sequential wins.
        max_parameters: on a GPU, larger models train sequentially (a chunk holds a copy per client).
    """

    def __init__(
        self,
        chunk_size: int | None = None,
        min_efficiency_cpu: float = 0.5,
        min_efficiency_gpu: float = 0.25,
        max_parameters: int = 20_000_000,
    ) -> None:
        self.chunk_size = check_int("backend.chunk_size", chunk_size, 1, none=True, extra=" (null: the whole round)")
        self.min_efficiency_cpu = check_number("backend.min_efficiency_cpu", min_efficiency_cpu, 0.0, 1.0)
        self.min_efficiency_gpu = check_number("backend.min_efficiency_gpu", min_efficiency_gpu, 0.0, 1.0)
        self.max_parameters = check_int("backend.max_parameters", max_parameters, 1)
        self.reason = ""

    def choose(self, runner: ClientRunner) -> tuple[str, str]:
        """("vectorized" or "sequential", why)."""
        refused = fallback_reason(runner)
        if refused is not None:
            return "sequential", refused
        gpu = runner.device.type == "cuda"
        efficiency = step_efficiency(runner)
        floor = self.min_efficiency_gpu if gpu else self.min_efficiency_cpu
        if efficiency < floor:
            return "sequential", (
                f"clients' local step counts differ too much to batch (mean / 90th percentile = {efficiency:.2f} "
                f"< {floor:g})"
            )
        params = runner.layout.num_params
        if gpu:
            if params > self.max_parameters:
                return "sequential", f"{params:,} parameters > backend.max_parameters={self.max_parameters:,}"
            return "vectorized", f"a GPU, {params:,} parameters, step counts alike (efficiency {efficiency:.2f})"
        slow = sorted({type(m).__name__ for m in runner.model.modules() if isinstance(m, _SLOW_ON_CPU)})
        if slow:
            return "sequential", f"on a CPU, batched {', '.join(slow)} layers run slower than one client at a time"
        return "vectorized", f"a CPU, dense layers only, step counts alike (efficiency {efficiency:.2f})"

    def setup(self, runner: ClientRunner) -> None:
        super().setup(runner)
        choice, self.reason = self.choose(runner)
        log.info("backend=auto: %s (%s)", choice, self.reason)
        self.inner: Backend = VectorizedBackend(self.chunk_size) if choice == "vectorized" else SequentialBackend()
        self.inner.setup(runner)

    @property
    def name(self) -> str:  # type: ignore[override]
        """What summary.json records: how the clients are really trained (the inner backend's name)."""
        return self.inner.name if hasattr(self, "inner") else "auto"

    def train(self, jobs: Sequence[ClientJob], start: Tensor, payload: Payload) -> Iterator[ClientUpdate]:
        yield from self.inner.train(jobs, start, payload)

    def reduce(self, parts: Sequence[Mergeable]) -> None:
        self.inner.reduce(parts)
