"""ResNet-18 with GroupNorm, CIFAR variant: the model of Hsieh et al. 2020 and Reddi et al. 2021.

He et al. 2016 ("Deep Residual Learning for Image Recognition") define ResNet-18; the CIFAR variant
replaces the 7x7/2 stem and max-pool by one 3x3/1 convolution so 32x32 images keep their resolution
(11,173,962 parameters for 10 classes, the count of the common PyTorch CIFAR ResNet-18).

Batch normalization is a poor fit for federated learning: its running statistics are averaged across
clients with different data, and it couples the samples of a small local batch. Hsieh et al. 2020
("The Non-IID Data Quagmire of Decentralized Machine Learning") replace it by Group Normalization
(Wu and He 2018) and Reddi et al. 2021 ("Adaptive Federated Optimization") use that ResNet-18 for
CIFAR-10/100, with 2 groups per layer. GroupNorm has the same affine parameters as BatchNorm, so the
parameter count is unchanged, and it has no running buffers: the whole state is in parameters, which
suits FedAvg-style averaging and `torch.func` vectorization.
"""

from __future__ import annotations

from torch import Tensor, nn


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with GroupNorm and an identity (or 1x1 projection) shortcut."""

    def __init__(self, in_channels: int, channels: int, stride: int, groups: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.norm1 = nn.GroupNorm(groups, channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=1, padding=1, bias=False)
        self.norm2 = nn.GroupNorm(groups, channels)
        self.relu = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, channels, 1, stride=stride, bias=False), nn.GroupNorm(groups, channels)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet18GN(nn.Module):
    """CIFAR ResNet-18 (3x3 stem, stages of 64/128/256/512 channels, 2 blocks each) with GroupNorm.

    Args:
        input_shape: (C, H, W); any size works (global average pooling before the classifier).
        num_classes: number of classes.
        num_groups: GroupNorm groups per layer (2 in Hsieh et al. 2020 and Reddi et al. 2021).
        width: channels of the first stage (64 in ResNet-18); the stages use 1x, 2x, 4x, 8x.
    """

    def __init__(
        self, input_shape: tuple[int, ...], num_classes: int | None, num_groups: int = 2, width: int = 64
    ) -> None:
        super().__init__()
        if len(tuple(input_shape)) != 3:
            raise ValueError(f"model=resnet18_gn needs image inputs (C, H, W), got input_shape={tuple(input_shape)}")
        if num_classes is None:
            raise ValueError("model=resnet18_gn is a classifier; the dataset has no num_classes (regression)")
        self.stem = nn.Sequential(
            nn.Conv2d(int(input_shape[0]), width, 3, stride=1, padding=1, bias=False),
            nn.GroupNorm(num_groups, width),
            nn.ReLU(),
        )
        blocks: list[nn.Module] = []
        in_channels = width
        for stage, stride in enumerate((1, 2, 2, 2)):
            channels = width * 2**stage
            blocks += [
                BasicBlock(in_channels, channels, stride, num_groups),
                BasicBlock(channels, channels, 1, num_groups),
            ]
            in_channels = channels
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(in_channels, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.blocks(self.stem(x)))

    def features(self, x: Tensor) -> Tensor:
        """The globally pooled last stage (`fedtorch.models.protocol`)."""
        return self.head[1](self.head[0](self.blocks(self.stem(x))))

    def classifier(self, z: Tensor) -> Tensor:
        return self.head[2](z)
