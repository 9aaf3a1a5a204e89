"""Fed-Heart-Disease: the UCI Heart Disease data as a 4-hospital cross-silo federation.

Data: Janosi, Steinbrunn, Pfisterer and Detrano (1988), "Heart Disease", UCI Machine Learning
Repository (CC BY 4.0): the `processed.{cleveland,hungarian,switzerland,va}.data` files, 303 / 294 /
123 / 200 patients, 13 clinical attributes plus `num` (0-4, angiographic disease grade). The
federated benchmark is FLamby's Fed-Heart-Disease (Ogier du Terrail et al., NeurIPS 2022 Datasets
and Benchmarks, "FLamby: Datasets and Benchmarks for Cross-Silo Federated Learning in Realistic
Healthcare Settings"): one client per hospital, binary target `num > 0`.

Preprocessing, `preprocessing="flamby"` (default; reproduces FLamby's `HeartDiseaseRaw`, read from
owkin/FLamby flamby/datasets/fed_heart_disease/dataset.py):
  * drop the three mostly-missing columns slope, ca and thal, then drop every patient that still
    has a `?`; this leaves 303 / 261 / 46 / 130 = 740 patients;
  * one-hot encode chest-pain type `cp` (1-4) and `restecg` (0-2), dropping the first level, which
    gives 13 features in FLamby's (pandas.get_dummies) order: age, sex, trestbps, chol, fbs,
    thalach, exang, oldpeak, cp_2, cp_3, cp_4, restecg_1, restecg_2;
  * split every hospital into train/test with FLamby's sizes, n_train = floor(0.66 n) (199/104,
    172/89, 30/16, 85/45; 486 train and 254 test patients), in one of two ways (`split`):
      - `split="flamby"`: FLamby's own split, patient for patient. FLamby draws it with
        scikit-learn's `train_test_split(random_state=43)`, stratified on the binary label only
        where both classes have more than 2 patients; `_flamby_split` reproduces that procedure
        with NumPy's legacy RandomState (no scikit-learn needed), checked against FLamby's code.
        Switzerland (45 positive, 1 negative) is therefore split at random: with seed 43 its one
        negative patient is a test patient, so its train split has no negative case at all.
      - `split="stratified"` (the default, fedtorch's draw): stratified in every hospital by the
        largest-remainder rule, with NumPy's Generator seeded by (`seed`, hospital). Same sizes and,
        where FLamby stratifies, the same class balance, but other patients; and Switzerland is
        stratified too, which always puts its single negative case in train (0.65 of a patient
        rounds up), so its test split is all positive. Results on Switzerland (and the pooled
        metrics) differ between the two splits for that reason alone;
  * standardize with the statistics of the hospital's own train split (`normalize="center"`,
    FLamby's federated setting; unbiased std), or of the pooled train split (`"pooled"`, FLamby's
    pooled baseline), or not at all (`"none"`). Train statistics only, so nothing leaks from test.
    FLamby divides by std + 1e-9; where a hospital's train column is constant (e.g. Switzerland's
    `chol`, recorded as 0 for every patient) we divide by 1 instead, so an unusual test value cannot
    blow up to 1e9. On FLamby's split no test value differs from a constant train column, so the
    two rules give the same features; they also agree elsewhere up to float32 rounding (FLamby
    computes its statistics in float32, we in float64 and round once at the end).

`preprocessing="impute"` keeps all 920 patients and the 13 raw attributes (categorical codes left as
numbers): every `?` becomes the mean of that column over the same hospital's train split (the pooled
train mean where that split never records it, and 0 if no train split does), then the same
standardization. Use it to study the full, more heterogeneous federation.

Labels are int64 in {0, 1} with `num_classes=2` (train with cross-entropy on 2 logits, equivalent to
FLamby's logistic regression with a sigmoid; FLamby's labels are float32). Groups: hospital id 0-3 on
train and test. Patients keep their file order within each hospital and split (FLamby's too).

Files: `<root>/heart_disease/processed.<hospital>.data`. With `download=True` a missing file is
fetched from the UCI repository and checked against FLamby's published md5 (`fedtorch.data.download`).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch

from fedtorch.data.base import DatasetSplits
from fedtorch.data.download import fetch
from fedtorch.errors import OptionError

HOSPITALS: tuple[str, ...] = ("cleveland", "hungarian", "switzerland", "va")
RAW_COLUMNS: tuple[str, ...] = (
    "age", "sex", "cp", "trestbps", "chol", "fbs", "restecg", "thalach", "exang", "oldpeak", "slope", "ca", "thal",
)  # fmt: skip
FLAMBY_FEATURES: tuple[str, ...] = (
    "age", "sex", "trestbps", "chol", "fbs", "thalach", "exang", "oldpeak",
    "cp_2", "cp_3", "cp_4", "restecg_1", "restecg_2",
)  # fmt: skip


def _resolve_root(root: str | os.PathLike | None) -> Path:
    return Path(root if root not in (None, "") else os.environ.get("FEDTORCH_DATA", "data")).expanduser()


def read_heart_disease_raw(root: str | os.PathLike | None = None) -> dict[str, np.ndarray]:
    """The four hospitals' files as float64 (patients, 14) arrays (13 attributes + num), `?` -> NaN."""
    folder = _resolve_root(root) / "heart_disease"
    names = [f"processed.{h}.data" for h in HOSPITALS]
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise FileNotFoundError(
            f"heart_disease: cannot find {', '.join(missing)} in {folder}; expected the UCI files "
            f"{', '.join(names)}. Point data_dir=... (or $FEDTORCH_DATA) at the folder that contains heart_disease/."
        )
    out = {}
    for hospital, name in zip(HOSPITALS, names, strict=True):
        rows = []
        for lineno, line in enumerate((folder / name).read_text().splitlines(), start=1):
            if not line.strip():
                continue
            fields = line.strip().split(",")
            try:
                if len(fields) != 14:
                    raise ValueError(f"{len(fields)} fields, expected 14")
                rows.append([math.nan if f.strip() == "?" else float(f) for f in fields])
            except ValueError as e:
                raise ValueError(f"{folder / name}:{lineno}: {e}") from e
        out[hospital] = np.asarray(rows, dtype=np.float64)
    return out


