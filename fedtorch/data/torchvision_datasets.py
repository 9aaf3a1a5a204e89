"""CIFAR-10/100 and other torchvision image datasets, through the optional torchvision extra.

CIFAR-10/100: Krizhevsky 2009, "Learning Multiple Layers of Features from Tiny Images" (50,000 train
and 10,000 test 32x32 colour images; 10 or 100 classes). McMahan et al. 2017 run FedAvg on CIFAR-10;
Reddi et al. 2021 ("Adaptive Federated Optimization") use CIFAR-10/100 with ResNet-18 (GroupNorm)
and a Dirichlet or Pachinko partition. Any other `torchvision.datasets` class with a `train=` or
`split=` argument (SVHN, KMNIST, EMNIST needs `split=` for its subset and is not covered) can be
loaded by name with `load_torchvision("SVHN", ...)`.

torchvision is imported only when one of these loaders runs, so the core package does not need it.
Images become float32 (N, C, H, W) in [0, 1], then standardized per channel with the mean and std of
the train split (for CIFAR-10 that is the familiar 0.4914/0.4822/0.4465 and 0.2470/0.2435/0.2616),
computed rather than hard-coded so every dataset gets its own. Files are read from `root` in
torchvision's layout (e.g. <root>/cifar-10-batches-py); `download=True` fetches them when online.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedtorch.data.base import DatasetSplits


def _torchvision() -> Any:
    try:
        import torchvision  # optional dependency: imported on use, never at package import
    except ImportError as e:
        raise ImportError(
            "this dataset needs torchvision, an optional dependency of fedtorch: pip install torchvision "
            "(the version matching your torch)"
        ) from e
    return torchvision


def _open(cls: type, root: Path, train: bool, download: bool) -> Any:
    params = inspect.signature(cls).parameters
    if "train" in params:
        return cls(str(root), train=train, download=download)
    if "split" in params:
        return cls(str(root), split="train" if train else "test", download=download)
    raise ValueError(f"{cls.__name__} has neither a train= nor a split= argument; load it by hand")


def _arrays(dataset: Any) -> tuple[np.ndarray, np.ndarray]:
    """(N, C, H, W) float32 images in [0, 1] and int64 labels, without a per-sample loop where possible."""
    data = getattr(dataset, "data", None)
    targets = getattr(dataset, "targets", getattr(dataset, "labels", None))
    if isinstance(data, np.ndarray | torch.Tensor) and targets is not None and len(data) == len(targets):
        images = np.asarray(data)
        if images.ndim == 3:  # (N, H, W) grey
            images = images[:, None]
        elif images.ndim == 4 and images.shape[-1] in (1, 3, 4) and images.shape[1] not in (1, 3, 4):
            images = images.transpose(0, 3, 1, 2)  # NHWC (CIFAR) -> NCHW
        x = images.astype(np.float32) / 255.0 if images.dtype == np.uint8 else images.astype(np.float32)
        return np.ascontiguousarray(x), np.asarray(targets, dtype=np.int64)
    # Generic path: let torchvision decode every sample (slow, but any dataset of PIL images works).
    dataset.transform = _torchvision().transforms.ToTensor()
    xs, ys = zip(*(dataset[i] for i in range(len(dataset))), strict=True)
    return torch.stack(xs).numpy(), np.asarray(ys, dtype=np.int64)


def load_torchvision(
    name: str, root: str | None = None, download: bool = False, normalize: bool = True
) -> DatasetSplits:
    """Any torchvision image-classification dataset by class name ("CIFAR10", "SVHN", ...) as tensors.

    Args:
        name: class name in `torchvision.datasets`.
        root: torchvision root folder (default $FEDTORCH_DATA, else ./data).
        download: let torchvision download the files when they are missing (needs network).
        normalize: standardize every channel with the train split's mean and std.
    """
    torchvision = _torchvision()
    cls = getattr(torchvision.datasets, name, None)
    if not isinstance(cls, type):
        raise ValueError(f"torchvision.datasets has no dataset class {name!r}")
    folder = Path(root if root not in (None, "") else os.environ.get("FEDTORCH_DATA", "data")).expanduser()
    try:
        train, test = _open(cls, folder, True, download), _open(cls, folder, False, download)
    except RuntimeError as e:  # torchvision: "Dataset not found or corrupted. You can use download=True ..."
        raise FileNotFoundError(
            f"{name}: torchvision found no usable files in {folder} ({e}). Point data_dir=... (or $FEDTORCH_DATA) "
            "at the folder holding them, or set dataset.download=true when online."
        ) from e
    (train_x, train_y), (test_x, test_y) = _arrays(train), _arrays(test)
    if normalize:
        mean = train_x.mean(axis=(0, 2, 3), keepdims=True, dtype=np.float64)
        std = train_x.std(axis=(0, 2, 3), keepdims=True, dtype=np.float64)
        std = np.where(std > 0, std, 1.0)
        train_x = ((train_x - mean) / std).astype(np.float32)
        test_x = ((test_x - mean) / std).astype(np.float32)
    classes = getattr(train, "classes", None)
    num_classes = len(classes) if classes else int(max(train_y.max(), test_y.max())) + 1
    return DatasetSplits(
        name=name.lower(),
        train_x=torch.from_numpy(train_x),
        train_y=torch.from_numpy(train_y),
        test_x=torch.from_numpy(test_x),
        test_y=torch.from_numpy(test_y),
        num_classes=num_classes,
    )


def load_cifar10(root: str | None = None, download: bool = False, normalize: bool = True) -> DatasetSplits:
    """CIFAR-10: float32 (N, 3, 32, 32), per-channel standardized; 10 classes. Reads <root>/cifar-10-batches-py."""
    return load_torchvision("CIFAR10", root, download, normalize)


def load_cifar100(root: str | None = None, download: bool = False, normalize: bool = True) -> DatasetSplits:
    """CIFAR-100 (fine labels): float32 (N, 3, 32, 32), per-channel standardized; 100 classes."""
    return load_torchvision("CIFAR100", root, download, normalize)
