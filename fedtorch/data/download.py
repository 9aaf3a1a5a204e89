"""Official dataset files, fetched when missing: checked against published checksums, written atomically.

A user without a prepared data folder gets the data on first use: every loader with a `download`
option (`dataset.download=true`, the configs' default) calls `fetch(dataset, root)`, which fetches
each missing file from the official mirrors (the ones torchvision uses for MNIST and Fashion-MNIST,
the UCI repository for heart disease, Karpathy's char-rnn repository for tiny Shakespeare), checks
its md5 against the published one and only then moves it into place. A file is written to a
temporary name in the same folder and renamed, so an interrupted or corrupt download never leaves a
file that looks complete. Files already present are not touched (the loaders check their structure).

Offline, or when no mirror serves the right bytes, `fetch` raises `DownloadError` (a
FileNotFoundError, which the CLI reports as one line on `data_dir`) saying which file to download
from where and in which folder to put it.

Sent140 has no single official file: LEAF builds it from the Sentiment140 archive with its own
scripts, see `SENT140_HOWTO`.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import tempfile
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from fedtorch.errors import OptionError


@dataclass(frozen=True)
class Remote:
    """One official file.

    Attributes:
        name: the file's name in its dataset folder (what the loader reads).
        source: its name on the mirrors (`name` + ".gz" when it is served gzipped).
        md5: the published md5 of the file as stored under `name` (after gunzip when `gunzip`).
        gunzip: the mirror serves it gzipped; it is stored decompressed.
    """

    name: str
    source: str
    md5: str
    gunzip: bool = False


@dataclass(frozen=True)
class Dataset:
    """Where a dataset's files go (`folder`, under the data root) and where they come from."""

    folder: str
    mirrors: tuple[str, ...]
    files: tuple[Remote, ...]


def _idx(name: str, md5: str, gunzip: bool) -> Remote:
    return Remote(name if gunzip else f"{name}.gz", f"{name}.gz", md5, gunzip)


# MNIST: the md5s of the four uncompressed IDX files (as listed with fedtorch's shared data); the
# mirrors serve them gzipped, so they are decompressed and checked as stored. Fashion-MNIST: the
# md5s of the official .gz files (as torchvision checks them), stored as served.
DATASETS: dict[str, Dataset] = {
    "mnist": Dataset(
        "MNIST/raw",
        ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
        (
            _idx("train-images-idx3-ubyte", "6bbc9ace898e44ae57da46a324031adb", gunzip=True),
            _idx("train-labels-idx1-ubyte", "a25bea736e30d166cdddb491f175f624", gunzip=True),
            _idx("t10k-images-idx3-ubyte", "2646ac647ad5339dbf082846283269ea", gunzip=True),
            _idx("t10k-labels-idx1-ubyte", "27ae3e4e09519cfbb04c329615203637", gunzip=True),
        ),
    ),
    "fashion_mnist": Dataset(
        "FashionMNIST/raw",
        ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        (
            _idx("train-images-idx3-ubyte", "8d4fb7e6c68d591d4c3dfef9ec88bf0d", gunzip=False),
            _idx("train-labels-idx1-ubyte", "25c81989df183df01b3e8a0aad5dffbe", gunzip=False),
            _idx("t10k-images-idx3-ubyte", "bef4ecab320f06d8554ea6380940ec79", gunzip=False),
            _idx("t10k-labels-idx1-ubyte", "bb300cfdad3c16e7a12a480ee83cd310", gunzip=False),
        ),
    ),
    # The md5s FLamby publishes with Fed-Heart-Disease (its download script checks the same ones).
    "heart_disease": Dataset(
        "heart_disease",
        ("https://archive.ics.uci.edu/ml/machine-learning-databases/heart-disease/",),
        tuple(
            Remote(f"processed.{hospital}.data", f"processed.{hospital}.data", md5)
            for hospital, md5 in (
                ("cleveland", "2d91a8ff69cfd9616aa47b59d6f843db"),
                ("hungarian", "22e96bee155b5973568101c93b3705f6"),
                ("switzerland", "9a87f7577310b3917730d06ba9349e20"),
                ("va", "4249d03ca7711e84f4444768c9426170"),
            )
        ),
    ),
    # Karpathy's tinyshakespeare (char-rnn); no md5 is published with it: this one is the file's
    # (sha256 86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed).
    "shakespeare": Dataset(
        "shakespeare",
        ("https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/",),
        (Remote("tinyshakespeare_input.txt", "input.txt", "6fb458f1232090904fb40fe944165e91"),),
    ),
}

SENT140_HOWTO = (
    "Sent140 has no single official file: LEAF builds it. Clone github.com/TalwalkarLab/leaf, run "
    "`./preprocess.sh -s niid --sf 1.0 -k 30 -t sample --tf 0.9` in data/sent140 (it downloads the "
    "Sentiment140 archive from Stanford), then copy data/sent140/data/test/all_data_niid_0_keep_30_test_9.json "
    "(or the train and test files, with dataset.test_file) into <data_dir>/leaf_sent140/"
)


