"""Generated federations: nothing to download, so they are the defaults and the test fixtures.

- `load_linear_regression`: the founding document's example, y = 2x + 1 + noise.
- `load_fedprox_synthetic`: Synthetic(alpha, beta) of Li et al. 2020 ("Federated Optimization in
  Heterogeneous Networks", FedProx), itself after Shamir et al. 2014; and its IID variant. Up to
  `LAZY_ABOVE_DEVICES` devices it is generated up front from one stream, as it always was (the
  published figures and the default run's model); above, device by device when sampled
  (`fedtorch.data.generated.FedProxSynthetic`), so a million devices never exist at once.
"""

from __future__ import annotations

import numpy as np
import torch

from fedtorch.data.base import DatasetSplits
from fedtorch.data.generated import (
    DEFAULT_TEST_CLIENTS,
    FedProxSynthetic,
    GeneratedFederation,
    fedprox_device,
    train_split_sizes,
)
from fedtorch.errors import OptionError

#: `lazy: auto` generates FedProx Synthetic device by device above this many devices (eagerly at
#: or below: the same data as before this option existed, bit for bit).
LAZY_ABOVE_DEVICES = 1000


def load_linear_regression(
    root: str | None = None,
    num_samples: int = 1000,
    num_test: int = 200,
    weight: float = 2.0,
    bias: float = 1.0,
    noise_std: float = 1.0,
    seed: int = 0,
) -> DatasetSplits:
    """y = weight * x + bias + N(0, noise_std^2), x ~ U[0, 1): 1000 samples as in the founding document.

    The data is a fixed function of `seed` (not of the run's seed), so that the federated estimate
    can be compared against the centralized least-squares fit of exactly the same samples.
    """
    rng = np.random.default_rng(seed)

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = rng.uniform(0.0, 1.0, size=(n, 1))
        y = weight * x[:, 0] + bias + rng.normal(0.0, noise_std, size=n)
        return torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)

    train_x, train_y = draw(num_samples)
    test_x, test_y = draw(num_test)
    return DatasetSplits("linear_regression", train_x, train_y, test_x, test_y, num_classes=None)


def least_squares_fit(x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Centralized ordinary least squares for a scalar input: returns (weight, bias) in float64."""
    x64 = x.reshape(-1).double()
    design = torch.stack([x64, torch.ones_like(x64)], dim=1)
    solution = torch.linalg.lstsq(design, y.double().reshape(-1, 1)).solution
    return float(solution[0, 0]), float(solution[1, 0])


def load_fedprox_synthetic(
    root: str | None = None,
    alpha: float = 1.0,
    beta: float = 1.0,
    iid: bool = False,
    num_devices: int = 30,
    num_features: int = 60,
    num_classes: int = 10,
    train_fraction: float = 0.8,
    max_samples_per_device: int | None = None,
    seed: int = 0,
    lazy: bool | str = "auto",
    test_devices: int | None = DEFAULT_TEST_CLIENTS,
) -> DatasetSplits | GeneratedFederation:
    """FedProx's Synthetic(alpha, beta) federation (Li et al. 2020, Section 5.1).

    Device k draws u_k ~ N(0, alpha) and B_k ~ N(0, beta); its model is W_k ~ N(u_k, 1) (10 x 60)
    and b_k ~ N(u_k, 1); its inputs are x ~ N(v_k, Sigma) with v_k[j] ~ N(B_k, 1) and Sigma
    diagonal, Sigma_jj = j^-1.2; labels are y = argmax(softmax(W_k x + b_k)). So alpha controls how
    much the local models differ and beta how much the local inputs differ. Device sizes follow the
    paper's code: lognormal(4, 2) + 50. The IID variant shares one W, b ~ N(0, 1) and draws every
    x ~ N(0, Sigma). Each device keeps `train_fraction` of its samples for training and the rest
    as its own test split; the central test set is the union of those splits.

    `lazy`: false generates every device now from one stream (a `DatasetSplits`, to partition);
    true returns a `GeneratedFederation` whose devices are generated when sampled, each from a
    stream of its own (the same model, different draws), with the test splits of `test_devices`
    devices as the central test set; auto is lazy above `LAZY_ABOVE_DEVICES` devices.
    """
    if lazy not in (True, False, "auto"):
        raise OptionError("dataset.lazy", lazy, "true, false or auto")
    if lazy is True or (lazy == "auto" and num_devices > LAZY_ABOVE_DEVICES):
        generator = FedProxSynthetic(
            alpha, beta, iid, num_devices, num_features, num_classes, train_fraction, max_samples_per_device, seed
        )
        return GeneratedFederation.create(generator, test_devices)
    rng = np.random.default_rng(seed)
    sizes = rng.lognormal(4, 2, num_devices).astype(np.int64) + 50
    if max_samples_per_device is not None:
        sizes = np.minimum(sizes, max_samples_per_device)
    shared_w = rng.normal(0, 1, (num_features, num_classes))
    shared_b = rng.normal(0, 1, num_classes)

    xs_train, ys_train, gs_train, xs_test, ys_test, gs_test = [], [], [], [], [], []
    train_sizes = train_split_sizes(sizes, train_fraction)  # the lazy generator's split, so both agree
    for k, (n, n_train) in enumerate(zip(sizes.tolist(), train_sizes.tolist())):
        shared = (shared_w, shared_b) if iid else None
        x, y = fedprox_device(rng, n, num_features, num_classes, alpha, beta, shared)
        xs_train.append(x[:n_train])
        ys_train.append(y[:n_train])
        gs_train.append(np.full(n_train, k))
        xs_test.append(x[n_train:])
        ys_test.append(y[n_train:])
        gs_test.append(np.full(n - n_train, k))

    def cat(parts: list[np.ndarray], dtype: torch.dtype) -> torch.Tensor:
        return torch.tensor(np.concatenate(parts), dtype=dtype)

    name = "fedprox_synthetic_iid" if iid else f"fedprox_synthetic_{alpha:g}_{beta:g}"
    return DatasetSplits(
        name,
        cat(xs_train, torch.float32),
        cat(ys_train, torch.int64),
        cat(xs_test, torch.float32),
        cat(ys_test, torch.int64),
        num_classes=num_classes,
        train_groups=np.concatenate(gs_train),
        test_groups=np.concatenate(gs_test),
        group_names=[f"device_{k}" for k in range(num_devices)],
    )
