"""Top-k sparsification: send the k largest-magnitude coordinates (values and indices).

Aji and Heafield 2017 ("Sparse Communication for Distributed Gradient Descent"); with error
feedback it converges like uncompressed SGD (Stich, Cordonnier and Jaggi 2018, "Sparsified SGD
with Memory"; Lin et al. 2018, "Deep Gradient Compression" accumulate the residual the same way).

Payload: `values` at the update's dtype and `indices` as int32 (int64 for models with 2^31 or more
coordinates), so at density rho a float32 update shrinks by 4 / (rho * (4 + 4)): 5x at 10%.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from fedtorch.compression.base import Compressor, Payload
from fedtorch.errors import check_number


class TopK(Compressor):
    """Keep ceil(density * d) coordinates of largest |value|.

    Args:
        density: fraction of coordinates sent, in (0, 1].
        error_feedback: accumulate what was not sent and add it to the next update (default on:
            top-k is biased and stalls without it).
    """

    def __init__(self, density: float = 0.1, error_feedback: bool = True) -> None:
        super().__init__(error_feedback=error_feedback)
        self.density = check_number("compression.density", density, 0.0, 1.0, low_open=True)

    def encode(self, vector: Tensor, generator: torch.Generator) -> Payload:
        k = max(1, math.ceil(self.density * vector.numel()))
        indices = torch.topk(vector.abs(), k, sorted=False).indices
        index_dtype = torch.int32 if vector.numel() < 2**31 else torch.int64
        return {"values": vector[indices], "indices": indices.to(index_dtype)}

    def decode(self, payload: Payload, like: Tensor) -> Tensor:
        dense = torch.zeros_like(like)
        dense[payload["indices"].long()] = payload["values"].to(like.dtype)
        return dense
