"""The representation protocol: a model that exposes the features its classifier reads.

Some algorithms need a model's representation, not only its output: MOON (Li, He and Song 2021)
contrasts the representations of the local, global and previous models; representation-sharing
methods reason about the body and the head. A model follows the protocol when it has

    features(x)    -> z, shape (batch, d): the representation of a batch of inputs
    classifier(z)  -> the model's output computed from z

with `model(x) == model.classifier(model.features(x))` (the same operations, so the same values).
Every model in `fedtorch.models` follows it (as methods, or as submodules named `features` and
`classifier` as in the McMahan CNN); `tests/models` checks the identity for each of them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, runtime_checkable

from torch import Tensor, nn

from fedtorch.errors import OptionError


@runtime_checkable
class HasFeatures(Protocol):
    """A model with a representation: `model(x) == model.classifier(model.features(x))`."""

    def features(self, x: Tensor) -> Tensor: ...

    def classifier(self, z: Tensor) -> Tensor: ...


def has_features(model_type: type[nn.Module], submodules: Mapping[str, type[nn.Module]] = {}) -> bool:  # noqa: B006
    """Whether a model class (with its named submodules' types) follows the protocol."""

    def provides(name: str) -> bool:
        return callable(getattr(model_type, name, None)) or name in submodules

    return provides("features") and provides("classifier")


def require_features(types: Mapping[str, type[nn.Module]], strategy: str) -> None:
    """Refuse, in one line, a model without `features` / `classifier` (types: `fedtorch.sharing.module_types`)."""
    root = types.get("")
    if root is None or not has_features(root, types):
        name = root.__name__ if root is not None else "?"
        raise OptionError(
            "model",
            name,
            f"strategy={strategy} needs the model's representation: a model with features(x) and classifier(z) "
            "(fedtorch.models.protocol); every fedtorch model has them",
        )
