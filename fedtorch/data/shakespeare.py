"""Shakespeare next-character prediction, one client per speaking role (McMahan et al. 2017; LEAF).

McMahan et al. 2017 ("Communication-Efficient Learning of Deep Networks from Decentralized Data")
build a naturally non-IID benchmark from The Complete Works of William Shakespeare: every speaking
role is a client, a sample is a window of 80 characters and its target is the next character. LEAF
(Caldas et al. 2018, "LEAF: A Benchmark for Federated Settings") packages the same task; we follow it
where the raw text allows.

Source here: Karpathy's tinyshakespeare (`<root>/shakespeare/tinyshakespeare_input.txt`, 1,115,394
characters of plays). Speaker turns are blocks that start with a `NAME:` line after a blank line; a
turn's text is every following line up to the next blank line. Choices, and where they differ:

  * client = role name. LEAF's user is a (play, role) pair; tinyshakespeare has no play titles, so
    roles that recur across plays (e.g. "First Citizen") are merged. Clients are numbered in order
    of first appearance in the text; `group_names` holds the role names.
  * a role's text = its turns joined with "\\n", in text order. Sample i is x = text[i : i+80],
    y = text[i+80]; no padding (LEAF pads each line with 80 spaces, which mostly teaches the model
    to predict after blanks), so a role with L characters has max(L - 80, 0) samples.
  * vocabulary: LEAF's 80 characters (`LEAF_CHARS`, from leaf/models/utils/language_utils.py);
    tinyshakespeare uses 65 distinct characters, all in it except `$` (it occurs once), which is
    mapped to a space. `num_classes = 80`.
  * train/test split per role, temporal: the first `train_fraction` (0.8, as LEAF's `-tf 0.8` and
    the FedAvg paper) of a role's samples train, the rest test, so a role's test text comes after its
    train text. Every kept role has at least one train and one test sample.
  * size controls: `min_samples` drops roles with fewer samples (LEAF's `-k`), `max_samples_per_client`
    keeps only the first samples of big roles, `max_clients` keeps a seeded random subset of roles
    (as LEAF samples users).

File: `<root>/shakespeare/tinyshakespeare_input.txt`; `download=True` fetches it (md5-checked) from
Karpathy's char-rnn repository when it is missing (`fedtorch.data.download`).

Memory: x is int64 (N, 80), i.e. 640 bytes a sample; the whole text is ~1.0M samples (~650 MB).
Use the size controls for small runs.
"""

from __future__ import annotations

import math
import os
import re
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from fedtorch.data.base import DatasetSplits
from fedtorch.data.download import fetch

LEAF_CHARS = "\n !\"&'(),-.0123456789:;>?ABCDEFGHIJKLMNOPQRSTUVWXYZ[]abcdefghijklmnopqrstuvwxyz}"
"""LEAF's Shakespeare vocabulary (80 characters); a character's index is its class id."""

_FILE = "tinyshakespeare_input.txt"
_HEADER = re.compile(r"^([^\s:][^:]*):\s*$")


def encode_chars(text: str, vocab: str = LEAF_CHARS, unknown: str = " ") -> np.ndarray:
    """Map every character to its index in `vocab` (uint8 when it fits); characters not in it -> `unknown`."""
    if unknown not in vocab:
        raise ValueError(f"unknown={unknown!r} must be in the vocabulary")
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    table = np.full(max(int(codes.max(initial=0)), max(map(ord, vocab))) + 1, vocab.index(unknown), dtype=np.int64)
    table[[ord(c) for c in vocab]] = np.arange(len(vocab))
    out = table[codes]
    return out.astype(np.uint8) if len(vocab) <= 256 else out


def parse_roles(text: str) -> list[tuple[str, str]]:
    """(role, text) for every role, in order of first appearance; a role's turns are joined with newlines."""
    turns: dict[str, list[str]] = {}
    speaker: str | None = None
    lines: list[str] = []
    previous_blank = True
    for line in text.splitlines() + [""]:
        header = _HEADER.match(line) if previous_blank else None
        if header or not line.strip():
            if speaker is not None and lines:
                turns.setdefault(speaker, []).append("\n".join(lines))
            speaker, lines = (header.group(1).strip(), []) if header else (None, [])
            if header:
                turns.setdefault(speaker, [])
        elif speaker is not None:
            lines.append(line)
        previous_blank = not line.strip()
    return [(role, "\n".join(parts)) for role, parts in turns.items() if parts]


