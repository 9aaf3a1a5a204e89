"""LEAF datasets: one client per user, read from LEAF's JSON files, with a pluggable featurizer.

LEAF (Caldas et al. 2018, "LEAF: A Benchmark for Federated Settings", github.com/TalwalkarLab/leaf)
ships every task (FEMNIST, Sent140, Shakespeare, CelebA, Reddit, Synthetic) as JSON:

    {"users": [u, ...], "num_samples": [n_u, ...], "user_data": {u: {"x": [...], "y": [...]}}}

`load_leaf` reads such a file, keeps users as natural clients (train and test groups), and splits
every user's samples into train/test the way LEAF's `split_data.py --by_sample` does: a user needs
at least 2 samples, gets max(1, int(train_fraction * n)) random train samples (1 when n == 2) and
the rest as test; `train_fraction` defaults to LEAF's 0.9. The draw is ours (numpy, seeded), not
LEAF's `random.Random`, so sizes match LEAF but the chosen samples do not. If LEAF already split the
data (its train/ and test/ folders), pass both files (`file`, `test_file`) and no split is made.

Raw x/y become tensors through a featurizer: any object with `fit(xs, ys)`, `transform(xs, ys) ->
(x_tensor, y_tensor)` and a `num_classes` attribute. `fit` sees the train split only, so a vocabulary
never includes test words. Provided: `NumericFeaturizer` (FEMNIST-style lists of floats),
`CharFeaturizer` (LEAF Shakespeare strings), and for Sent140 (Go et al. 2009 tweets, label
1 = positive) two offline featurizations, since LEAF's own models need 300-d GloVe embeddings that we
do not download:

  * `Sent140BagOfWords`: counts of the `vocab_size` most frequent train tokens (or, with
    `hashed=True`, of all tokens hashed into `vocab_size` buckets with CRC32, no vocabulary at all),
    float32 (N, vocab_size), for logistic regression / MLP. This is LEAF's `bag_log_reg` baseline with a
    vocabulary learned from the data instead of the GloVe word list.
  * `Sent140Tokens`: int64 (N, max_words) token ids (0 pad, 1 unknown, 2.. by train frequency),
    the first `max_words` (LEAF: 25) tokens of the tweet, for embedding + LSTM models.

Tokenization follows LEAF's `split_line` (words with apostrophes, and . , ! ? ; as tokens), lower-cased,
with @mentions and URLs replaced by `<user>` and `<url>` so that user names do not become features.
"""

from __future__ import annotations

import json
import os
import re
import zlib
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor

from fedtorch.data.base import DatasetSplits
from fedtorch.data.download import fetch
from fedtorch.data.shakespeare import LEAF_CHARS, encode_chars

SENT140_FILE = "leaf_sent140/all_data_niid_0_keep_30_test_9.json"

_MENTION = re.compile(r"@\w+")
_URL = re.compile(r"(?:https?://|www\.)\S+")
_TOKEN = re.compile(r"<user>|<url>|[\w']+|[.,!?;]")


@runtime_checkable
class LeafFeaturizer(Protocol):
    """Turns LEAF's raw x/y lists into tensors; `fit` sees only the train split."""

    num_classes: int | None

    def fit(self, xs: Sequence[Any], ys: Sequence[Any]) -> None: ...

    def transform(self, xs: Sequence[Any], ys: Sequence[Any]) -> tuple[Tensor, Tensor]: ...


def tokenize(text: str) -> list[str]:
    """LEAF's Sent140 word split, lower-cased, with mentions and URLs collapsed to placeholders."""
    text = _URL.sub(" <url> ", _MENTION.sub(" <user> ", text.lower()))
    return _TOKEN.findall(text)


def _tweet_text(x: Any) -> str:
    # A raw LEAF Sent140 x is [id, date, query, user, text, split]; accept a bare string too.
    return x[4] if isinstance(x, list | tuple) else str(x)


def _labels(ys: Sequence[Any]) -> Tensor:
    return torch.as_tensor(np.asarray(ys, dtype=np.int64))


