"""Small federations and metric look-ups shared by the privacy, attack and compression tests."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedtorch.data.base import DatasetSplits, FederatedDataset


def blob_federation(num_clients: int = 20, per_client: int = 30, features: int = 8, classes: int = 3, seed: int = 0):
    """Linearly separable-ish Gaussian blobs split evenly over clients (IID)."""
    gen = torch.Generator().manual_seed(seed)
    n = num_clients * per_client
    centers = torch.randn(classes, features, generator=gen) * 3
    y = torch.randint(0, classes, (n + 200,), generator=gen)
    x = centers[y] + torch.randn(n + 200, features, generator=gen)
    data = DatasetSplits("blobs", x[:n], y[:n], x[n:], y[n:], num_classes=classes)
    parts = [np.arange(k * per_client, (k + 1) * per_client) for k in range(num_clients)]
    return FederatedDataset.from_partition(data, parts)


def metric(row: dict, name: str) -> float:
    """A transform metric as logged: bare (`privacy/epsilon`) or under the server prefix."""
    return row[name] if name in row else row[f"server/{name}"]


@pytest.fixture(autouse=True)
def one_torch_thread():
    """These tests train tiny models: one intra-op thread is fastest, and on a busy machine several
    threads per process wait on each other (50x slower), so pin it for the test and restore it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
