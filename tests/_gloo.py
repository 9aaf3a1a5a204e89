"""Run a test's worker in two gloo processes on this machine (the distributed backend's merges)."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

import torch.multiprocessing as mp


def run_two_processes(worker: Callable[[int, int, str], None], folder: Path) -> None:
    """`worker(rank, port, folder)` in two processes that meet on a free local port.

    fork: the children need not import torch again (spawn costs seconds per process).
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(worker, args=(port, str(folder)), nprocs=2, join=True, start_method="fork")
