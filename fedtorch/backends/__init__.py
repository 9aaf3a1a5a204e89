"""Backends: who trains a round's clients. Sequential is the reference; the others must match it.

- `SequentialBackend`: one client after another on one reused model (the reference).
- `VectorizedBackend`: a chunk of clients as one batched computation (`torch.func.vmap`).
- `DistributedBackend`: torchrun processes share the clients; one all_reduce per round.
"""

from fedtorch.backends.base import Backend
from fedtorch.backends.distributed import DistributedBackend
from fedtorch.backends.sequential import SequentialBackend
from fedtorch.backends.vectorized import VectorizedBackend

__all__ = ["Backend", "DistributedBackend", "SequentialBackend", "VectorizedBackend"]
