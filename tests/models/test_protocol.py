"""The representation protocol: every model's output is its classifier applied to its features,
bit for bit; the batch-norm CNN's size; the check strategies use to refuse a model without it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fedtorch.errors import OptionError
from fedtorch.models import BNCNN, CIFARCNN, CNN, MLP, CharLSTM, LinearRegression, LogisticRegression, ResNet18GN
from fedtorch.models.protocol import HasFeatures, require_features
from fedtorch.sharing import module_types

MODELS = {
    "mlp": (lambda: MLP((1, 28, 28), 10, hidden=(16, 8)), (3, 1, 28, 28)),
    "mlp_regression": (lambda: MLP((5,), None, hidden=(4,)), (3, 5)),
    "logistic_regression": (lambda: LogisticRegression((1, 28, 28), 10), (3, 1, 28, 28)),
    "linear_regression": (lambda: LinearRegression((5,)), (3, 5)),
    "cnn": (lambda: CNN((1, 28, 28), 10, channels=(4, 8), hidden=16), (3, 1, 28, 28)),
    "cifar_cnn": (lambda: CIFARCNN((3, 24, 24), 10, channels=(4, 4), hidden=(8, 8)), (3, 3, 24, 24)),
    "resnet18_gn": (lambda: ResNet18GN((3, 8, 8), 10, width=4), (2, 3, 8, 8)),
    "char_lstm": (lambda: CharLSTM((6,), 12, hidden_size=8), None),
    "bn_cnn": (lambda: BNCNN((1, 28, 28), 10), (4, 1, 28, 28)),
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_output_is_the_classifier_of_the_features(name):
    build, shape = MODELS[name]
    torch.manual_seed(0)
    model = build().eval()
    x = torch.randint(0, 12, (3, 6)) if shape is None else torch.randn(shape)
    with torch.no_grad():
        z = model.features(x)
        assert z.dim() == 2 and len(z) == len(x)
        assert torch.equal(model.classifier(z), model(x))
    assert isinstance(model, HasFeatures)
    require_features(module_types(model), "moon")  # no refusal


def test_bn_cnn_size_and_norm_layers():
    model = BNCNN((1, 28, 28), 10)
    assert sum(p.numel() for p in model.parameters()) == 215_722
    assert sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()) == 3
    assert BNCNN((28, 28), 10)(torch.randn(2, 28, 28)).shape == (2, 10)


def test_a_model_without_the_protocol_is_refused_in_one_line():
    with pytest.raises(
        OptionError, match=r"^model='Sequential' is invalid: strategy=moon needs the model's representation"
    ):
        require_features(module_types(nn.Sequential(nn.Linear(2, 2))), "moon")
