"""The process-wide random streams, saved in a checkpoint and restored on resume.

Everything random in fedtorch derives from (seed, purpose, round, client), so the round number
replaces most RNG state; the global torch/numpy/python streams are saved anyway for components
that draw from them (dropout layers draw from the torch stream, re-seeded per client).
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def rng_state() -> dict[str, Any]:
    """The process-wide random streams (torch CPU and CUDA, numpy legacy, python `random`)."""
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` captured (CUDA streams only where the same GPUs are present)."""
    torch.set_rng_state(state["torch"].cpu())
    legacy = state["numpy"]
    np.random.set_state(
        ("MT19937", legacy["keys"].numpy().astype(np.uint32), legacy["pos"], legacy["has_gauss"], legacy["gauss"])
    )
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available() and torch.cuda.device_count() == len(cuda):
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])
