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
  * split every hospital into train/test with FLamby's sizes: n_train = floor(0.66 n), stratified on
    the binary label (199/104, 172/89, 30/16, 85/45; 486 train and 254 test patients). FLamby draws
    its split with scikit-learn's `train_test_split(random_state=43)`; we do not depend on
    scikit-learn, so our stratified draw (numpy, seeded by `seed` and the hospital) has the same
    sizes and class balance but not the same patients;
  * standardize with the statistics of the hospital's own train split (`normalize="center"`,
    FLamby's federated setting; unbiased std), or of the pooled train split (`"pooled"`, FLamby's
    pooled baseline), or not at all (`"none"`). Train statistics only, so nothing leaks from test.
    FLamby divides by std + 1e-9; where a hospital's train column is constant (e.g. Switzerland's
    `chol`, recorded as 0 for every patient) we divide by 1 instead, so an unusual test value cannot
    blow up to 1e9.

`preprocessing="impute"` keeps all 920 patients and the 13 raw attributes (categorical codes left as
numbers): every `?` becomes the mean of that column over the same hospital's train split (the pooled
train mean where that split never records it, and 0 if no train split does), then the same
standardization. Use it to study the full, more heterogeneous federation.

Labels are int64 in {0, 1} with `num_classes=2` (train with cross-entropy on 2 logits, equivalent to
FLamby's logistic regression with a sigmoid). Groups: hospital id 0-3 on train and test.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch

from fedtorch.data.base import DatasetSplits

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
) -> DatasetSplits:
    """Fed-Heart-Disease (FLamby): 4 hospitals, 13 features, binary label; see the module docstring.

    Args:
        root: folder containing heart_disease/processed.*.data (default $FEDTORCH_DATA, else ./data).
        preprocessing: "flamby" (740 complete patients, one-hot cp/restecg) or "impute" (all 920).
        normalize: "center" (each hospital's train statistics), "pooled" or "none".
        train_fraction: share of every hospital's patients in its train split (FLamby: 0.66).
        seed: seed of the per-hospital stratified split.
    """
    if preprocessing not in ("flamby", "impute"):
        raise ValueError(f"heart_disease: preprocessing={preprocessing!r}; allowed: 'flamby', 'impute'")
    if normalize not in ("center", "pooled", "none"):
        raise ValueError(f"heart_disease: normalize={normalize!r}; allowed: 'center', 'pooled', 'none'")
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"heart_disease: train_fraction={train_fraction} must be in (0, 1)")
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