def _one_hot(column: np.ndarray, levels: tuple[int, ...], name: str) -> np.ndarray:
    unknown = set(np.unique(column).tolist()) - set(levels)
    if unknown:
        raise ValueError(f"heart_disease: {name} has values {sorted(unknown)}, expected {levels}")
    return np.stack([(column == level).astype(np.float64) for level in levels[1:]], axis=1)  # drop first level


def _flamby_features(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    kept = np.delete(raw, [10, 11, 12], axis=1)  # slope, ca, thal
    kept = kept[~np.isnan(kept).any(axis=1)]
    numeric = kept[:, [0, 1, 3, 4, 5, 7, 8, 9]]
    features = np.concatenate(
        [numeric, _one_hot(kept[:, 2], (1, 2, 3, 4), "cp"), _one_hot(kept[:, 6], (0, 1, 2), "restecg")], axis=1
    )
    return features, kept[:, 10]  # num, after the three dropped columns


def _stratified_split(labels: np.ndarray, train_fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Boolean train mask with floor(train_fraction * n) train samples, class ratios kept (largest remainder)."""
    n = len(labels)
    n_train = min(max(int(math.floor(train_fraction * n + 1e-9)), 1), n - 1)
    classes, counts = np.unique(labels, return_counts=True)
    share = counts * n_train / n
    per_class = np.floor(share).astype(np.int64)
    per_class[np.argsort(-(share - per_class), kind="stable")[: n_train - per_class.sum()]] += 1
    mask = np.zeros(n, dtype=bool)
    for c, k in zip(classes, per_class, strict=True):
        mask[rng.permutation(np.flatnonzero(labels == c))[:k]] = True
    return mask


def _approximate_mode(counts: np.ndarray, draws: int, rs: np.random.RandomState) -> np.ndarray:
    """How many of `draws` samples to take from each class: largest remainder, random tie-break.

    The rule scikit-learn's StratifiedShuffleSplit uses (its `_approximate_mode`), written out so
    that FLamby's split can be reproduced without scikit-learn: floor every class's proportional
    share, then give the samples still missing to the classes with the largest remainders; among
    classes with equal remainders, `rs.choice` picks which ones, always called (even when every tied
    class is taken) so that the random stream advances exactly as scikit-learn's does.
    """
    share = counts / counts.sum() * draws
    taken = np.floor(share)
    missing = int(draws - taken.sum())
    if missing > 0:
        remainder = share - taken
        for value in np.sort(np.unique(remainder))[::-1]:
            (tied,) = np.where(remainder == value)
            now = min(len(tied), missing)
            taken[rs.choice(tied, size=now, replace=False)] += 1
            missing -= now
            if missing == 0:
                break
    return taken.astype(np.int64)


def _flamby_split(labels: np.ndarray, train_fraction: float, seed: int) -> np.ndarray:
    """Boolean train mask: FLamby's split of one hospital, patient for patient.

    FLamby (`HeartDiseaseRaw`) calls scikit-learn's `train_test_split(np.arange(n), test_size=1 -
    train_fraction, train_size=train_fraction, random_state=43, shuffle=True, stratify=...)` for each
    hospital, stratified on the binary label only when both classes have more than 2 patients (so
    Switzerland, with a single negative case, is split at random). That procedure, with NumPy's
    legacy `RandomState` stream (frozen across NumPy versions):
      * sizes: n_test = ceil((1 - f) n), n_train = floor(f n); a patient in neither split (possible
        only through rounding) is a train patient, as in FLamby, which marks "test" and else "train";
      * not stratified: one permutation of 0..n-1; its first n_test entries are the test patients;
      * stratified (scikit-learn's StratifiedShuffleSplit): per-class train counts by
        `_approximate_mode(class counts, n_train)`, test counts by the same rule on what is left,
        then for each class in label order a permutation of its patients (ascending) whose first
        train-count entries train and the next test-count entries test.
    """
    n = len(labels)
    n_test = math.ceil((1.0 - train_fraction) * n)
    n_train = math.floor(train_fraction * n)
    rs = np.random.RandomState(seed)
    classes, counts = np.unique(labels, return_counts=True)
    is_test = np.zeros(n, dtype=bool)
    if len(classes) > 1 and counts.min() > 2:
        train_counts = _approximate_mode(counts, n_train, rs)
        test_counts = _approximate_mode(counts - train_counts, n_test, rs)
        for c, n_c, train_c, test_c in zip(classes, counts, train_counts, test_counts, strict=True):
            members = np.flatnonzero(labels == c)[rs.permutation(n_c)]
            is_test[members[train_c : train_c + test_c]] = True
    else:
        is_test[rs.permutation(n)[:n_test]] = True
    return ~is_test


def _standardize(x: np.ndarray, stats_from: np.ndarray) -> np.ndarray:
    mean = stats_from.mean(axis=0)
    std = stats_from.std(axis=0, ddof=1) if len(stats_from) > 1 else np.zeros(x.shape[1])
    # A constant column can come out with std ~1e-16 from rounding (e.g. an imputed mean); treat it as 0.
    constant = std <= 1e-9 * (1.0 + np.abs(mean))
    return (x - mean) / np.where(constant, 1.0, std)


def load_heart_disease(
    root: str | None = None,
    preprocessing: str = "flamby",
    normalize: str = "center",
    train_fraction: float = 0.66,
    seed: int = 43,
    split: str = "stratified",
    download: bool = False,
) -> DatasetSplits:
    """Fed-Heart-Disease (FLamby): 4 hospitals, 13 features, binary label; see the module docstring.

    Args:
        root: folder containing heart_disease/processed.*.data (default $FEDTORCH_DATA, else ./data).
        preprocessing: "flamby" (740 complete patients, one-hot cp/restecg) or "impute" (all 920).
        normalize: "center" (each hospital's train statistics), "pooled" or "none".
        train_fraction: share of every hospital's patients in its train split (FLamby: 0.66).
        seed: seed of the per-hospital split (FLamby's random_state: 43).
        split: "stratified" (fedtorch's draw) or "flamby" (FLamby's patients, exactly).
        download: fetch missing files from the UCI repository (md5-checked) when online.
    """
    if preprocessing not in ("flamby", "impute"):
        raise OptionError("dataset.preprocessing", preprocessing, "flamby or impute")
    if normalize not in ("center", "pooled", "none"):
        raise OptionError("dataset.normalize", normalize, "center, pooled or none")
    if not 0.0 < train_fraction < 1.0:
        raise OptionError("dataset.train_fraction", train_fraction, "a number in (0, 1)")
    if split not in ("stratified", "flamby"):
        raise OptionError("dataset.split", split, "stratified (fedtorch's draw) or flamby (FLamby's patients)")
    if download:
        fetch("heart_disease", _resolve_root(root))
    raw = read_heart_disease_raw(root)

    xs, ys, masks = [], [], []
    for k, hospital in enumerate(HOSPITALS):
        if preprocessing == "flamby":
            x, num = _flamby_features(raw[hospital])
        else:
            x, num = raw[hospital][:, :13].copy(), raw[hospital][:, 13]
        y = (num > 0).astype(np.int64)
        xs.append(x)
        ys.append(y)
        if split == "flamby":
            masks.append(_flamby_split(y, train_fraction, seed))  # FLamby: the same random_state in every hospital
        else:
            masks.append(_stratified_split(y, train_fraction, np.random.default_rng([seed, k])))

    if preprocessing == "impute":
        observed = [np.where(np.isnan(x[m]), 0.0, x[m]) for x, m in zip(xs, masks, strict=True)]
        counts = [(~np.isnan(x[m])).sum(axis=0) for x, m in zip(xs, masks, strict=True)]
        pooled_count = np.sum(counts, axis=0)
        pooled_mean = np.where(
            pooled_count > 0, np.sum([o.sum(0) for o in observed], 0) / np.maximum(pooled_count, 1), 0.0
        )
        for i, x in enumerate(xs):
            fill = np.where(counts[i] > 0, observed[i].sum(0) / np.maximum(counts[i], 1), pooled_mean)
            xs[i] = np.where(np.isnan(x), fill, x)

    if normalize == "center":
        xs = [_standardize(x, x[m]) for x, m in zip(xs, masks, strict=True)]
    elif normalize == "pooled":
        pooled_train = np.concatenate([x[m] for x, m in zip(xs, masks, strict=True)])
        xs = [_standardize(x, pooled_train) for x in xs]

    def gather(train: bool) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
        sel = [m if train else ~m for m in masks]
        x = np.concatenate([x[s] for x, s in zip(xs, sel, strict=True)])
        y = np.concatenate([y[s] for y, s in zip(ys, sel, strict=True)])
        groups = np.concatenate([np.full(int(s.sum()), k, dtype=np.int64) for k, s in enumerate(sel)])
        return torch.from_numpy(x.astype(np.float32)), torch.from_numpy(y), groups

    train_x, train_y, train_groups = gather(True)
    test_x, test_y, test_groups = gather(False)
    return DatasetSplits(
        name="fed_heart_disease",
        train_x=train_x,
        train_y=train_y,
        test_x=test_x,
        test_y=test_y,
        num_classes=2,
        train_groups=train_groups,
        test_groups=test_groups,
        group_names=list(HOSPITALS),
    )
