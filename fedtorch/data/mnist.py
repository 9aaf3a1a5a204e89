"""MNIST and Fashion-MNIST, read straight from their IDX files (no torchvision needed).

MNIST: LeCun, Cortes and Burges, "The MNIST database of handwritten digits" (60,000 train + 10,000
test 28x28 grey digits). Fashion-MNIST: Xiao, Rasul and Vollgraf 2017, "Fashion-MNIST: a Novel Image
Dataset for Benchmarking Machine Learning Algorithms" (same format, 10 clothing classes). McMahan et
al. 2017 use MNIST for the 2NN/CNN FedAvg experiments; Fashion-MNIST is its drop-in harder twin.

Layout (what `torchvision.datasets.MNIST(root=...)` writes, so an existing torchvision download works):

    <root>/MNIST/raw/{train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte}
    <root>/FashionMNIST/raw/(same four names)

each either uncompressed or gzipped (`.gz`). Inputs become float32 (N, 1, 28, 28): pixels scaled to
[0, 1], then standardized with the usual dataset mean/std (MNIST 0.1307/0.3081, Fashion-MNIST
0.2860/0.3530), as in the PyTorch examples. The IDX header (magic number, dimensions) is checked
against the file size, so a truncated or corrupt file fails with a message naming it.
"""

from __future__ import annotations

import gzip
import os
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from fedtorch.data.base import DatasetSplits
from fedtorch.data.download import fetch

_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

# (folder under root, mean, std); the files' mirrors and md5s are in fedtorch.data.download.
_DATASETS = {
    "mnist": ("MNIST", 0.1307, 0.3081),
    "fashion_mnist": ("FashionMNIST", 0.2860, 0.3530),
}

# IDX type codes (third byte of the magic number) -> numpy big-endian dtypes.
_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def resolve_root(root: str | os.PathLike | None) -> Path:
    """The data folder: `root` if given, else $FEDTORCH_DATA, else ./data."""
    if root is None or str(root) == "":
        root = os.environ.get("FEDTORCH_DATA", "data")
    return Path(root).expanduser()


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Parse one IDX file (optionally gzipped) into a numpy array, validating its header.

    IDX format (LeCun's MNIST page): 2 zero bytes, a type code, the number of dimensions d, then d
    big-endian uint32 sizes and the data. Anything that does not add up raises ValueError with the
    file name, rather than producing a silently wrong array.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:  # gzip raises BadGzipFile (an OSError) or EOFError when truncated
        raise ValueError(f"{path}: cannot read IDX file ({e})") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path}: not an IDX file (bad magic number {raw[:4].hex() or 'empty'})")
    dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise ValueError(f"{path}: corrupt IDX header ({ndim} dimensions, {len(raw)} bytes)")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(raw) != expected:
        raise ValueError(f"{path}: IDX header says shape {shape} ({expected} bytes) but the file has {len(raw)} bytes")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _find(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


@lru_cache(maxsize=4)
def _load_arrays(folder: str, mtimes: tuple[float, ...]) -> dict[str, np.ndarray]:
    """Parse the four files once per process (keyed by modification times, so edits invalidate it)."""
    del mtimes  # only part of the cache key
    arrays = {key: read_idx(_find(Path(folder), name)) for key, name in _FILES.items()}  # type: ignore[arg-type]
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise ValueError(
                f"{folder}: {split} images have shape {images.shape} and labels {labels.shape}; "
                "expected (N, H, W) images and N labels"
            )
        for a in (images, labels):
            a.setflags(write=False)  # cached: callers must not modify them
    return arrays


def _load(dataset: str, root: str | os.PathLike | None, download: bool, normalize: bool) -> DatasetSplits:
    folder_name, mean, std = _DATASETS[dataset]
    folder = resolve_root(root) / folder_name / "raw"
    if download:
        fetch(dataset, resolve_root(root))  # only the missing files; raises one line when offline
    paths = [_find(folder, name) for name in _FILES.values()]
    if any(p is None for p in paths):
        missing = [name for name, p in zip(_FILES.values(), paths, strict=True) if p is None]
        raise FileNotFoundError(
            f"{dataset}: cannot find {', '.join(missing)} (uncompressed or .gz) in {folder}. Point data_dir=... (or "
            f"$FEDTORCH_DATA) at the folder that contains {folder_name}/raw, or set dataset.download=true when online."
        )
    arrays = _load_arrays(str(folder), tuple(p.stat().st_mtime for p in paths))  # type: ignore[union-attr]

    def images(a: np.ndarray) -> torch.Tensor:
        # (x / 255 - mean) / std folded into one multiply and one subtract: this is most of the load time.
        x = torch.from_numpy(a.copy()).unsqueeze(1).float()  # copy: the cached array is read-only
        return x.mul_(1.0 / (255.0 * std)).sub_(mean / std) if normalize else x.div_(255.0)

    def labels(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a.astype(np.int64))

    return DatasetSplits(
        name=dataset,
        train_x=images(arrays["train_images"]),
        train_y=labels(arrays["train_labels"]),
        test_x=images(arrays["test_images"]),
        test_y=labels(arrays["test_labels"]),
        num_classes=10,
    )


def load_mnist(root: str | None = None, download: bool = False, normalize: bool = True) -> DatasetSplits:
    """MNIST digits: float32 (N, 1, 28, 28) standardized with mean 0.1307 / std 0.3081; labels 0-9.

    Args:
        root: folder holding MNIST/raw (default $FEDTORCH_DATA, else ./data).
        download: fetch the official files into root when they are missing (needs network; md5-checked).
        normalize: standardize after scaling to [0, 1]; False leaves pixels in [0, 1].
    """
    return _load("mnist", root, download, normalize)


def load_fashion_mnist(root: str | None = None, download: bool = False, normalize: bool = True) -> DatasetSplits:
    """Fashion-MNIST: float32 (N, 1, 28, 28) standardized with mean 0.2860 / std 0.3530; labels 0-9.

    Same arguments as `load_mnist`; files are read from <root>/FashionMNIST/raw.
    """
    return _load("fashion_mnist", root, download, normalize)
