"""The compressor transform: each client's update is encoded into the payload it would send,
then decoded on the server before aggregation (the simulation does both ends in one place).

The payload is a dict of tensors at their wire dtypes, so `payload_bytes` is an honest count of
what a client uploads. Error feedback (Seide et al. 2014; Stich, Cordonnier and Jaggi 2018,
"Sparsified SGD with Memory"; Karimireddy et al. 2019, "Error Feedback Fixes SignSGD") adds back
what compression dropped last time: client k sends C(Delta_k + e_k) and keeps
e_k <- Delta_k + e_k - C(Delta_k + e_k). Residuals live on the CPU (one model-sized vector per
client that has taken part), so accelerator memory stays O(model).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from fedtorch.client import ClientUpdate
from fedtorch.pipeline import PipelineContext, StepRecord, UpdateTransform
from fedtorch.seeding import torch_generator

Payload = dict[str, Tensor]


def payload_bytes(payload: Payload) -> int:
    """Bytes on the wire: every tensor of the payload at its dtype."""
    return sum(t.numel() * t.element_size() for t in payload.values())


class Compressor(UpdateTransform):
    """Base class: subclasses implement `encode` and `decode`.

    Stochastic encoders draw from (seed, "compression", step, client), the seed the run's.

    Args:
        error_feedback: keep per-client residuals (for biased compressors such as top-k).
    """

    group = "compression"

    def __init__(self, error_feedback: bool = False) -> None:
        self.seed = 0
        self.error_feedback = bool(error_feedback)
        self.residuals: dict[int, Tensor] = {}
        self._changed: set[int] = set()

    def setup(self, context: PipelineContext) -> None:
        self.seed = context.seed
        self._dtype = context.dtype

    def upload_bytes(self, numel: int, current: int) -> int:
        # Top-k's and QSGD's payloads have a size fixed by the update's length: encode zeros once.
        if getattr(self, "_wire", None) is None:
            self._wire = payload_bytes(self.encode(torch.zeros(numel, dtype=self._dtype), torch.Generator()))
        return self._wire

    def begin(self, record: StepRecord) -> None:
        self._changed = set()

    def merge(self, group: dist.ProcessGroup | None = None) -> None:
        # A client may train on another process next round: every process keeps every residual.
        if not self.error_feedback:
            return
        parts: list[Any] = [None] * dist.get_world_size(group)
        dist.all_gather_object(parts, {k: self.residuals[k] for k in self._changed}, group=group)
        for part in parts:
            self.residuals.update(part)

    def encode(self, vector: Tensor, generator: torch.Generator) -> Payload:
        raise NotImplementedError

    def decode(self, payload: Payload, like: Tensor) -> Tensor:
        """The dense vector the server reconstructs; `like` gives size, dtype and device."""
        raise NotImplementedError

    def on_update(self, update: ClientUpdate, record: StepRecord) -> ClientUpdate:
        # A partially shared model (`update.sent`) compresses only the values it sends.
        sent = None if update.sent is None else update.sent.to(update.delta.device)
        vector = update.delta if sent is None else update.delta[sent]
        client = update.client_id
        if self.error_feedback and client in self.residuals:
            vector = vector + self.residuals[client].to(vector.device)
        payload = self.encode(vector, torch_generator(self.seed, "compression", record.step, client))
        decoded = self.decode(payload, vector)
        if self.error_feedback:
            self.residuals[client] = (vector - decoded).cpu()
            self._changed.add(client)
        if sent is not None:
            decoded = torch.zeros_like(update.delta).masked_scatter_(sent, decoded)
        update.delta = decoded
        update.metrics["bytes_up"] = torch.tensor(payload_bytes(payload))
        return update

    def state_dict(self) -> dict[str, Any]:
        return {"residuals": {k: v.clone() for k, v in self.residuals.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.residuals = {int(k): v.cpu() for k, v in state.get("residuals", {}).items()}
