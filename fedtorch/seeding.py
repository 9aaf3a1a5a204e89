"""Random streams derived from one root seed.

Every random choice in a run (which clients a round samples, the batch order of client k in round
r, a DP noise draw, ...) gets its own stream derived from `(seed, purpose, *keys)`, never from a
shared global stream consumed in execution order. So the sequential, vectorized and distributed
backends make the same choices, and a resumed run continues exactly where it stopped.
"""

from __future__ import annotations

import zlib

import numpy as np
import torch


def derive_seed(seed: int, purpose: str, *keys: int) -> int:
    """A 63-bit seed that depends only on the root seed, a purpose name and integer keys."""
    entropy = [int(seed) & 0xFFFFFFFF, (int(seed) >> 32) & 0xFFFFFFFF, zlib.crc32(purpose.encode())]
    entropy += [int(k) & 0xFFFFFFFF for k in keys]
    state = np.random.SeedSequence(entropy).generate_state(2, dtype=np.uint32)
    return ((int(state[0]) << 32) | int(state[1])) & 0x7FFFFFFFFFFFFFFF


def numpy_rng(seed: int, purpose: str, *keys: int) -> np.random.Generator:
    """A numpy Generator for `(seed, purpose, *keys)`."""
    return np.random.default_rng(derive_seed(seed, purpose, *keys))


def torch_generator(seed: int, purpose: str, *keys: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A torch Generator on `device` for `(seed, purpose, *keys)`."""
    generator = torch.Generator(device=device)
    generator.manual_seed(derive_seed(seed, purpose, *keys))
    return generator
