"""QSGD: stochastic uniform quantization with b bits per coordinate, unbiased.

Alistarh et al. 2017, "QSGD: Communication-Efficient SGD via Gradient Quantization and Encoding".
A bucket v of the update (`bucket_size` coordinates; the paper uses 512) is sent as its L2 norm
and, per coordinate, a sign and a level l in {0, ..., s}:

    Q(v_i) = ||v|| * sign(v_i) * l_i / s,  l_i = floor(s |v_i| / ||v||) + Bernoulli(frac(s |v_i| / ||v||))

so E[Q(v)] = v. With b bits per coordinate, 1 is the sign and s = 2^(b-1) - 1 (b = 2 is ternary
{-1, 0, 1} * ||v||, as in TernGrad). The payload is the codes packed into bytes (uint8) plus one
float32 norm per bucket; the paper's Elias coding of the levels would shrink it further.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from fedtorch.compression.base import Compressor, Payload
from fedtorch.errors import OptionError, check_int


def pack_bits(codes: Tensor, bits: int) -> Tensor:
    """Pack non-negative integers < 2^bits into a uint8 tensor, most significant bit first."""
    shifts = torch.arange(bits - 1, -1, -1, device=codes.device)
    stream = ((codes.unsqueeze(1) >> shifts) & 1).reshape(-1)
    pad = (-stream.numel()) % 8
    if pad:
        stream = torch.cat([stream, stream.new_zeros(pad)])
    weights = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], device=codes.device)
    return (stream.reshape(-1, 8) * weights).sum(1).to(torch.uint8)


def unpack_bits(packed: Tensor, bits: int, count: int) -> Tensor:
    """Inverse of `pack_bits`: the first `count` codes as int64."""
    shifts = torch.arange(7, -1, -1, device=packed.device)
    stream = ((packed.to(torch.int64).unsqueeze(1) >> shifts) & 1).reshape(-1)[: count * bits]
    weights = 2 ** torch.arange(bits - 1, -1, -1, device=packed.device)
    return (stream.reshape(count, bits) * weights).sum(1)


class QSGD(Compressor):
    """Unbiased stochastic quantization to `bits` bits per coordinate with per-bucket norms.

    Args:
        bits: bits per coordinate including the sign, in [2, 16]; s = 2^(bits-1) - 1 levels.
        bucket_size: coordinates sharing one norm; None for one norm for the whole update.
        error_feedback: off by default (QSGD is unbiased).

    The stochastic rounding draws from the run's (seed, "compression", step, client) stream.
    """

    def __init__(self, bits: int = 4, bucket_size: int | None = 512, error_feedback: bool = False) -> None:
        super().__init__(error_feedback=error_feedback)
        bits = check_int("compression.bits", bits, 2)
        if bits > 16:
            raise OptionError("compression.bits", bits, "an integer in [2, 16]")
        self.bucket_size = check_int("compression.bucket_size", bucket_size, 1, none=True)
        self.bits = bits
        self.levels = 2 ** (bits - 1) - 1

    def _buckets(self, vector: Tensor) -> Tensor:
        size = self.bucket_size or vector.numel()
        pad = (-vector.numel()) % size
        flat = vector.to(torch.float32)
        if pad:
            flat = torch.cat([flat, flat.new_zeros(pad)])
        return flat.reshape(-1, size)

    def encode(self, vector: Tensor, generator: torch.Generator) -> Payload:
        buckets = self._buckets(vector)
        norms = buckets.norm(dim=1, keepdim=True)
        ratio = torch.where(norms > 0, buckets.abs() / norms.clamp(min=1e-30), 0.0) * self.levels
        lower = ratio.floor()
        uniform = torch.rand(ratio.shape, generator=generator).to(ratio.device)
        level = (lower + (uniform < ratio - lower).to(ratio.dtype)).clamp(max=self.levels).to(torch.int64)
        sign = (buckets < 0).to(torch.int64)
        codes = ((sign << (self.bits - 1)) | level).reshape(-1)[: vector.numel()]  # no codes for the padding
        return {"codes": pack_bits(codes, self.bits), "norms": norms.reshape(-1)}

    def decode(self, payload: Payload, like: Tensor) -> Tensor:
        norms = payload["norms"]
        size = self.bucket_size or like.numel()
        codes = unpack_bits(payload["codes"], self.bits, like.numel())
        codes = torch.cat([codes, codes.new_zeros(norms.numel() * size - like.numel())]).reshape(-1, size)
        level = (codes & self.levels).to(torch.float32)
        sign = 1.0 - 2.0 * (codes >> (self.bits - 1)).to(torch.float32)
        values = norms.unsqueeze(1) * sign * level / self.levels
        return values.reshape(-1)[: like.numel()].to(like.dtype)

    def expected_bytes(self, size: int) -> int:
        """Payload size for a `size`-coordinate update: packed codes + one float32 norm per bucket."""
        bucket = self.bucket_size or size
        buckets = math.ceil(size / bucket)
        return math.ceil(size * self.bits / 8) + 4 * buckets
