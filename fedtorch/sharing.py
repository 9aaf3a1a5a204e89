"""Which parameters leave a client: one mechanism for every partially shared model.

Personalized FL methods differ first in *what* a client shares. FedPer (Arivazhagan et al. 2019),
FedRep (Collins et al. 2021) and FedBABU (Oh et al. 2022) share the body (the feature extractor)
and keep or freeze the head; LG-FedAvg (Liang et al. 2020) shares the head and keeps the body;
FedBN (Li et al. 2021) shares everything but the normalization layers; adapter fine-tuning (LoRA,
Hu et al. 2022) shares only the adapters. A `ParameterSet` names such a selection in words
(`include` / `exclude` selectors), and `ParameterSet.resolve` turns it, for one model, into a
`SharedParameters`: the layout entries (parameters and floating buffers, e.g. BatchNorm's running
statistics) it covers, as index lists and as a boolean mask over the flat weight vector.

Selectors (a list; an entry is one of):

    all        every entry
    head       the last module that has parameters (e.g. `net.5` of the 2NN, `head` of a model
               that names its classifier so); `body` is everything else
    body       every entry not in `head`
    norm       the entries of normalization layers (BatchNorm, GroupNorm, LayerNorm, InstanceNorm),
               their affine parameters and running statistics
    adapters   entries with a dotted name component starting with `lora_` or `adapter` (the
               convention adapter modules in fedtorch follow)
    <prefix>   the entries whose name is `<prefix>` or starts with `<prefix>.` (a whole dotted
               component: `net.1` does not match `net.10`)

A selection is (union of `include`) minus (union of `exclude`). The mask is what an update
carries (`ClientUpdate.sent`) so that the byte meter counts, and a compressor encodes, only what
is really sent; the server steps only on it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from fedtorch.errors import OptionError
from fedtorch.params import VectorLayout

#: The module types whose entries the `norm` selector names.
NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,  # BatchNorm1d/2d/3d, SyncBatchNorm, InstanceNorm1d/2d/3d
    nn.GroupNorm,
    nn.LayerNorm,
)
KEYWORDS = ("all", "head", "body", "norm", "adapters")
ADAPTER_MARKS = ("lora_", "adapter")


def module_types(model: nn.Module) -> dict[str, type[nn.Module]]:
    """Module name -> its class, for every submodule (what `ParameterSet.resolve` reads for `norm`)."""
    return {name: type(module) for name, module in model.named_modules()}


def _owner(name: str) -> str:
    """The module a layout entry belongs to (`net.1.weight` -> `net.1`; a top-level entry -> '')."""
    return name.rpartition(".")[0]


def _matches(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def head_module(layout: VectorLayout) -> str:
    """The last module that has parameters (the name of the last parameter's owner)."""
    last = layout.names[layout.num_param_tensors - 1]
    return _owner(last) or last


@dataclass(frozen=True)
class SharedParameters:
    """A `ParameterSet` resolved for one model layout.

    Attributes:
        layout: the model's flat-vector layout.
        entries: layout indices (parameters and buffers) in the set, ascending.
        mask: bool vector over the flat weights, True where an entry of the set lives.
        size: number of values in the set.
    """

    layout: VectorLayout
    entries: tuple[int, ...]
    mask: Tensor

    @property
    def size(self) -> int:
        return int(sum(self.layout.shapes[i].numel() for i in self.entries))

    @property
    def everything(self) -> bool:
        """The set covers the whole vector (FedAvg's sharing)."""
        return len(self.entries) == len(self.layout.names)

    @property
    def parameters(self) -> tuple[int, ...]:
        """Indices of the set's entries among the model's parameters (`FlatModel.params` order)."""
        return tuple(i for i in self.entries if i < self.layout.num_param_tensors)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.layout.names[i] for i in self.entries)

    def complement(self) -> SharedParameters:
        """Every entry not in this set."""
        mine = set(self.entries)
        entries = tuple(i for i in range(len(self.layout.names)) if i not in mine)
        return SharedParameters(self.layout, entries, ~self.mask)

    def nbytes(self, dtype: torch.dtype) -> int:
        """Bytes of the set's values at `dtype`: what sending it costs, dense."""
        return self.size * torch.empty((), dtype=dtype).element_size()

    def take(self, vector: Tensor) -> Tensor:
        """The set's values of a flat vector, concatenated (a copy), e.g. a client's own head."""
        return vector[self.mask.to(vector.device)]

    def put(self, vector: Tensor, values: Tensor) -> Tensor:
        """A copy of `vector` with the set's values replaced by `values` (as `take` returns them)."""
        out = vector.clone()
        out[self.mask.to(vector.device)] = values.to(vector)
        return out

    def keep_only(self, vector: Tensor) -> Tensor:
        """Zero every value outside the set, in place (what is not sent is not in the update)."""
        vector.masked_fill_(~self.mask.to(vector.device), 0)
        return vector


