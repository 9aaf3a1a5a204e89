"""Linear models: least-squares regression and multinomial logistic regression."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


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
    """Multinomial logistic regression: one linear layer producing class logits."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int | None) -> None:
        super().__init__()
        if num_classes is None:
            raise ValueError("model=logistic_regression needs a classification dataset (num_classes)")
        self.linear = nn.Linear(math.prod(input_shape), num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(torch.flatten(x, 1))

    def features(self, x: Tensor) -> Tensor:
        """The flattened inputs (`fedtorch.models.protocol`)."""
        return torch.flatten(x, 1)

    def classifier(self, z: Tensor) -> Tensor:
        return self.linear(z)
