"""Linear models: least-squares regression and multinomial logistic regression."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from fedtorch.errors import OptionError


class LinearRegression(nn.Module):
    """y = w.x + b with one output per target (one for a scalar target)."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int | None = None, num_outputs: int = 1) -> None:
        super().__init__()
        self.linear = nn.Linear(math.prod(input_shape), num_outputs)

    def forward(self, x: Tensor) -> Tensor:
        out = self.linear(x.flatten(1))
        return out.squeeze(-1) if out.shape[-1] == 1 else out

    def features(self, x: Tensor) -> Tensor:
        """The flattened inputs: a linear model's representation (`fedtorch.models.protocol`)."""
        return x.flatten(1)

    def classifier(self, z: Tensor) -> Tensor:
        out = self.linear(z)
        return out.squeeze(-1) if out.shape[-1] == 1 else out


class LogisticRegression(nn.Module):
    """Multinomial logistic regression: one linear layer producing class logits.

    `binary=True` (two classes only) is the usual binary logistic regression, one logit z = w.x + b
    and P(class 1) = sigmoid(z), returned as the logits (0, z): their softmax cross-entropy is the
    binary cross-entropy of sigmoid(z), with the same parameters, initialization and gradients as
    `Linear(d, 1)` + sigmoid + BCE (FLamby's Fed-Heart-Disease baseline). Two free logits (the
    default) describe the same predictors, but SGD on them moves z = z_1 - z_0 twice as fast.
    """

    def __init__(self, input_shape: tuple[int, ...], num_classes: int | None, binary: bool = False) -> None:
        super().__init__()
        if num_classes is None:
            raise ValueError("model=logistic_regression needs a classification dataset (num_classes)")
        if binary and num_classes != 2:
            raise OptionError("model.binary", binary, f"true only for 2 classes (this dataset has {num_classes})")
        self.binary = bool(binary)
        self.linear = nn.Linear(math.prod(input_shape), 1 if binary else num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(torch.flatten(x, 1))

    def features(self, x: Tensor) -> Tensor:
        """The flattened inputs (`fedtorch.models.protocol`)."""
        return torch.flatten(x, 1)

    def classifier(self, z: Tensor) -> Tensor:
        out = self.linear(z)
        return torch.cat([torch.zeros_like(out), out], dim=1) if self.binary else out
