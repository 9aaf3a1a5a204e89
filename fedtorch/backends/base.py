"""The backend interface: who trains a step's clients, and how processes agree.

A backend turns a list of `ClientJob`s (the clients of a round, or of an asynchronous server's
dispatch) into their `ClientUpdate`s, yielded one at a time so that the loop can stream them into
the update pipeline (memory O(model) for the FedAvg family). It never calls the strategy's server
half and never sees the pipeline: the loop feeds the pipeline and, at the end of a step, asks the
backend to `reduce` what every process accumulated (the distributed backend all-reduces; a
single process has nothing to do).

    SequentialBackend    one client after another on one reused model (the reference)
    VectorizedBackend    a chunk of clients as one batched torch.func computation
    DistributedBackend   torchrun processes share the clients; one reduce per step
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol

import torch.distributed as dist
from torch import Tensor

from fedtorch.client import ClientUpdate
from fedtorch.runner import ClientJob, ClientRunner, Payload


class Mergeable(Protocol):
    """State that every process holds a part of and the backend combines (an aggregator, ...)."""

    def merge(self, group: dist.ProcessGroup | None = None) -> None: ...


class Backend:
    """Base class: one process, nothing to reduce or agree on."""

    #: The option name (`backend=<name>`), recorded in summary.json.
    name = "backend"

    def setup(self, runner: ClientRunner) -> None:
        """Called once with the client runner (data, worker model, trainer, strategy's client half)."""
        self.runner = runner

    def train(self, jobs: Sequence[ClientJob], start: Tensor, payload: Payload) -> Iterator[ClientUpdate]:
        """The updates of this process's share of `jobs`, each trained from the weights `start`."""
        raise NotImplementedError

    @property
    def world_size(self) -> int:
        return 1

    @property
    def rank(self) -> int:
        return 0

    @property
    def is_main(self) -> bool:
        """The process that writes files and logs (rank 0)."""
        return self.rank == 0

    def broadcast(self, tensor: Tensor) -> None:
        """Make `tensor` (the initial global weights) identical on every process."""

    def reduce(self, parts: Sequence[Mergeable]) -> None:
        """Combine the step's partial state of every process, in place (nothing to do on one)."""

    def agree_stop(self, stop_reason: str | None) -> str | None:
        """The main process's decision to stop binds every process."""
        return stop_reason

    def close(self) -> None:
        """Release what the backend holds (a process group)."""
