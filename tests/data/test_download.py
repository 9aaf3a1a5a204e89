"""Downloads of the official files, offline: `file://` mirrors holding copies of the shared data.

The manifest's md5s are checked against the real files (so a typo in a published checksum fails
here), a download is checked end to end (fetched, verified, renamed into place), a corrupt copy is
refused without leaving anything behind, and an offline attempt fails with one line that says what
to download and where to put it.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import shutil
import urllib.error
from pathlib import Path

import numpy as np
import pytest

from fedtorch.data import download
from fedtorch.data.download import DATASETS, DownloadError, fetch, md5_of
from fedtorch.data.heart_disease import load_heart_disease
from fedtorch.data.leaf import load_sent140
from fedtorch.data.mnist import load_mnist
from fedtorch.data.shakespeare import load_shakespeare
from tests.conftest import shared_data_dir

DATA = shared_data_dir()


def need(folder: str) -> Path:
    if not (DATA / folder).is_dir():
        pytest.skip(f"real data not found: {folder} under {DATA} (set FEDTORCH_DATA to the shared data)")
    return DATA / folder


def mirror_of(tmp_path: Path, dataset: str, corrupt: str | None = None) -> Path:
    """A folder laid out like the dataset's official mirror, from the shared copies (gzipped where served so)."""
    spec, source = DATASETS[dataset], need(DATASETS[dataset].folder)
    mirror = tmp_path / f"mirror-{dataset}"
    mirror.mkdir(exist_ok=True)
    for remote in spec.files:
        payload = (source / remote.name).read_bytes()
        if remote.name == corrupt:
            payload = payload[:-1] + bytes([payload[-1] ^ 1])  # one flipped bit
        if remote.gunzip:
            payload = gzip.compress(payload, compresslevel=1)
        (mirror / remote.source).write_bytes(payload)
    return mirror


@pytest.mark.parametrize("dataset", ["mnist", "heart_disease", "shakespeare"])
def test_published_md5s_match_the_real_files(dataset: str) -> None:
    folder = need(DATASETS[dataset].folder)
    for remote in DATASETS[dataset].files:
        assert hashlib.md5((folder / remote.name).read_bytes()).hexdigest() == remote.md5, remote.name


def test_fetch_heart_disease_and_load_it(tmp_path: Path) -> None:
    mirror = mirror_of(tmp_path, "heart_disease")
    root = tmp_path / "root"
    folder = fetch("heart_disease", root, mirrors=[mirror.as_uri()])
    for remote in DATASETS["heart_disease"].files:
        assert (folder / remote.name).read_bytes() == (DATA / "heart_disease" / remote.name).read_bytes()
    assert sorted(p.name for p in folder.iterdir()) == sorted(r.name for r in DATASETS["heart_disease"].files)
    shutil.rmtree(mirror)  # present files are never fetched again
    fetch("heart_disease", root, mirrors=[mirror.as_uri()])
    data = load_heart_disease(str(root), download=True)  # found: no network needed
    assert data.train_x.shape == (486, 13)


def test_fetch_mnist_gunzips_and_checks_what_it_stores(tmp_path: Path) -> None:
    mirror = mirror_of(tmp_path, "mnist")
    folder = fetch("mnist", tmp_path / "root", mirrors=["file:///nowhere/offline", mirror.as_uri()])  # second works
    for remote in DATASETS["mnist"].files:
        assert md5_of(folder / remote.name) == md5_of(DATA / "MNIST" / "raw" / remote.name)
    data = load_mnist(str(tmp_path / "root"))
    assert data.train_x.shape == (60000, 1, 28, 28) and np.bincount(data.test_y.numpy()).sum() == 10000


def test_a_corrupt_download_is_refused(tmp_path: Path) -> None:
    bad = mirror_of(tmp_path, "heart_disease", corrupt="processed.va.data")
    root = tmp_path / "root"
    with pytest.raises(DownloadError, match=r"processed\.va\.data.*md5 [0-9a-f]{32}, expected 4249d03c") as info:
        fetch("heart_disease", root, mirrors=[bad.as_uri()])
    assert "\n" not in str(info.value)
    folder = root / "heart_disease"
    assert not (folder / "processed.va.data").exists()  # nothing that looks complete
    assert not list(folder.glob(".*part")), "a temporary file was left behind"
    assert (folder / "processed.cleveland.data").is_file()  # the good files before it were kept
    (tmp_path / "good").mkdir()
    good = mirror_of(tmp_path / "good", "heart_disease")
    fetch("heart_disease", root, mirrors=[bad.as_uri(), good.as_uri()])  # the next mirror has the right bytes
    assert md5_of(folder / "processed.va.data") == "4249d03ca7711e84f4444768c9426170"


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(url: str, *args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("offline")

    monkeypatch.setattr(download.urllib.request, "urlopen", refuse)


def test_offline_is_one_line_saying_what_to_download(tmp_path: Path, offline: None) -> None:
    root = tmp_path / "fresh"
    with pytest.raises(FileNotFoundError) as info:
        load_mnist(str(root), download=True)
    message = str(info.value)
    assert isinstance(info.value, DownloadError) and "\n" not in message
    assert message.startswith("mnist: cannot find train-images-idx3-ubyte in ")
    assert "https://ossci-datasets.s3.amazonaws.com/mnist/train-images-idx3-ubyte.gz and gunzip it" in message
    assert "6bbc9ace898e44ae57da46a324031adb" in message and "data_dir=" in message
    assert "; likewise train-labels-idx1-ubyte.gz (md5 a25bea736e30d166cdddb491f175f624, gunzipped), " in message
    assert message.endswith("t10k-labels-idx1-ubyte.gz (md5 27ae3e4e09519cfbb04c329615203637, gunzipped)")
    assert not root.exists(), "an offline attempt left folders behind"
    with pytest.raises(DownloadError, match=r"shakespeare: cannot find tinyshakespeare_input.txt.*char-rnn"):
        load_shakespeare(str(root), download=True)
    with pytest.raises(DownloadError, match=r"heart_disease: cannot find processed.cleveland.data.*archive.ics"):
        load_heart_disease(str(root), download=True)


def test_sent140_says_how_leaf_builds_it(tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match=r"no single official file.*preprocess.sh -s niid --sf 1.0 -k 30") as info:
        load_sent140(str(tmp_path), download=True)
    assert "\n" not in str(info.value) and "leaf_sent140" in str(info.value)


def test_download_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    mirror = mirror_of(tmp_path, "shakespeare")
    spec = dataclasses.replace(DATASETS["shakespeare"], mirrors=(mirror.as_uri(),))
    monkeypatch.setitem(DATASETS, "shakespeare", spec)
    download.main(["shakespeare", str(tmp_path / "root")])
    assert capsys.readouterr().out.strip() == str(tmp_path / "root" / "shakespeare")
    assert md5_of(tmp_path / "root" / "shakespeare" / "tinyshakespeare_input.txt") == spec.files[0].md5
    with pytest.raises(SystemExit, match="fedtorch: error: Sent140 has no single official file"):
        download.main(["sent140", str(tmp_path)])
