"""Models: parameter counts match the papers, forward shapes, gradients flow, bad inputs fail clearly."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fedtorch.models import CIFARCNN, CNN, MLP, CharLSTM, ResNet18GN


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny batches gain nothing from intra-op threads, and on a busy CPU OpenMP's spin-waiting makes
    an LSTM backward pass ~50x slower (seconds instead of ~0.1 s); restore the setting afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    ("model", "expected", "source"),
    [
        (lambda: MLP((1, 28, 28), 10), 199_210, "McMahan et al. 2017, 2NN"),
        (lambda: CNN((1, 28, 28), 10), 1_663_370, "McMahan et al. 2017, CNN"),
        # TF CIFAR-10 tutorial CNN: 4,864 + 102,464 + (6*6*64)*384+384 + 73,920 + 1,930 on 24x24 crops
        (lambda: CIFARCNN((3, 24, 24), 10), 1_068_298, "McMahan et al. 2017 CIFAR CNN, 'about 10^6'"),
        (lambda: CIFARCNN((3, 32, 32), 10), 1_756_426, "same network on uncropped 32x32 images"),
        (lambda: ResNet18GN((3, 32, 32), 10), 11_173_962, "CIFAR ResNet-18 (BN and GN have equal counts)"),
        (lambda: ResNet18GN((3, 32, 32), 100), 11_220_132, "CIFAR-100 head: + 90 x 513"),
        (lambda: CharLSTM((80,), 80), 819_920, "LEAF Shakespeare LSTM, PyTorch biases"),
    ],
    ids=["2nn", "cnn", "cifar_cnn_24", "cifar_cnn_32", "resnet18_gn_10", "resnet18_gn_100", "char_lstm"],
)
def test_parameter_counts(model, expected: int, source: str) -> None:  # noqa: ANN001 - a model factory
    assert num_params(model()) == expected, source


def test_char_lstm_matches_leaf_tensorflow_count() -> None:
    # LEAF's TF model has one bias per LSTM gate; PyTorch has two (b_ih, b_hh) -> 2 layers x 4 x 256 more.
    model = CharLSTM((80,), 80)
    leaf_tf = 80 * 8 + 4 * 256 * (8 + 256 + 1) + 4 * 256 * (256 + 256 + 1) + 256 * 80 + 80
    assert leaf_tf == 817_872
    assert num_params(model) - leaf_tf == 2 * 4 * 256


@pytest.mark.parametrize(
    ("model", "x", "classes"),
    [
        (lambda: CNN((1, 28, 28), 10), torch.randn(4, 1, 28, 28), 10),
        (lambda: CNN((28, 28), 10), torch.randn(4, 28, 28), 10),  # channel-less grey images
        (lambda: CNN((3, 32, 32), 10), torch.randn(4, 3, 32, 32), 10),
        (lambda: CIFARCNN((3, 32, 32), 100, lrn=False), torch.randn(4, 3, 32, 32), 100),
        (lambda: CIFARCNN((3, 24, 24), 10), torch.randn(4, 3, 24, 24), 10),
        (lambda: ResNet18GN((3, 32, 32), 10), torch.randn(2, 3, 32, 32), 10),
        (lambda: ResNet18GN((1, 28, 28), 10, width=8), torch.randn(2, 1, 28, 28), 10),
        (lambda: CharLSTM((80,), 80), torch.randint(0, 80, (4, 80)), 80),
        (
            lambda: CharLSTM((25,), 2, vocab_size=1002, embedding_dim=16, hidden_size=32),
            torch.randint(0, 1002, (4, 25)),
            2,
        ),
    ],
    ids=[
        "cnn",
        "cnn_2d",
        "cnn_rgb",
        "cifar_cnn_no_lrn",
        "cifar_cnn_24",
        "resnet18_gn",
        "resnet_narrow",
        "lstm",
        "lstm_words",
    ],
)
def test_forward_shape_and_gradients(model, x: torch.Tensor, classes: int) -> None:  # noqa: ANN001
    torch.manual_seed(0)
    net = model()
    logits = net(x)
    assert logits.shape == (len(x), classes) and logits.dtype == torch.float32
    nn.functional.cross_entropy(logits, torch.zeros(len(x), dtype=torch.int64)).backward()
    grads = [p.grad for p in net.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_resnet_is_federation_friendly() -> None:
    model = ResNet18GN((3, 32, 32), 10)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert sum(isinstance(m, nn.GroupNorm) and m.num_groups == 2 for m in model.modules()) == 20
    assert list(model.buffers()) == []  # no running statistics to average across clients


def test_char_lstm_uses_the_last_position() -> None:
    torch.manual_seed(0)
    model = CharLSTM((10,), 80).eval()
    x = torch.randint(0, 80, (1, 10))
    changed_last = x.clone()
    changed_last[0, -1] = (x[0, -1] + 1) % 80
    assert not torch.allclose(model(x), model(changed_last))


@pytest.mark.parametrize("cls", [CNN, CIFARCNN, ResNet18GN])
def test_image_models_reject_bad_inputs(cls: type) -> None:
    with pytest.raises(ValueError, match="num_classes"):
        cls((1, 28, 28), None)
    with pytest.raises(ValueError, match="input_shape"):
        cls((784,), 10)


def test_char_lstm_rejects_images() -> None:
    with pytest.raises(ValueError, match="input_shape"):
        CharLSTM((1, 28, 28), 10)


@pytest.mark.parametrize(
    ("name", "input_shape", "num_classes", "cls"),
    [
        ("cnn", (1, 28, 28), 10, CNN),
        ("cifar_cnn", (3, 32, 32), 10, CIFARCNN),
        ("resnet18_gn", (3, 32, 32), 100, ResNet18GN),
        ("char_lstm", (80,), 80, CharLSTM),
    ],
)
def test_model_configs_instantiate(compose_config, name: str, input_shape, num_classes: int, cls: type) -> None:  # noqa: ANN001
    from hydra.utils import instantiate

    cfg = compose_config(f"model={name}")
    model = instantiate(cfg.model, input_shape=input_shape, num_classes=num_classes)
    assert type(model) is cls
