"""A model's weights as one flat vector.

The server keeps the global model as a single 1-D tensor, and clients return their update as a
single 1-D tensor too: averaging, clipping, noising, compressing and all-reducing then work on
one contiguous buffer with a handful of kernels, whatever the architecture. `FlatModel` makes a
module's parameters *views* into such a buffer, so loading the global weights into the worker's
model is one `copy_` and reading its weights back costs nothing.

Layout: all parameters first (in `named_parameters()` order), then the floating-point buffers
(BatchNorm running statistics). The server optimizer steps only the parameter segment; buffers
are averaged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class VectorLayout:
    """Where each named tensor lives in the flat vector."""

    names: tuple[str, ...]
    shapes: tuple[torch.Size, ...]
    offsets: tuple[int, ...]
    num_params: int  # the first `num_params` entries are trainable parameters
    size: int  # parameters + floating buffers
    num_param_tensors: int = -1  # how many of the named tensors are parameters (they come first)

    def __post_init__(self) -> None:
        if self.num_param_tensors < 0:  # not given: the tensors that start inside the parameter segment
            count = sum(1 for o, s in zip(self.offsets, self.shapes) if o < self.num_params or s.numel() == 0)
            object.__setattr__(self, "num_param_tensors", count)

    def split(self, vector: Tensor) -> list[Tensor]:
        """Views of `vector`, one per named tensor, in layout order."""
        return [vector[o : o + s.numel()].view(s) for o, s in zip(self.offsets, self.shapes)]

    def state_dict(self, vector: Tensor) -> dict[str, Tensor]:
        """A `state_dict`-style mapping name -> tensor (views into `vector`)."""
        return dict(zip(self.names, self.split(vector)))


class FlatModel:
    """Re-homes a module's parameters and floating buffers into one contiguous vector.

    After construction `self.vector` holds the weights, `module.parameters()` are views into it,
    and `load(v)` / `self.vector.clone()` move whole models in one kernel.
    """

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        params = [(n, p) for n, p in module.named_parameters()]
        buffers = [(n, b) for n, b in module.named_buffers() if b.is_floating_point()]
        entries = params + buffers
        if not entries:
            raise ValueError("model has no parameters")
        device, dtype = entries[0][1].device, entries[0][1].dtype
        sizes = [t.numel() for _, t in entries]
        offsets = [0]
        for s in sizes[:-1]:
            offsets.append(offsets[-1] + s)
        self.layout = VectorLayout(
            names=tuple(n for n, _ in entries),
            shapes=tuple(t.shape for _, t in entries),
            offsets=tuple(offsets),
            num_params=sum(sizes[: len(params)]),
            size=sum(sizes),
            num_param_tensors=len(params),
        )
        self.vector = torch.empty(self.layout.size, device=device, dtype=dtype)
        with torch.no_grad():
            for (_, tensor), view in zip(entries, self.layout.split(self.vector)):
                view.copy_(tensor)
                tensor.data = view  # the module now reads and writes the flat buffer
        self.params = [p for _, p in params]

    def load(self, vector: Tensor) -> None:
        """Copy a flat weight vector into the module (in place: no re-allocation)."""
        with torch.no_grad():
            self.vector.copy_(vector)

    @property
    def param_vector(self) -> Tensor:
        return self.vector[: self.layout.num_params]
