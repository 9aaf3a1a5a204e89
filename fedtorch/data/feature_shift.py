"""A feature-shift federation built offline from the real MNIST files: the same digits, seen
through a different transform by each group of clients.

FedBN (Li et al. 2021) is about *feature shift*: clients share the task and the label distribution
but their inputs differ in distribution (different scanners, cameras, styles). The paper builds it
from five digit datasets (MNIST, SVHN, USPS, SynthDigits, MNIST-M); with only MNIST on disk, this
loader makes the domains by transforming MNIST, one transform per domain:

    none      the digits as they are
    rotate    rotated by `rotation` degrees (bilinear, zero padding)
    invert    1 - pixel (white digits on black become black on white)
    noise     + Gaussian noise of std `noise_std`, clipped to [0, 1]
    scale     shrunk about the centre by the factor `scale` (zero padding around)

The train set (optionally a random subset of `train_samples`) is dealt at random into
`clients_per_domain` clients per domain (so every client has about the same number of samples and
the global label mix: only the features shift), and the test set likewise into the same clients,
so every client has a test split of its own domain (`partition=natural` keeps them; the central
test set is the union of all domains). Pixels are transformed in [0, 1], then standardized with
MNIST's mean and std (0.1307, 0.3081) for every domain alike, so the shift stays in the inputs.
Everything random (the assignment, the noise) derives from `seed`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from fedtorch.data.base import DatasetSplits
from fedtorch.data.mnist import load_mnist
from fedtorch.errors import OptionError, check_int, check_number

DOMAINS = ("none", "rotate", "invert", "noise", "scale")
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


def _warp(x: Tensor, theta: Tensor) -> Tensor:
    """Resample images (N, 1, H, W) through the affine map `theta` (2x3: output -> input coordinates)."""
    grid = F.affine_grid(theta.expand(len(x), 2, 3), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def transform(
    x: Tensor, domain: str, generator: torch.Generator, rotation: float, noise_std: float, scale: float
) -> Tensor:
    """Domain `domain`'s view of images `x` (N, 1, H, W) in [0, 1]."""
    if domain == "none":
        return x
    if domain == "invert":
        return 1.0 - x
    if domain == "noise":
        noise = torch.randn(x.shape, generator=generator) * noise_std
        return (x + noise).clamp(0.0, 1.0)
    if domain == "rotate":
        a = math.radians(rotation)
        theta = torch.tensor([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0]])
        return _warp(x, theta)
    if domain == "scale":
        theta = torch.tensor([[1.0 / scale, 0.0, 0.0], [0.0, 1.0 / scale, 0.0]])  # output u reads input u / scale
        return _warp(x, theta)
    raise OptionError("dataset.domains", domain, f"one of {', '.join(DOMAINS)}")


def _deal(num_samples: int, num_clients: int, rng: np.random.Generator) -> np.ndarray:
    """Client id of every sample: a random permutation dealt into near-equal parts."""
    owner = np.empty(num_samples, dtype=np.int64)
    for client, part in enumerate(np.array_split(rng.permutation(num_samples), num_clients)):
        owner[part] = client
    return owner


def load_mnist_feature_shift(
    root: str | None = None,
    download: bool = False,
    domains: Sequence[str] = DOMAINS,
    clients_per_domain: int = 20,
    train_samples: int | None = None,
    test_samples: int | None = None,
    rotation: float = 45.0,
    noise_std: float = 0.5,
    scale: float = 0.6,
    seed: int = 0,
) -> DatasetSplits:
    """MNIST under per-domain transforms, one natural client per (domain, index).

    Args:
        root, download: as `load_mnist`.
        domains: the transforms, one domain each (see the module docstring).
        clients_per_domain: clients of every domain.
        train_samples, test_samples: random subsets of the MNIST splits (None: all).
        rotation: degrees of the `rotate` domain.
        noise_std: noise std of the `noise` domain (pixels in [0, 1]).
        scale: the `scale` domain's shrink factor, in (0, 1].
        seed: the assignment and noise stream.
    """
    domains = [str(d) for d in domains]
    if not domains or len(set(domains)) != len(domains) or any(d not in DOMAINS for d in domains):
        raise OptionError("dataset.domains", domains, f"distinct names among {', '.join(DOMAINS)}")
    per_domain = check_int("dataset.clients_per_domain", clients_per_domain, 1)
    check_int("dataset.train_samples", train_samples, 1, none=True)
    check_int("dataset.test_samples", test_samples, 1, none=True)
    check_number("dataset.noise_std", noise_std, 0.0)
    check_number("dataset.scale", scale, 0.0, 1.0, low_open=True)
    check_number("dataset.rotation", rotation)
    mnist = load_mnist(root, download=download, normalize=False)
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(int(seed))
    num_clients = len(domains) * per_domain

    def build(x: Tensor, y: Tensor, limit: int | None) -> tuple[Tensor, Tensor, np.ndarray]:
        if limit is not None and limit < len(y):
            keep = torch.from_numpy(np.sort(rng.choice(len(y), size=limit, replace=False)))
            x, y = x[keep], y[keep]
        owner = _deal(len(y), num_clients, rng)
        out = torch.empty_like(x)
        for d, domain in enumerate(domains):
            rows = torch.from_numpy(np.flatnonzero(owner // per_domain == d))
            out[rows] = transform(x[rows], domain, generator, rotation, noise_std, scale)
        return out.sub_(MNIST_MEAN).div_(MNIST_STD), y, owner

    train_x, train_y, train_groups = build(mnist.train_x, mnist.train_y, train_samples)
    test_x, test_y, test_groups = build(mnist.test_x, mnist.test_y, test_samples)
    return DatasetSplits(
        name="mnist_feature_shift",
        train_x=train_x,
        train_y=train_y,
        test_x=test_x,
        test_y=test_y,
        num_classes=10,
        train_groups=train_groups,
        test_groups=test_groups,
        group_names=[f"{domain}-{i}" for domain in domains for i in range(per_domain)],
    )