@lru_cache(maxsize=2)
def _parse_file(path: str, mtime: float) -> tuple[tuple[str, np.ndarray], ...]:
    del mtime  # cache key only
    text = Path(path).read_text(encoding="utf-8")
    return tuple((role, encode_chars(body)) for role, body in parse_roles(text))


def load_shakespeare(
    root: str | None = None,
    seq_len: int = 80,
    train_fraction: float = 0.8,
    min_samples: int = 2,
    max_samples_per_client: int | None = None,
    max_clients: int | None = None,
    seed: int = 0,
    download: bool = False,
) -> DatasetSplits:
    """Shakespeare next-character prediction with one client per role (see the module docstring).

    Args:
        root: folder containing shakespeare/tinyshakespeare_input.txt (default $FEDTORCH_DATA, else ./data).
        seq_len: input window length (80 in McMahan et al. and LEAF).
        train_fraction: temporal share of each role's samples used for training.
        min_samples: drop roles with fewer samples than this (at least 2, so both splits are non-empty).
        max_samples_per_client: keep only a role's first this-many samples (None: all).
        max_clients: keep a random subset of this many roles, drawn with `seed` (None: all).
        seed: seed of the role subset.
        download: fetch tinyshakespeare (md5-checked) into root/shakespeare when it is missing.

    Returns int64 x of shape (N, seq_len), int64 y, num_classes = 80, natural groups on train and test.
    """
    folder = Path(root if root not in (None, "") else os.environ.get("FEDTORCH_DATA", "data")).expanduser()
    path = folder / "shakespeare" / _FILE
    if download:
        fetch("shakespeare", folder)  # only when missing; raises one line when offline
    if not path.is_file():
        raise FileNotFoundError(
            f"shakespeare: cannot find {_FILE} in {folder / 'shakespeare'}. Point data_dir=... "
            "(or $FEDTORCH_DATA) at the folder that contains shakespeare/, or set dataset.download=true when online."
        )
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"shakespeare: train_fraction={train_fraction} must be in (0, 1)")
    if seq_len < 1:
        raise ValueError(f"shakespeare: seq_len={seq_len} must be >= 1")
    roles = _parse_file(str(path), path.stat().st_mtime)

    kept = []
    for role, codes in roles:
        n = max(len(codes) - seq_len, 0)
        if n >= max(min_samples, 2):
            kept.append((role, codes, n if max_samples_per_client is None else min(n, max_samples_per_client)))
    if max_clients is not None and max_clients < len(kept):
        chosen = np.sort(np.random.default_rng(seed).choice(len(kept), size=max_clients, replace=False))
        kept = [kept[i] for i in chosen]
    if not kept:
        raise ValueError(f"shakespeare: no role has >= {max(min_samples, 2)} samples of length {seq_len}")

    parts: dict[str, list[np.ndarray]] = {"train": [], "test": []}
    groups: dict[str, list[np.ndarray]] = {"train": [], "test": []}
    for k, (_, codes, n) in enumerate(kept):
        windows = np.lib.stride_tricks.sliding_window_view(codes, seq_len + 1)[:n]  # a view: no copy yet
        n_train = min(max(math.floor(train_fraction * n), 1), n - 1)
        for split, rows in (("train", windows[:n_train]), ("test", windows[n_train:])):
            parts[split].append(rows)
            groups[split].append(np.full(len(rows), k, dtype=np.int64))

    def tensors(split: str) -> tuple[torch.Tensor, torch.Tensor]:
        # Concatenate as uint8 first, widen once: peak memory stays near the int64 result.
        x = np.concatenate([w[:, :seq_len] for w in parts[split]]).astype(np.int64)
        y = np.concatenate([w[:, seq_len] for w in parts[split]]).astype(np.int64)
        return torch.from_numpy(x), torch.from_numpy(y)

    (train_x, train_y), (test_x, test_y) = tensors("train"), tensors("test")
    return DatasetSplits(
        name="shakespeare",
        train_x=train_x,
        train_y=train_y,
        test_x=test_x,
        test_y=test_y,
        num_classes=len(LEAF_CHARS),
        train_groups=np.concatenate(groups["train"]),
        test_groups=np.concatenate(groups["test"]),
        group_names=[role for role, _, _ in kept],
    )
