"""The reference backend: the step's clients, one after another, in one process."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from torch import Tensor

from fedtorch.backends.base import Backend
from fedtorch.client import ClientUpdate
from fedtorch.runner import ClientJob, Payload


class SequentialBackend(Backend):
    """Train each client in turn on the runner's single worker model.

    Updates are yielded as they are produced, so the pipeline holds one client update at a time.
    """

    name = "sequential"

    def train(self, jobs: Sequence[ClientJob], start: Tensor, payload: Payload) -> Iterator[ClientUpdate]:
        for job in jobs:
            yield self.runner.run(job, start, payload)
