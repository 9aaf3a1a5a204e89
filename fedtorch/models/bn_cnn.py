"""A small CNN with batch normalization after every hidden layer: the model FedBN is about.

FedBN (Li et al. 2021, "FedBN: Federated Learning on Non-IID Features via Local Batch
Normalization") trains a digits CNN with a BatchNorm layer after each convolution and each hidden
dense layer (conv 64-64-128, dense 2048-512: ~14M parameters). This is the same pattern at a size a
CPU trains in minutes:

    features:   conv5x5(c1)-BN-ReLU-maxpool2, conv5x5(c2)-BN-ReLU-maxpool2, flatten,
                dense(hidden)-BN-ReLU
    classifier: dense(classes)

215,722 parameters (+ 352 running statistics) for 1x28x28 inputs, 10 classes and the defaults
(16, 32) channels and 128 hidden units. `features` and `classifier` are submodules, so the model
follows `fedtorch.models.protocol` and its head (for FedPer, FedRep, ...) is `classifier`.
"""

from __future__ import annotations

from torch import Tensor, nn

from fedtorch.models.cnn import _classes, _image_shape


class BNCNN(nn.Module):
    """conv-BN-ReLU-pool x2, dense-BN-ReLU, dense: a CNN whose normalization layers FedBN keeps local.

    Args:
        input_shape: (C, H, W) or (H, W) of one image.
        num_classes: number of classes.
        channels: the two convolutions' widths.
        hidden: the hidden dense layer's width.
    """

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_classes: int | None,
        channels: tuple[int, int] = (16, 32),
        hidden: int = 128,
    ) -> None:
        super().__init__()
        c, h, w = _image_shape(input_shape, "bn_cnn")
        c1, c2 = channels
        self.unflatten = len(tuple(input_shape)) == 2
        self.features = nn.Sequential(
            nn.Conv2d(c, c1, kernel_size=5, padding=2),
            nn.BatchNorm2d(c1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, kernel_size=5, padding=2),
            nn.BatchNorm2d(c2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(c2 * (h // 4) * (w // 4), hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(),
        )
        self.classifier = nn.Linear(hidden, _classes(num_classes, "bn_cnn"))

    def forward(self, x: Tensor) -> Tensor:
        if self.unflatten:
            x = x.unsqueeze(1)
        return self.classifier(self.features(x))
