"""Dataset loaders: the real files in the shared data folder, plus small synthetic files for edge cases."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import math
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from fedtorch.data.heart_disease import FLAMBY_FEATURES, HOSPITALS, load_heart_disease, read_heart_disease_raw
from fedtorch.data.leaf import (
    NumericFeaturizer,
    Sent140BagOfWords,
    Sent140Tokens,
    load_leaf,
    load_sent140,
    tokenize,
)
from fedtorch.data.mnist import load_fashion_mnist, load_mnist, read_idx
from fedtorch.data.shakespeare import LEAF_CHARS, encode_chars, load_shakespeare, parse_roles
from tests.conftest import shared_data_dir

DATA = shared_data_dir()


def need(*relative: str) -> None:
    missing = [r for r in relative if not (DATA / r).exists()]
    if missing:
        pytest.skip(f"real data not found: {', '.join(missing)} under {DATA} (set FEDTORCH_DATA to the shared data)")


# ----------------------------------------------------------------------------- checksums


def test_shared_files_match_sha256sums() -> None:
    need("SHA256SUMS")
    lines = (DATA / "SHA256SUMS").read_text().split("\n")
    entries = [line.split(maxsplit=1) for line in lines if line.strip()]
    assert len(entries) == 10
    for digest, name in entries:
        path = DATA / name.strip().removeprefix("./")
        assert hashlib.sha256(path.read_bytes()).hexdigest() == digest, f"{path} differs from SHA256SUMS"


# ----------------------------------------------------------------------------- MNIST / Fashion-MNIST


def write_idx(path: Path, array: np.ndarray, type_code: int = 0x08) -> None:
    header = bytes([0, 0, type_code, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    payload = header + array.astype(np.uint8).tobytes()
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


def test_mnist_real_files() -> None:
    need("MNIST/raw/train-images-idx3-ubyte")
    data = load_mnist(str(DATA))
    assert data.train_x.shape == (60000, 1, 28, 28) and data.test_x.shape == (10000, 1, 28, 28)
    assert data.train_x.dtype == torch.float32 and data.train_y.dtype == torch.int64
    assert data.num_classes == 10 and data.train_groups is None
    assert data.train_y[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]  # the famous first ten digits
    assert torch.bincount(data.train_y).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert set(data.test_y.unique().tolist()) == set(range(10))
    # Standardized with the published mean/std, so the train set is close to mean 0, std 1.
    assert abs(data.train_x.mean().item()) < 1e-3 and abs(data.train_x.std().item() - 1) < 1e-3
    assert data.train_x.min().item() == pytest.approx(-0.1307 / 0.3081, abs=1e-5)
    raw = load_mnist(str(DATA), normalize=False)
    assert raw.train_x.min() == 0 and raw.train_x.max() == 1


def test_fashion_mnist_from_synthetic_idx_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    folder = tmp_path / "FashionMNIST" / "raw"
    folder.mkdir(parents=True)
    train_images = rng.integers(0, 256, size=(7, 28, 28), dtype=np.uint8)
    train_labels = rng.integers(0, 10, size=7, dtype=np.uint8)
    test_images = rng.integers(0, 256, size=(3, 28, 28), dtype=np.uint8)
    test_labels = np.array([9, 0, 4], dtype=np.uint8)
    write_idx(folder / "train-images-idx3-ubyte.gz", train_images)  # gzipped and plain files mix freely
    write_idx(folder / "train-labels-idx1-ubyte", train_labels)
    write_idx(folder / "t10k-images-idx3-ubyte", test_images)
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", test_labels)

    data = load_fashion_mnist(str(tmp_path))
    assert data.name == "fashion_mnist" and data.train_x.shape == (7, 1, 28, 28) and data.test_x.shape == (3, 1, 28, 28)
    expected = (torch.from_numpy(train_images.astype(np.float32)) / 255 - 0.2860) / 0.3530
    assert torch.allclose(data.train_x[:, 0], expected, atol=1e-6)
    assert data.train_y.tolist() == train_labels.tolist() and data.test_y.tolist() == [9, 0, 4]


def test_idx_corruption_is_reported(tmp_path: Path) -> None:
    good = tmp_path / "ok-idx1-ubyte"
    write_idx(good, np.arange(5, dtype=np.uint8))
    assert read_idx(good).tolist() == [0, 1, 2, 3, 4]
    truncated = tmp_path / "truncated"
    truncated.write_bytes(good.read_bytes()[:-1])
    with pytest.raises(ValueError, match="truncated.*shape \\(5,\\)"):
        read_idx(truncated)
    bad_magic = tmp_path / "bad_magic"
    bad_magic.write_bytes(b"\x01\x02\x08\x01" + good.read_bytes()[4:])
    with pytest.raises(ValueError, match="bad_magic.*magic"):
        read_idx(bad_magic)
    bad_gzip = tmp_path / "broken.gz"
    bad_gzip.write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match="broken.gz"):
        read_idx(bad_gzip)


def test_download_reads_what_it_fetched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """download=True through a file:// mirror (synthetic Fashion-MNIST .gz files): fetched once, then parsed."""
    from fedtorch.data import download

    mirror = tmp_path / "mirror"
    mirror.mkdir()
    arrays = {
        "train-images-idx3-ubyte.gz": np.full((4, 28, 28), 255, dtype=np.uint8),
        "train-labels-idx1-ubyte.gz": np.array([1, 2, 3, 4], dtype=np.uint8),
        "t10k-images-idx3-ubyte.gz": np.zeros((2, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte.gz": np.array([5, 6], dtype=np.uint8),
    }
    for name, array in arrays.items():
        write_idx(mirror / name, array)
    files = tuple(download.Remote(name, name, hashlib.md5((mirror / name).read_bytes()).hexdigest()) for name in arrays)
    spec = download.Dataset("FashionMNIST/raw", (mirror.as_uri() + "/",), files)
    monkeypatch.setitem(download.DATASETS, "fashion_mnist", spec)

    data = load_fashion_mnist(str(tmp_path / "root"), download=True)
    assert data.train_y.tolist() == [1, 2, 3, 4] and data.test_y.tolist() == [5, 6]
    assert data.train_x.max().item() == pytest.approx((1 - 0.2860) / 0.3530)
    assert sorted(p.name for p in (tmp_path / "root" / "FashionMNIST" / "raw").iterdir()) == sorted(arrays)

    bad = tuple(dataclasses.replace(r, md5="0" * 32) if r.name.startswith("t10k-labels") else r for r in files)
    monkeypatch.setitem(download.DATASETS, "fashion_mnist", dataclasses.replace(spec, files=bad))
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte.gz.*md5"):
        load_fashion_mnist(str(tmp_path / "other"), download=True)
    assert not (tmp_path / "other" / "FashionMNIST" / "raw" / "t10k-labels-idx1-ubyte.gz").exists()


def test_missing_files_name_the_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"FashionMNIST/raw.*data_dir=") as info:
        load_fashion_mnist(str(tmp_path))
    assert "\n" not in str(info.value) and "train-images-idx3-ubyte" in str(info.value)
    with pytest.raises(FileNotFoundError, match=r"heart_disease.*processed.cleveland.data.*data_dir="):
        load_heart_disease(str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"tinyshakespeare_input.txt.*FEDTORCH_DATA"):
        load_shakespeare(str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"all_data_niid_0_keep_30_test_9.json.*data_dir="):
        load_sent140(str(tmp_path))


# ----------------------------------------------------------------------------- Fed-Heart-Disease


def test_heart_disease_raw_counts() -> None:
    need("heart_disease/processed.va.data")
    raw = read_heart_disease_raw(str(DATA))
    assert {h: a.shape for h, a in raw.items()} == {
        "cleveland": (303, 14),
        "hungarian": (294, 14),
        "switzerland": (123, 14),
        "va": (200, 14),
    }
    assert np.isnan(raw["hungarian"][:, 11]).sum() == 291  # `ca` is almost never recorded in Budapest


def test_heart_disease_flamby() -> None:
    need("heart_disease/processed.va.data")
    data = load_heart_disease(str(DATA))
    assert data.group_names == list(HOSPITALS) and data.num_classes == 2
    assert data.train_x.shape == (486, len(FLAMBY_FEATURES)) == (486, 13) and data.test_x.shape == (254, 13)
    # FLamby's published per-center sizes: train/test 199/104, 172/89, 30/16, 85/45.
    assert np.bincount(data.train_groups).tolist() == [199, 172, 30, 85]
    assert np.bincount(data.test_groups).tolist() == [104, 89, 16, 45]
    assert set(data.train_y.tolist()) == {0, 1} and data.train_y.dtype == torch.int64
    assert not data.train_x.isnan().any() and not data.test_x.isnan().any()
    for k in range(4):  # standardized with the hospital's own train statistics
        center = data.train_x[torch.from_numpy(data.train_groups == k)]
        assert center.mean(0).abs().max() < 1e-5
        stds = center.std(0)
        assert torch.all(((stds - 1).abs() < 1e-4) | (stds < 1e-6))  # 1, or 0 for a constant column
    # Stratified: every hospital's train and test splits keep its label balance (within one patient).
    for k in range(4):
        tr, te = data.train_y[data.train_groups == k].float(), data.test_y[data.test_groups == k].float()
        n_pos = tr.sum() + te.sum()
        assert abs(tr.sum() - n_pos * len(tr) / (len(tr) + len(te))) <= 1
    same = load_heart_disease(str(DATA))
    other = load_heart_disease(str(DATA), seed=0)
    assert torch.equal(same.train_x, data.train_x) and not torch.equal(other.train_x, data.train_x)


FLAMBY_SPLIT = json.loads((Path(__file__).parent / "flamby_heart_disease_split.json").read_text())


def test_approximate_mode_matches_scikit_learns_examples() -> None:
    """The per-class draw counts of StratifiedShuffleSplit (scikit-learn's documented examples)."""
    from fedtorch.data.heart_disease import _approximate_mode

    def mode(counts: list[int], draws: int, seed: int) -> list[int]:
        return _approximate_mode(np.array(counts), draws, np.random.RandomState(seed)).tolist()

    assert mode([4, 2], 3, 0) == [2, 1]
    assert mode([5, 2], 4, 0) == [3, 1]
    assert mode([2, 2, 2, 1], 2, 0) == [0, 1, 1, 0]  # ties broken by the random stream
    assert mode([2, 2, 2, 1], 2, 42) == [1, 1, 0, 0]


def test_heart_disease_flamby_split_is_flambys_patient_for_patient() -> None:
    """split=flamby: FLamby's own test patients (recorded by running FLamby's code), same features."""
    need("heart_disease/processed.va.data")
    from fedtorch.data.heart_disease import _flamby_features, _flamby_split

    raw = read_heart_disease_raw(str(DATA))
    data = load_heart_disease(str(DATA), split="flamby")
    for k, hospital in enumerate(HOSPITALS):
        reference = FLAMBY_SPLIT["hospitals"][hospital]
        _, num = _flamby_features(raw[hospital])
        train = _flamby_split((num > 0).astype(np.int64), 0.66, 43)
        assert len(train) == reference["patients"]
        assert np.flatnonzero(~train).tolist() == reference["test_positions"], hospital
        for split, x, groups in (("train", data.train_x, data.train_groups), ("test", data.test_x, data.test_groups)):
            sums = x[torch.from_numpy(groups == k)].double().sum(0).numpy()
            assert np.allclose(sums, reference[f"{split}_feature_sums"], atol=1e-3), (hospital, split)
    assert np.bincount(data.train_groups).tolist() == [199, 172, 30, 85]
    # Switzerland has one negative patient: FLamby does not stratify it, and seed 43 puts it in test.
    swiss_train, swiss_test = data.train_y[data.train_groups == 2], data.test_y[data.test_groups == 2]
    assert (swiss_train == 0).sum() == 0 and (swiss_test == 0).sum() == 1
    ours = load_heart_disease(str(DATA))  # fedtorch's stratified draw keeps it in train
    assert (ours.train_y[ours.train_groups == 2] == 0).sum() == 1
    assert (ours.test_y[ours.test_groups == 2] == 0).sum() == 0
    with pytest.raises(ValueError, match="dataset.split='sklearn' is invalid"):
        load_heart_disease(str(DATA), split="sklearn")


def test_heart_disease_impute_keeps_everyone() -> None:
    need("heart_disease/processed.va.data")
    data = load_heart_disease(str(DATA), preprocessing="impute", normalize="pooled")
    sizes = np.bincount(data.train_groups) + np.bincount(data.test_groups)
    assert sizes.tolist() == [303, 294, 123, 200] and data.train_x.shape[1] == 13
    assert not data.train_x.isnan().any() and not data.test_x.isnan().any()
    assert data.train_x.mean(0).abs().max() < 1e-5  # pooled train statistics
    raw = load_heart_disease(str(DATA), preprocessing="impute", normalize="none")
    assert raw.train_x[:, 0].min() >= 28 and raw.train_x[:, 0].max() <= 77  # ages, untouched
    with pytest.raises(ValueError, match="preprocessing"):
        load_heart_disease(str(DATA), preprocessing="drop")


# ----------------------------------------------------------------------------- LEAF / Sent140


def test_sent140_real_file() -> None:
    need("leaf_sent140/all_data_niid_0_keep_30_test_9.json")
    raw = json.loads((DATA / "leaf_sent140/all_data_niid_0_keep_30_test_9.json").read_text())
    data = load_sent140(str(DATA))
    assert len(data.group_names) == 2875 and len(data.train_y) + len(data.test_y) == 16025
    assert data.train_x.shape == (len(data.train_y), 1000) and data.train_x.dtype == torch.float32
    assert data.num_classes == 2 and set(data.train_y.tolist()) == {0, 1}
    # LEAF's per-user split: max(1, int(0.9 n)) train samples (1 when n == 2), the rest test.
    train_sizes = np.bincount(data.train_groups, minlength=2875)
    test_sizes = np.bincount(data.test_groups, minlength=2875)
    for k, user in enumerate(data.group_names):
        n = len(raw["user_data"][user]["y"])
        assert train_sizes[k] == (1 if n == 2 else max(1, int(0.9 * n))) and train_sizes[k] + test_sizes[k] == n
    assert int(data.train_y.sum() + data.test_y.sum()) == sum(sum(raw["user_data"][u]["y"]) for u in raw["users"])
    few = load_sent140(str(DATA), min_samples=10)
    assert 0 < len(few.group_names) < 2875 and all(len(raw["user_data"][u]["y"]) >= 10 for u in few.group_names)


def test_sent140_featurizers() -> None:
    need("leaf_sent140/all_data_niid_0_keep_30_test_9.json")
    assert tokenize("@bob I can't wait!! http://x.co/a") == ["<user>", "i", "can't", "wait", "!", "!", "<url>"]
    tokens = Sent140Tokens(max_words=25)
    data = load_sent140(str(DATA), featurizer=tokens, max_users=300, seed=1)
    assert len(data.group_names) == 300 and data.train_x.shape[1] == 25 and data.train_x.dtype == torch.int64
    assert data.train_x.min() >= 0 and data.train_x.max() < tokens.num_embeddings
    hashed = load_sent140(str(DATA), featurizer=Sent140BagOfWords(vocab_size=64, hashed=True), max_users=300, seed=1)
    assert hashed.train_x.shape[1] == 64 and torch.equal(hashed.train_y, data.train_y)


def test_leaf_synthetic_file(tmp_path: Path) -> None:
    users = {f"u{i}": i + 1 for i in range(6)}  # 1..6 samples
    record = {
        "users": list(users),
        "num_samples": list(users.values()),
        "user_data": {
            u: {"x": [[float(i), float(-i)] for i in range(n)], "y": [i % 3 for i in range(n)]}
            for u, n in users.items()
        },
    }
    (tmp_path / "toy.json").write_text(json.dumps(record))
    data = load_leaf(str(tmp_path), file="toy.json", featurizer=NumericFeaturizer(shape=(2, 1)), seed=3)
    assert data.group_names == ["u1", "u2", "u3", "u4", "u5"]  # u0 has one sample: cannot be split
    assert data.train_x.shape[1:] == (2, 1) and data.num_classes == 3
    assert np.bincount(data.train_groups).tolist() == [1, 2, 3, 4, 5]  # max(1, int(0.9 n)); n == 2 -> 1
    assert np.bincount(data.test_groups).tolist() == [1, 1, 1, 1, 1]
    again = load_leaf(str(tmp_path), file="toy.json", featurizer=NumericFeaturizer(shape=(2, 1)), seed=3)
    assert torch.equal(again.train_x, data.train_x)
    assert len(load_leaf(str(tmp_path), file="toy.json", min_samples=4).group_names) == 3

    # LEAF's own train/test files: no split; test users missing from train are dropped.
    test_record = {"users": ["u5", "zz"], "user_data": {"u5": {"x": [[9.0, 9.0]], "y": [2]}, "zz": {"x": [], "y": []}}}
    (tmp_path / "toy_test.json").write_text(json.dumps(test_record))
    paired = load_leaf(str(tmp_path), file="toy.json", test_file="toy_test.json")
    assert len(paired.train_y) == 21 and paired.test_y.tolist() == [2] and paired.test_groups.tolist() == [5]

    record["num_samples"][0] = 99
    (tmp_path / "bad.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match="num_samples"):
        load_leaf(str(tmp_path), file="bad.json")


def test_sent140_vocabulary_from_train_only(tmp_path: Path) -> None:
    # Three tweets with disjoint words: 2 go to train, 1 to test. A vocabulary fitted on train only
    # cannot contain the test tweet's word, so its bag of words is empty.
    record = {"users": ["a"], "user_data": {"a": {"x": ["apple apple", "banana", "cherry"], "y": [1, 0, 1]}}}
    (tmp_path / "s.json").write_text(json.dumps(record))
    for seed in range(4):
        bow = Sent140BagOfWords(vocab_size=10, min_count=1)
        data = load_leaf(str(tmp_path), file="s.json", featurizer=bow, seed=seed)
        assert len(data.train_y) == 2 and len(data.test_y) == 1
        assert len(bow.vocab) == 2 and data.test_x.sum() == 0
        assert data.train_x.sum() == sum({"apple": 2, "banana": 1, "cherry": 1}[w] for w in bow.vocab)


# ----------------------------------------------------------------------------- Shakespeare


SMALL_PLAY = """ROMEO:
But soft, what light
through yonder window breaks?

JULIET:
Ay me!

ROMEO:
She speaks.

Second Servant:
$

"""


def test_shakespeare_parsing_and_windows(tmp_path: Path) -> None:
    assert parse_roles(SMALL_PLAY) == [
        ("ROMEO", "But soft, what light\nthrough yonder window breaks?\nShe speaks."),
        ("JULIET", "Ay me!"),
        ("Second Servant", "$"),
    ]
    assert len(LEAF_CHARS) == 80 and encode_chars("a$").tolist() == [LEAF_CHARS.index("a"), LEAF_CHARS.index(" ")]
    (tmp_path / "shakespeare").mkdir()
    (tmp_path / "shakespeare" / "tinyshakespeare_input.txt").write_text(SMALL_PLAY)
    data = load_shakespeare(str(tmp_path), seq_len=10)
    romeo = "But soft, what light\nthrough yonder window breaks?\nShe speaks."
    n = len(romeo) - 10
    assert data.group_names == ["ROMEO"] and data.num_classes == 80  # JULIET has 6 chars: no window of 10
    assert len(data.train_y) == math.floor(0.8 * n) and len(data.train_y) + len(data.test_y) == n

    def decode(row: torch.Tensor) -> str:
        return "".join(LEAF_CHARS[i] for i in row.tolist())

    assert decode(data.train_x[0]) == romeo[:10] and LEAF_CHARS[data.train_y[0]] == romeo[10]
    # Temporal split: the test windows continue where the train windows stop.
    assert decode(data.test_x[0]) == romeo[len(data.train_y) : len(data.train_y) + 10]
    assert LEAF_CHARS[data.test_y[-1]] == romeo[-1]


def test_shakespeare_real_text() -> None:
    need("shakespeare/tinyshakespeare_input.txt")
    data = load_shakespeare(str(DATA), min_samples=100, max_clients=40, max_samples_per_client=500, seed=0)
    assert len(data.group_names) == 40 and data.train_x.shape[1] == 80 and data.train_x.dtype == torch.int64
    per_client = np.bincount(data.train_groups) + np.bincount(data.test_groups)
    assert per_client.max() <= 500 and per_client.min() >= 100
    assert np.array_equal(np.unique(data.test_groups), np.arange(40))  # every role has a test split
    assert int(data.train_y.min()) >= 0 and int(data.train_y.max()) < 80
    full = load_shakespeare(str(DATA), min_samples=64)
    assert "ROMEO" in full.group_names and full.group_names[0] == "First Citizen"
    assert 200 < len(full.group_names) < 300
    assert 900_000 < len(full.train_y) + len(full.test_y) < 1_115_394
    assert len(full.train_y) / (len(full.train_y) + len(full.test_y)) == pytest.approx(0.8, abs=0.01)


# ----------------------------------------------------------------------------- torchvision (optional)


def test_torchvision_missing_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from fedtorch.data import torchvision_datasets

    monkeypatch.setitem(sys.modules, "torchvision", None)  # makes `import torchvision` fail
    with pytest.raises(ImportError, match="pip install torchvision"):
        torchvision_datasets.load_cifar10("/nonexistent")


def fake_torchvision(images: dict[bool, np.ndarray], labels: dict[bool, list[int]]) -> types.ModuleType:
    """A stand-in `torchvision` whose CIFAR10 holds NHWC uint8 arrays, like the real one."""

    class CIFAR10:
        classes = [str(i) for i in range(10)]

        def __init__(self, root: str, train: bool = True, download: bool = False) -> None:
            if not Path(root, "cifar-10-batches-py").is_dir():
                raise RuntimeError("Dataset not found or corrupted. You can use download=True to download it")
            self.data, self.targets = images[train], labels[train]

    module = types.ModuleType("torchvision")
    module.datasets = types.SimpleNamespace(CIFAR10=CIFAR10)  # type: ignore[attr-defined]
    return module


def test_torchvision_loader_with_a_fake_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fedtorch.data.torchvision_datasets import load_cifar10

    rng = np.random.default_rng(0)
    images = {True: rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8), False: np.zeros((5, 32, 32, 3), np.uint8)}
    monkeypatch.setitem(sys.modules, "torchvision", fake_torchvision(images, {True: [1] * 20, False: [2] * 5}))
    with pytest.raises(FileNotFoundError, match="CIFAR10.*data_dir="):
        load_cifar10(str(tmp_path))
    (tmp_path / "cifar-10-batches-py").mkdir()
    data = load_cifar10(str(tmp_path))
    assert data.train_x.shape == (20, 3, 32, 32) and data.test_x.shape == (5, 3, 32, 32) and data.num_classes == 10
    assert data.train_y.dtype == torch.int64 and data.test_y.tolist() == [2] * 5
    # NHWC -> NCHW, then per-channel standardization with train statistics.
    channel_mean = data.train_x.mean(dim=(0, 2, 3))
    assert channel_mean.abs().max() < 1e-5 and (data.train_x.std(dim=(0, 2, 3)) - 1).abs().max() < 1e-3
    raw = load_cifar10(str(tmp_path), normalize=False)
    assert torch.allclose(raw.train_x[3, 1], torch.from_numpy(images[True][3, :, :, 1] / 255).float())


def test_torchvision_real_cifar_missing_files(tmp_path: Path) -> None:
    pytest.importorskip("torchvision", reason="torchvision is an optional extra")
    from fedtorch.data.torchvision_datasets import load_cifar10

    with pytest.raises(FileNotFoundError, match="CIFAR10.*data_dir="):
        load_cifar10(str(tmp_path))


# ----------------------------------------------------------------------------- Hydra configs


@pytest.mark.parametrize(
    "name", ["mnist", "fashion_mnist", "heart_disease", "leaf", "sent140", "shakespeare", "cifar10", "cifar100"]
)
def test_dataset_configs_point_at_loaders(name: str, compose_config) -> None:  # noqa: ANN001 - conftest fixture
    from hydra.utils import get_method

    cfg = compose_config(f"dataset={name}", "data_dir=/some/where")
    assert callable(get_method(cfg.dataset._target_))
    assert cfg.dataset.root == "/some/where"


def test_heart_disease_config_instantiates(compose_config) -> None:  # noqa: ANN001 - conftest fixture
    need("heart_disease/processed.va.data")
    from hydra.utils import instantiate

    data = instantiate(compose_config("dataset=heart_disease", f"data_dir={DATA}").dataset)
    assert data.train_x.shape == (486, 13)
    sent = instantiate(compose_config("dataset=sent140", f"data_dir={DATA}", "dataset.max_users=50").dataset)
    assert sent.train_x.shape[1] == 1000 and len(sent.group_names) == 50
