"""Small federations and clocks for the tests of the virtual clock and the server modes.

Every client of `federation(n)` holds 8 samples of a 5-feature, 3-class problem; with
`trainer()` (batch 4, one epoch) a job is 2 local steps. The logistic-regression model has
18 float32 parameters, so the model and a dense update are 72 bytes each: with 72 bytes/s of
bandwidth each way a job is 1 s down + 2 / speed s of compute + 1 s up.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from fedtorch.client import LocalTrainer
from fedtorch.clock import VirtualClock
from fedtorch.data.base import DatasetSplits, FederatedDataset
from fedtorch.models import LogisticRegression

MODEL_BYTES = 72  # 18 float32 parameters


def federation(num_clients: int, samples: int = 8, dtype: torch.dtype = torch.float32) -> FederatedDataset:
    gen = torch.Generator().manual_seed(0)
    n = num_clients * samples
    x = torch.randn(n, 5, generator=gen, dtype=dtype)
    y = torch.randint(0, 3, (n,), generator=gen)
    data = DatasetSplits("tiny", x, y, x[:40], y[:40], num_classes=3)
    return FederatedDataset.from_partition(data, [np.arange(k, n, num_clients) for k in range(num_clients)])


def model(dtype: torch.dtype = torch.float32) -> LogisticRegression:
    torch.manual_seed(0)
    return LogisticRegression((5,), 3).to(dtype)


def trainer(**options: object) -> LocalTrainer:
    return LocalTrainer(**{"lr": 0.1, "epochs": 1, "batch_size": 4, **options})


def clock(speeds: Sequence[float], bandwidth: float = MODEL_BYTES, **options: object) -> VirtualClock:
    """Device speeds as given, every client `bandwidth` bytes/s up and down."""
    n = len(speeds)
    return VirtualClock(list(speeds), [bandwidth] * n, [bandwidth] * n, **options)
