"""Multi-layer perceptron; with hidden=(200, 200) on MNIST it is McMahan et al.'s 2NN."""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor, nn


class MLP(nn.Module):
    """Fully connected ReLU network.

    McMahan et al. 2017 ("Communication-Efficient Learning of Deep Networks from Decentralized
    Data") call the 784-200-200-10 version the 2NN: 199,210 parameters.
    """

    def __init__(
        self, input_shape: tuple[int, ...], num_classes: int | None, hidden: Sequence[int] = (200, 200)
    ) -> None:
        super().__init__()
        sizes = [math.prod(input_shape), *hidden]
        layers: list[nn.Module] = [nn.Flatten()]
        for a, b in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        layers.append(nn.Linear(sizes[-1], num_classes if num_classes is not None else 1))
        self.net = nn.Sequential(*layers)
        self.regression = num_classes is None

    def forward(self, x: Tensor) -> Tensor:
        out = self.net(x)
        return out.squeeze(-1) if self.regression else out

    def features(self, x: Tensor) -> Tensor:
        """The last hidden layer's activations (`fedtorch.models.protocol`)."""
        return self.net[:-1](x)

    def classifier(self, z: Tensor) -> Tensor:
        out = self.net[-1](z)
        return out.squeeze(-1) if self.regression else out
