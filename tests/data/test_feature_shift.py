"""The feature-shift MNIST federation: each domain's transform by hand, one domain per client with
its own test split, the labels untouched, the whole federation fixed by the seed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedtorch.data.feature_shift import MNIST_MEAN, MNIST_STD, load_mnist_feature_shift, transform
from fedtorch.data.partitions import Natural
from fedtorch.errors import OptionError
from tests.conftest import shared_data_dir


def test_transforms_by_hand():
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(3, 1, 28, 28, generator=generator)
    assert torch.equal(transform(x, "invert", generator, 0, 0, 1), 1 - x)
    # A quarter turn maps pixel centres onto pixel centres: bilinear resampling is exact (up to rounding).
    turned = transform(x, "rotate", generator, 90.0, 0, 1)
    assert any(torch.allclose(turned, torch.rot90(x, k, dims=(2, 3)), atol=1e-5) for k in (1, 3))
    assert torch.allclose(transform(x, "scale", generator, 0, 0, 1.0), x, atol=1e-5)  # scale 1: identity
    small = transform(x, "scale", generator, 0, 0, 0.5)
    assert not small[..., :6, :].any() and not small[..., :, -6:].any()  # shrunk about the centre: empty border
    noisy = transform(x, "noise", torch.Generator().manual_seed(1), 0, 0.5, 1)
    assert (
        noisy.min() >= 0
        and noisy.max() <= 1
        and torch.equal(noisy, transform(x, "noise", torch.Generator().manual_seed(1), 0, 0.5, 1))
    )
    with pytest.raises(OptionError, match="dataset.domains"):
        transform(x, "blur", generator, 0, 0, 1)


def test_federation_from_the_real_mnist_files():
    data = load_mnist_feature_shift(
        shared_data_dir(), clients_per_domain=2, train_samples=1000, test_samples=200, seed=3
    )
    assert data.train_x.shape == (1000, 1, 28, 28) and data.test_x.shape == (200, 1, 28, 28)
    partition = Natural()(data, np.random.default_rng(0))
    assert partition.num_clients == 10 and partition.names[:3] == ["none-0", "none-1", "rotate-0"]
    assert {len(ix) for ix in partition.train} == {100} and {len(ix) for ix in partition.test} == {20}
    pixels = data.train_x * MNIST_STD + MNIST_MEAN  # back to [0, 1]
    plain, inverted = (pixels[torch.from_numpy(np.array(partition.train[k]))] for k in (0, 4))
    assert plain.mean() < 0.2 < 0.8 < inverted.mean()  # white-on-black digits vs their negatives
    again = load_mnist_feature_shift(
        shared_data_dir(), clients_per_domain=2, train_samples=1000, test_samples=200, seed=3
    )
    assert torch.equal(again.train_x, data.train_x) and np.array_equal(again.train_groups, data.train_groups)
    with pytest.raises(OptionError, match="dataset.domains"):
        load_mnist_feature_shift(shared_data_dir(), domains=["none", "none"])
