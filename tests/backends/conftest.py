"""Backend tests train many tiny models: one intra-op thread is faster for them (and immune to
oversubscription when other jobs share the cores). Restored after each test."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