class NumericFeaturizer:
    """x: lists of numbers -> float32 (N, *shape); y: int64 labels (or float32 targets if regression).

    FEMNIST: `NumericFeaturizer(shape=(1, 28, 28), num_classes=62)`. With `num_classes=None` and
    `regression=False` the number of classes is max(train label) + 1.
    """

    def __init__(
        self, shape: Sequence[int] | None = None, num_classes: int | None = None, regression: bool = False
    ) -> None:
        self.shape = None if shape is None else tuple(int(s) for s in shape)
        self.num_classes = num_classes
        self.regression = regression

    def fit(self, xs: Sequence[Any], ys: Sequence[Any]) -> None:
        if not self.regression and self.num_classes is None:
            self.num_classes = int(np.max(ys)) + 1 if len(ys) else 0

    def transform(self, xs: Sequence[Any], ys: Sequence[Any]) -> tuple[Tensor, Tensor]:
        x = np.asarray(xs, dtype=np.float32)
        if self.shape is not None:
            x = x.reshape(len(x), *self.shape)
        if self.regression:
            return torch.from_numpy(x), torch.as_tensor(np.asarray(ys, dtype=np.float32))
        return torch.from_numpy(x), _labels(ys)


class CharFeaturizer:
    """LEAF Shakespeare: x strings -> int64 (N, len) indices into `LEAF_CHARS`; y characters -> int64."""

    num_classes: int | None = len(LEAF_CHARS)

    def fit(self, xs: Sequence[Any], ys: Sequence[Any]) -> None:
        pass  # fixed vocabulary

    def transform(self, xs: Sequence[Any], ys: Sequence[Any]) -> tuple[Tensor, Tensor]:
        lengths = {len(s) for s in xs}
        if len(lengths) > 1:
            raise ValueError(f"CharFeaturizer needs equal-length strings, got lengths {sorted(lengths)[:5]}")
        width = lengths.pop() if lengths else 0
        x = encode_chars("".join(xs)).astype(np.int64).reshape(len(xs), width)
        y = encode_chars("".join(ys)).astype(np.int64)
        return torch.from_numpy(x), torch.from_numpy(y)


def _build_vocab(token_lists: Sequence[list[str]], size: int, min_count: int) -> dict[str, int]:
    counts = Counter(t for tokens in token_lists for t in tokens)
    # Most frequent first; ties broken alphabetically so the vocabulary does not depend on dict order.
    ranked = sorted((t for t, c in counts.items() if c >= min_count), key=lambda t: (-counts[t], t))
    return {t: i for i, t in enumerate(ranked[:size])}


class Sent140BagOfWords:
    """Sent140 tweets -> float32 bag-of-words counts over a train vocabulary (or hashed buckets).

    Args:
        vocab_size: number of features (most frequent train tokens, or hash buckets).
        min_count: a token needs this many train occurrences to enter the vocabulary.
        binary: 1/0 presence instead of counts.
        hashed: CRC32 feature hashing instead of a vocabulary (no fit; unseen words still count).
    """

    num_classes: int | None = 2

    def __init__(self, vocab_size: int = 1000, min_count: int = 2, binary: bool = False, hashed: bool = False) -> None:
        if vocab_size < 1:
            raise ValueError(f"vocab_size={vocab_size} must be >= 1")
        self.vocab_size = vocab_size
        self.min_count = min_count
        self.binary = binary
        self.hashed = hashed
        self.vocab: dict[str, int] = {}

    def fit(self, xs: Sequence[Any], ys: Sequence[Any]) -> None:
        if not self.hashed:
            self.vocab = _build_vocab([tokenize(_tweet_text(x)) for x in xs], self.vocab_size, self.min_count)

    def _index(self, token: str) -> int | None:
        if self.hashed:
            return zlib.crc32(token.encode("utf-8")) % self.vocab_size
        return self.vocab.get(token)

    def transform(self, xs: Sequence[Any], ys: Sequence[Any]) -> tuple[Tensor, Tensor]:
        rows, cols = [], []
        for i, x in enumerate(xs):
            for token in tokenize(_tweet_text(x)):
                j = self._index(token)
                if j is not None:
                    rows.append(i)
                    cols.append(j)
        bags = np.zeros((len(xs), self.vocab_size), dtype=np.float32)
        np.add.at(bags, (np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64)), 1.0)
        if self.binary:
            np.minimum(bags, 1.0, out=bags)
        return torch.from_numpy(bags), _labels(ys)