@dataclass(frozen=True)
class ParameterSet:
    """A selection of a model's entries in words (see the module docstring for the selectors).

    Args:
        include: selectors whose union is taken (default: everything).
        exclude: selectors removed from it.
        key: the config key the selection comes from, for error messages.
    """

    include: tuple[str, ...] = ("all",)
    exclude: tuple[str, ...] = ()
    key: str = "strategy.shared"

    def __post_init__(self) -> None:
        object.__setattr__(self, "include", tuple(str(s) for s in self.include))
        object.__setattr__(self, "exclude", tuple(str(s) for s in self.exclude))

    def resolve(self, layout: VectorLayout, types: Mapping[str, type[nn.Module]] | None = None) -> SharedParameters:
        """The entries of `layout` in this set; `types` (`module_types(model)`) is needed for `norm`.

        Raises `OptionError` on `key` for a prefix that names no entry, or `norm` without types.
        """
        chosen = self._select(self.include, layout, types)
        chosen -= self._select(self.exclude, layout, types)
        entries = tuple(sorted(chosen))
        mask = torch.zeros(layout.size, dtype=torch.bool)
        for i in entries:
            offset = layout.offsets[i]
            mask[offset : offset + layout.shapes[i].numel()] = True
        return SharedParameters(layout, entries, mask)

    def _select(
        self, selectors: Sequence[str], layout: VectorLayout, types: Mapping[str, type[nn.Module]] | None
    ) -> set[int]:
        names = layout.names
        out: set[int] = set()
        for selector in selectors:
            if selector == "all":
                hit = set(range(len(names)))
            elif selector in ("head", "body"):
                head = head_module(layout)
                hit = {i for i, n in enumerate(names) if _matches(n, head)}
                if selector == "body":
                    hit = set(range(len(names))) - hit
            elif selector == "norm":
                if not types:
                    raise OptionError(self.key, selector, "`norm` needs the model's module types (module_types(model))")
                hit = {i for i, n in enumerate(names) if issubclass(types.get(_owner(n), nn.Module), NORM_TYPES)}
            elif selector == "adapters":
                hit = {i for i, n in enumerate(names) if any(part.startswith(ADAPTER_MARKS) for part in n.split("."))}
            else:
                hit = {i for i, n in enumerate(names) if _matches(n, selector)}
                if not hit:
                    allowed = f"one of {', '.join(KEYWORDS)} or a prefix of the model's entries {list(names)}"
                    raise OptionError(self.key, selector, allowed)
            out |= hit
        return out


def head_set(head: Sequence[str] | None, key: str = "strategy.head") -> ParameterSet:
    """The personal head of FedPer / FedRep / FedBABU / LG-FedAvg: given prefixes, or the last module
    with parameters (None); an empty list means no head."""
    if head is None:
        return ParameterSet(include=("head",), key=key)
    return ParameterSet(include=tuple(head), key=key)


def body_set(head: Sequence[str] | None, key: str = "strategy.head") -> ParameterSet:
    """Everything but `head_set(head)`."""
    if head is None:
        return ParameterSet(include=("all",), exclude=("head",), key=key)
    return ParameterSet(include=("all",), exclude=tuple(head), key=key)
