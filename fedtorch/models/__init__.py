"""Plain `nn.Module`s used in FL papers.

Convention: every model is built as `Model(input_shape=..., num_classes=..., **options)`, where
`input_shape` (one sample, no batch dimension) and `num_classes` (None for regression) come from
the dataset at run time, so a model config only holds the model's own options. Every model also
follows the representation protocol of `fedtorch.models.protocol` (`features(x)`, `classifier(z)`).
"""

from fedtorch.models.bn_cnn import BNCNN
from fedtorch.models.cnn import CIFARCNN, CNN
from fedtorch.models.linear import LinearRegression, LogisticRegression
from fedtorch.models.lstm import CharLSTM
from fedtorch.models.mlp import MLP
from fedtorch.models.resnet import ResNet18GN

__all__ = ["BNCNN", "CIFARCNN", "CNN", "CharLSTM", "LinearRegression", "LogisticRegression", "MLP", "ResNet18GN"]