class Sent140Tokens:
    """Sent140 tweets -> int64 (N, max_words) token ids: 0 pad, 1 unknown, 2.. train vocabulary by frequency."""

    num_classes: int | None = 2
    PAD, UNKNOWN = 0, 1

    def __init__(self, max_words: int = 25, vocab_size: int = 10000, min_count: int = 1) -> None:
        self.max_words = max_words
        self.vocab_size = vocab_size
        self.min_count = min_count
        self.vocab: dict[str, int] = {}

    @property
    def num_embeddings(self) -> int:
        """Rows an embedding table needs: the vocabulary plus pad and unknown."""
        return len(self.vocab) + 2

    def fit(self, xs: Sequence[Any], ys: Sequence[Any]) -> None:
        self.vocab = _build_vocab([tokenize(_tweet_text(x)) for x in xs], self.vocab_size, self.min_count)

    def transform(self, xs: Sequence[Any], ys: Sequence[Any]) -> tuple[Tensor, Tensor]:
        ids = np.full((len(xs), self.max_words), self.PAD, dtype=np.int64)
        for i, x in enumerate(xs):
            tokens = tokenize(_tweet_text(x))[: self.max_words]
            ids[i, : len(tokens)] = [self.vocab[t] + 2 if t in self.vocab else self.UNKNOWN for t in tokens]
        return torch.from_numpy(ids), _labels(ys)


FEATURIZERS: dict[str, type] = {
    "numeric": NumericFeaturizer,
    "chars": CharFeaturizer,
    "sent140_bow": Sent140BagOfWords,
    "sent140_tokens": Sent140Tokens,
}


def _resolve(root: str | os.PathLike | None, file: str | os.PathLike) -> Path:
    base = Path(root if root not in (None, "") else os.environ.get("FEDTORCH_DATA", "data")).expanduser()
    path = Path(file).expanduser()
    return path if path.is_absolute() else base / path


def read_leaf_json(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check one LEAF JSON file (users listed, user_data for each, num_samples consistent)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"leaf: cannot find {path.name} in {path.parent}; expected a LEAF JSON file there. Point data_dir=... "
            "(or $FEDTORCH_DATA) at the data folder, or set the dataset's file= option. LEAF files have no single "
            "official download: LEAF's scripts build them (for Sent140: python -m fedtorch.data.download sent140)"
        )
    with path.open(encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, dict) or "users" not in data or "user_data" not in data:
        raise ValueError(f"{path}: not a LEAF file (needs 'users' and 'user_data' keys)")
    for i, user in enumerate(data["users"]):
        record = data["user_data"].get(user)
        if record is None or len(record.get("x", ())) != len(record.get("y", ())):
            raise ValueError(f"{path}: user {user!r} has no user_data or x and y of different lengths")
        if "num_samples" in data and data["num_samples"][i] != len(record["y"]):
            raise ValueError(f"{path}: num_samples says {data['num_samples'][i]} for {user!r}, has {len(record['y'])}")
    return data


def _leaf_train_count(n: int, train_fraction: float) -> int:
    """LEAF split_data.py: at least one train and one test sample per user."""
    return 1 if n == 2 else max(1, int(train_fraction * n))


