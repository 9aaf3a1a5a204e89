"""Bytes sent up and down, counted for every run (compressed or not).

Up: each client's update as it crosses the wire. An encoding transform upstream (a compressor,
secure aggregation) records its payload size in `update.metrics["bytes_up"]`; without one the
update travels dense at its dtype. Strategy payloads in `update.extra` (SCAFFOLD's control-variate
change, ...) travel dense as well and are added. Down: what every client that trained downloaded,
the global model and the strategy's payload (e.g. SCAFFOLD's server control variate), dense at
their dtypes (`StepRecord.download_bytes`, counted by the loop).

A partially shared model (`update.sent`, a mask: FedPer's body, FedBN's non-norm layers) sends
only its shared values and, as the server holds only those, downloads only them: both directions
count the masked values alone (plus the payload).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from fedtorch.client import ClientUpdate
from fedtorch.pipeline import PipelineContext, StepRecord, UpdateTransform


def dense_bytes(tensor: Tensor) -> int:
    return tensor.numel() * tensor.element_size()


class CommunicationMeter(UpdateTransform):
    """Logs `comm/bytes_up`, `comm/bytes_down` (this round) and their running totals.

    Place it last: it reads what the transforms before it encoded. Every client of the step's
    cohort downloaded the model, also those whose update never reaches the meter (late under a
    round deadline, over-selected beyond the first K, dropped by secure aggregation or an attack):
    they count in `bytes_down` as much as a reporting client downloads.
    """

    group = "meter"

    def __init__(self) -> None:
        self.total_up = 0
        self.total_down = 0
        self.round_up = 0
        self.round_down = 0
        self.round_dense_up = 0
        self.round_reports = 0  # updates that reached the meter this step (all processes after merge)
        self._cohort_size = 0
        self._default_down = 0
        self._open = False

    def setup(self, context: PipelineContext) -> None:
        self.element_size = torch.empty((), dtype=context.dtype).element_size()
        self.model_bytes = context.layout.size * self.element_size

    def begin(self, record: StepRecord) -> None:
        self.round_up = self.round_down = self.round_dense_up = self.round_reports = 0
        self._cohort_size = len(record.cohort)
        self._default_down = record.download_bytes or self.model_bytes
        self._open = True

    def on_update(self, update: ClientUpdate, record: StepRecord) -> ClientUpdate:
        extra = sum(dense_bytes(t) for t in update.extra.values() if isinstance(t, Tensor))
        dense = dense_bytes(update.delta)
        down = record.download_bytes or self.model_bytes
        if update.sent is not None:  # only the shared values travel, up and down
            dense = int(update.sent.sum()) * update.delta.element_size()
            down -= self.model_bytes - int(update.sent.sum()) * self.element_size
        encoded = update.metrics.get("bytes_up")
        up = dense if encoded is None else int(encoded)
        self.round_up += up + extra
        self.round_dense_up += dense + extra
        self.round_down += down
        self.round_reports += 1
        return update

    def merge(self, group: dist.ProcessGroup | None = None) -> None:
        parts: list[Any] = [None] * dist.get_world_size(group)
        mine = (self.round_up, self.round_down, self.round_dense_up, self.round_reports)
        dist.all_gather_object(parts, mine, group=group)
        self.round_up, self.round_down, self.round_dense_up, self.round_reports = (
            sum(p[i] for p in parts) for i in range(4)
        )

    def step_metrics(self) -> dict[str, float]:
        # Totals advance here, once per round, whether or not the server step ran.
        if self._open:
            # The cohort's clients with no update here downloaded what a reporter did (the mean
            # over the reporters: a partially shared model sends only its shared part down).
            silent = max(self._cohort_size - self.round_reports, 0)
            per_client = self.round_down // self.round_reports if self.round_reports else self._default_down
            self.round_down += silent * per_client
            self.total_up += self.round_up
            self.total_down += self.round_down
            self._open = False
        metrics = {
            "comm/bytes_up": float(self.round_up),
            "comm/bytes_down": float(self.round_down),
            "comm/bytes_up_total": float(self.total_up),
            "comm/bytes_down_total": float(self.total_down),
        }
        if self.round_dense_up:
            metrics["comm/up_ratio"] = self.round_up / self.round_dense_up
        return metrics

    def state_dict(self) -> dict[str, Any]:
        return {"total_up": self.total_up, "total_down": self.total_down}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.total_up = int(state["total_up"])
        self.total_down = int(state["total_down"])