class DownloadError(FileNotFoundError):
    """A needed file is missing and could not be downloaded (offline, or no mirror had the right bytes)."""


def md5_of(path: str | os.PathLike) -> str:
    """The md5 of a file, read in blocks."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _exists(folder: Path, remote: Remote) -> bool:
    # The IDX loaders read a file plain or gzipped: either one counts as present.
    stem = remote.name.removesuffix(".gz")
    return (folder / stem).is_file() or (folder / f"{stem}.gz").is_file()


def _copy(stream: BinaryIO, out: BinaryIO) -> str:
    """Copy `stream` to `out` in 1 MiB blocks; returns the md5 of what was copied."""
    digest = hashlib.md5(usedforsecurity=False)
    while block := stream.read(1 << 20):
        digest.update(block)
        out.write(block)
    return digest.hexdigest()


def download_file(remote: Remote, folder: Path, mirrors: Sequence[str], timeout: float = 60.0, label: str = "") -> Path:
    """Fetch `remote` into `folder` from the first mirror that serves the right bytes; returns its path.

    Raises DownloadError naming every mirror tried and why it failed (unreachable, wrong md5).
    """
    prefix = f"{label}: " if label else ""
    created = [p for p in (folder, *folder.parents) if not p.exists()]  # to remove again if nothing comes
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DownloadError(f"{prefix}cannot find {remote.name} in {folder} nor create the folder ({error})") from None
    target = folder / remote.name
    failures = []
    for mirror in mirrors:
        url = mirror.rstrip("/") + "/" + remote.source
        # A temporary file beside the target (same file system), renamed only once verified.
        handle, tmp = tempfile.mkstemp(dir=folder, prefix=f".{remote.name}.", suffix=".part")
        try:
            with os.fdopen(handle, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
                md5 = _copy(gzip.GzipFile(fileobj=response) if remote.gunzip else response, out)
            if md5 != remote.md5:
                raise ValueError(f"md5 {md5}, expected {remote.md5}")
            os.replace(tmp, target)
            return target
        except (OSError, EOFError, ValueError) as error:  # URLError and BadGzipFile are OSErrors
            failures.append(f"{url}: {error}")
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    for empty in created:  # innermost first: leave no empty folders behind an offline attempt
        if empty.exists() and not any(empty.iterdir()):
            empty.rmdir()
    how = f"{mirrors[0].rstrip('/')}/{remote.source}" + (" and gunzip it" if remote.gunzip else "")
    raise DownloadError(
        f"{prefix}cannot find {remote.name} in {folder} and could not download it "
        f"({'; '.join(failures)}). Download {how} (md5 {remote.md5}) into that folder, or point data_dir=... "
        "(or $FEDTORCH_DATA) at a data folder that has it"
    )


def fetch(dataset: str, root: str | os.PathLike, mirrors: Sequence[str] | None = None) -> Path:
    """Make sure every official file of `dataset` is in `<root>/<its folder>`; returns that folder.

    Missing files are downloaded (from `mirrors`, default the official ones) and md5-checked;
    present ones are left alone. `dataset` is one of `DATASETS` ("mnist", "fashion_mnist",
    "heart_disease", "shakespeare"); "sent140" raises with `SENT140_HOWTO`.
    """
    if dataset == "sent140":
        raise DownloadError(SENT140_HOWTO)
    if dataset not in DATASETS:
        raise OptionError("dataset", dataset, f"one of {', '.join(DATASETS)} to download")
    spec = DATASETS[dataset]
    folder = Path(root).expanduser() / spec.folder
    missing = [remote for remote in spec.files if not _exists(folder, remote)]
    for i, remote in enumerate(missing):
        try:
            download_file(remote, folder, tuple(mirrors) if mirrors is not None else spec.mirrors, label=dataset)
        except DownloadError as error:
            rest = missing[i + 1 :]
            if not rest:
                raise
            # One message for everything a user then has to download by hand.
            likewise = ", ".join(f"{r.source} (md5 {r.md5}{', gunzipped' if r.gunzip else ''})" for r in rest)
            raise DownloadError(f"{error}; likewise {likewise}") from None
    return folder


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m fedtorch.data.download DATASET [ROOT]`: fetch a dataset's missing files into ROOT."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m fedtorch.data.download", description=main.__doc__)
    parser.add_argument("dataset", choices=[*DATASETS, "sent140"])
    parser.add_argument("root", nargs="?", default=os.environ.get("FEDTORCH_DATA", "data"))
    args = parser.parse_args(argv)
    try:
        print(fetch(args.dataset, args.root))
    except DownloadError as error:
        raise SystemExit(f"fedtorch: error: {error}") from None


if __name__ == "__main__":
    main()