def load_leaf(
    root: str | None = None,
    file: str = SENT140_FILE,
    test_file: str | None = None,
    featurizer: LeafFeaturizer | str = "numeric",
    train_fraction: float = 0.9,
    min_samples: int = 0,
    max_users: int | None = None,
    seed: int = 0,
    name: str | None = None,
) -> DatasetSplits:
    """A LEAF JSON file as a federated dataset with one client per user (see the module docstring).

    Args:
        root: data folder that `file` and `test_file` are relative to (default $FEDTORCH_DATA, else ./data).
        file: LEAF JSON with all data (split here per user) or LEAF's train file when `test_file` is given.
        test_file: LEAF's matching test file; then no split is made and test users missing from `file` are dropped.
        featurizer: a `LeafFeaturizer` or one of "numeric", "chars", "sent140_bow", "sent140_tokens".
        train_fraction: LEAF's --frac, share of each user's samples in train.
        min_samples: drop users with fewer samples than this (before the split); users need >= 2 to split.
        max_users: keep a random subset of this many users, drawn with `seed`.
        seed: seed of the per-user split and the user subset.
        name: dataset name in logs (default: the file name without extension).
    """
    if isinstance(featurizer, str):
        if featurizer not in FEATURIZERS:
            raise ValueError(f"leaf: featurizer={featurizer!r}; allowed: {', '.join(FEATURIZERS)} or an object")
        featurizer = FEATURIZERS[featurizer]()
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"leaf: train_fraction={train_fraction} must be in (0, 1)")
    path = _resolve(root, file)
    data = read_leaf_json(path)
    test_data = read_leaf_json(_resolve(root, test_file)) if test_file is not None else None
    # Separate streams per purpose, so subsetting users does not change how each user is split.
    subset_rng, split_rng = np.random.default_rng([seed, 0]), np.random.default_rng([seed, 1])

    needed = max(min_samples, 1 if test_data is not None else 2)
    users = [u for u in data["users"] if len(data["user_data"][u]["y"]) >= needed]
    if max_users is not None and max_users < len(users):
        users = [users[i] for i in np.sort(subset_rng.choice(len(users), size=max_users, replace=False))]
    if not users:
        raise ValueError(f"leaf: no user in {path} has >= {needed} samples")

    split: dict[str, tuple[list[Any], list[Any], list[int]]] = {"train": ([], [], []), "test": ([], [], [])}
    for k, user in enumerate(users):
        record = data["user_data"][user]
        xs, ys = record["x"], record["y"]
        if test_data is None:
            is_train = np.zeros(len(ys), dtype=bool)
            is_train[split_rng.permutation(len(ys))[: _leaf_train_count(len(ys), train_fraction)]] = True
            parts = {"train": np.flatnonzero(is_train), "test": np.flatnonzero(~is_train)}
            chunks = {s: ([xs[i] for i in ix], [ys[i] for i in ix]) for s, ix in parts.items()}
        else:
            other = test_data["user_data"].get(user, {"x": [], "y": []})
            chunks = {"train": (xs, ys), "test": (other["x"], other["y"])}
        for s, (cx, cy) in chunks.items():
            split[s][0].extend(cx)
            split[s][1].extend(cy)
            split[s][2].extend([k] * len(cy))

    featurizer.fit(split["train"][0], split["train"][1])
    train_x, train_y = featurizer.transform(split["train"][0], split["train"][1])
    test_x, test_y = featurizer.transform(split["test"][0], split["test"][1])
    return DatasetSplits(
        name=name or Path(file).stem,
        train_x=train_x,
        train_y=train_y,
        test_x=test_x,
        test_y=test_y,
        num_classes=featurizer.num_classes,
        train_groups=np.asarray(split["train"][2], dtype=np.int64),
        test_groups=np.asarray(split["test"][2], dtype=np.int64),
        group_names=[str(u) for u in users],
    )


def load_sent140(
    root: str | None = None,
    file: str = SENT140_FILE,
    test_file: str | None = None,
    featurizer: LeafFeaturizer | str | None = None,
    train_fraction: float = 0.9,
    min_samples: int = 0,
    max_users: int | None = None,
    seed: int = 0,
    download: bool = False,
) -> DatasetSplits:
    """LEAF Sent140 (binary tweet sentiment, one client per Twitter user); default: 1,000-word bag of words.

    Same arguments as `load_leaf`; `featurizer` defaults to `Sent140BagOfWords()`. There is no
    official file to download: with `download=True` a missing file raises the steps that build it
    with LEAF's scripts (`fedtorch.data.download.SENT140_HOWTO`).
    """
    if download and not _resolve(root, file).is_file():
        fetch("sent140", root or ".")  # raises DownloadError with the LEAF steps
    return load_leaf(
        root=root,
        file=file,
        test_file=test_file,
        featurizer=Sent140BagOfWords() if featurizer is None else featurizer,
        train_fraction=train_fraction,
        min_samples=min_samples,
        max_users=max_users,
        seed=seed,
        name="sent140",
    )
