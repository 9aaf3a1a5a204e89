"""Convolutional networks from the FedAvg paper: the MNIST CNN and the CIFAR-10 CNN.

McMahan et al. 2017, "Communication-Efficient Learning of Deep Networks from Decentralized Data",
section 3: "A CNN with two 5x5 convolution layers (the first with 32 channels, the second with 64,
each followed with 2x2 max pooling), a fully connected layer with 512 units and ReLu activation, and a
final softmax output layer (1,663,370 total parameters)". The count is reached exactly with 'same'
padding (2 pixels): 28x28 -> 14x14 -> 7x7, so the dense layer sees 7*7*64 = 3,136 inputs
(832 + 51,264 + 1,606,144 + 5,130 = 1,663,370).

For CIFAR-10 the paper uses "the model architecture ... taken from the TensorFlow tutorial": the
cuda-convnet-style network of tensorflow/models tutorials/image/cifar10 (conv 5x5x64, 3x3/2 max-pool,
local response norm, conv 5x5x64, LRN, 3x3/2 max-pool, dense 384, dense 192, linear), "about 10^6
parameters" on the tutorial's 24x24 crops: 1,068,298 for 10 classes; on full 32x32 images the first
dense layer grows and the total is 1,756,426.
"""

from __future__ import annotations

from torch import Tensor, nn


def _image_shape(input_shape: tuple[int, ...], model: str) -> tuple[int, int, int]:
    """(C, H, W) from an input shape; a 2-D shape is one grey channel."""
    shape = tuple(int(s) for s in input_shape)
    if len(shape) == 2:
        return (1, *shape)
    if len(shape) != 3:
        raise ValueError(f"model={model} needs image inputs (C, H, W) or (H, W), got input_shape={shape}")
    return shape  # type: ignore[return-value]


def _classes(num_classes: int | None, model: str) -> int:
    if num_classes is None:
        raise ValueError(f"model={model} is a classifier; the dataset has no num_classes (regression)")
    return num_classes


class CNN(nn.Module):
    """McMahan et al.'s MNIST CNN: conv5x5(32)-pool-conv5x5(64)-pool-fc(512)-fc(classes), 'same' padding.

    1,663,370 parameters for 1x28x28 inputs and 10 classes. `channels` and `hidden` change the widths.
    """

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_classes: int | None,
        channels: tuple[int, int] = (32, 64),
        hidden: int = 512,
    ) -> None:
        super().__init__()
        c, h, w = _image_shape(input_shape, "cnn")
        c1, c2 = channels
        self.unflatten = len(tuple(input_shape)) == 2
        self.features = nn.Sequential(
            nn.Conv2d(c, c1, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
        )
        self.classifier = nn.Sequential(
            nn.Linear(c2 * (h // 2 // 2) * (w // 2 // 2), hidden),
            nn.ReLU(),
            nn.Linear(hidden, _classes(num_classes, "cnn")),
        )

    def forward(self, x: Tensor) -> Tensor:
        if self.unflatten:
            x = x.unsqueeze(1)
        return self.classifier(self.features(x))


class CIFARCNN(nn.Module):
    """The TensorFlow CIFAR-10 tutorial CNN that McMahan et al. 2017 train with FedAvg on CIFAR-10.

    conv5x5(64)-ReLU-maxpool3x3/2-LRN-conv5x5(64)-ReLU-LRN-maxpool3x3/2-fc(384)-fc(192)-linear.
    TensorFlow's 'SAME' 3x3/2 pooling halves the size (rounding up); padding=1 gives the same output
    sizes. TF's `lrn(depth_radius=4, bias=1, alpha=0.001/9, beta=0.75)` is PyTorch's
    `LocalResponseNorm(size=9, alpha=0.001, beta=0.75, k=1)` (PyTorch divides alpha by size).
    `lrn=False` drops the normalization (it has no parameters, so the count does not change).
    """

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_classes: int | None,
        channels: tuple[int, int] = (64, 64),
        hidden: tuple[int, int] = (384, 192),
        lrn: bool = True,
    ) -> None:
        super().__init__()
        c, h, w = _image_shape(input_shape, "cifar_cnn")
        c1, c2 = channels
        norm = (lambda: nn.LocalResponseNorm(size=9, alpha=0.001, beta=0.75, k=1.0)) if lrn else nn.Identity

        def pooled(n: int) -> int:
            return (n - 1) // 2 + 1  # ceil(n / 2), TF 'SAME' with stride 2

        self.features = nn.Sequential(
            nn.Conv2d(c, c1, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(3, stride=2, padding=1),
            norm(),
            nn.Conv2d(c1, c2, kernel_size=5, padding=2),
            nn.ReLU(),
            norm(),
            nn.MaxPool2d(3, stride=2, padding=1),
            nn.Flatten(),
        )
        self.classifier = nn.Sequential(
            nn.Linear(c2 * pooled(pooled(h)) * pooled(pooled(w)), hidden[0]),
            nn.ReLU(),
            nn.Linear(hidden[0], hidden[1]),
            nn.ReLU(),
            nn.Linear(hidden[1], _classes(num_classes, "cifar_cnn")),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))
