"""The distributed backend: torchrun processes share each round's clients; one all_reduce joins them.

    torchrun --nproc_per_node=N -m fedtorch backend=distributed ...                 # one machine
    torchrun --nnodes=2 --node_rank=R --nproc_per_node=N \\
        --rdzv_backend=c10d --rdzv_endpoint=HOST:29400 -m fedtorch backend=distributed ...  # several

Every process builds the same federation, model and strategy from the same seed, and samples the
same clients each round (sampling derives from (seed, round) alone). Each trains its share of the
round's clients with an inner backend (sequential, or vectorized for batched clients); the loop
streams them into its own copy of the update pipeline, and `reduce` then combines the partial
weighted sums of all processes in one `all_reduce` (reducers that need every update all-gather
instead), together with the strategy's per-round accumulators, the per-client state written this
round and the round's training statistics. Every process takes the same server step, so the
global models stay identical without ever being broadcast.
The pattern is apple/pfl-research's (workers that all-reduce once per round), on plain
`torch.distributed`: gloo on CPU, NCCL on GPU.

Rank 0 alone writes the run folder (logs, TensorBoard, checkpoints, model.pt, summary.json); the
helpers below let `fedtorch.experiment` start the process group, agree on rank 0's output folder
and keep the other ranks from leaving files behind.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterator, Sequence
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from fedtorch.backends.base import Backend, Mergeable
from fedtorch.backends.sequential import SequentialBackend
from fedtorch.backends.vectorized import VectorizedBackend
from fedtorch.client import ClientUpdate
from fedtorch.errors import check_choice
from fedtorch.runner import ClientJob, ClientRunner, Payload

log = logging.getLogger("fedtorch")


# -- process helpers (called by fedtorch.experiment) --------------------------------------------
def launched_by_torchrun() -> bool:
    """True in a process started by torchrun (or any launcher that sets torch's env:// variables)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def rank() -> int:
    """This process's rank: 0 outside a distributed run."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main_process() -> bool:
    """Rank 0, the only process that writes files and logs."""
    return rank() == 0


def init_process_group(device: torch.device, timeout_s: float = 1800.0) -> torch.device:
    """Join torchrun's process group (env://) and return the device this process trains on.

    NCCL for CUDA devices (one GPU per process: cuda:LOCAL_RANK), gloo otherwise. Idempotent: a
    second call (the next job of a multirun in the same processes) reuses the group.
    """
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
    return device


def shutdown() -> None:
    """Leave the process group (so torchrun's workers exit cleanly)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def agree_on_output_dir(output_dir: Path) -> Path:
    """Every rank adopts rank 0's run folder; other ranks delete the folder Hydra made for them.

    Hydra creates a run folder (with `.hydra/` and a log file) in every process before fedtorch
    runs, and with the default `outputs/<date>/<time>` the ranks may disagree by a second. Rank 0's
    folder is the run's; another rank's own folder, if different, holds only what Hydra wrote, so
    it is removed (with its now-empty parents up to the working directory), and that rank's log
    handlers writing into it are closed first.
    """
    if world_size() == 1:
        return output_dir
    shared = [str(output_dir.resolve())]
    dist.broadcast_object_list(shared, src=0)
    main_dir = Path(shared[0])
    if is_main_process():
        return main_dir
    _quiet_worker_logging()
    own = output_dir.resolve()
    if own != main_dir and not own.is_relative_to(main_dir) and not main_dir.is_relative_to(own):
        shutil.rmtree(own, ignore_errors=True)
        cwd = Path.cwd().resolve()
        parent = own.parent
        while parent != cwd and parent.is_relative_to(cwd):
            try:
                parent.rmdir()  # only if empty: another run's folders stay
            except OSError:
                break
            parent = parent.parent
    return main_dir


def _quiet_worker_logging() -> None:
    """Close the file handlers Hydra opened in this rank (rank 0 keeps the run's log) and keep only
    warnings on the console, so a message appears once, not once per process."""
    for logger in [logging.getLogger(), *(logging.getLogger(n) for n in logging.root.manager.loggerDict)]:
        if not isinstance(logger, logging.Logger):
            continue
        for handler in list(logger.handlers):
            if isinstance(handler, logging.FileHandler):
                logger.removeHandler(handler)
                handler.close()
    logging.getLogger("fedtorch").setLevel(logging.WARNING)


def assign_clients(budgets: list[int], num_ranks: int) -> list[list[int]]:
    """Positions of a round's clients per rank, balancing local steps (longest first, to the least
    loaded rank; ties to the lowest rank): deterministic, so every rank computes the same split."""
    shares: list[list[int]] = [[] for _ in range(num_ranks)]
    load = np.zeros(num_ranks, dtype=np.int64)
    for position in sorted(range(len(budgets)), key=lambda i: -budgets[i]):
        target = int(np.argmin(load))
        shares[target].append(position)
        load[target] += max(budgets[position], 1)
    return [sorted(share) for share in shares]


# -- the backend ------------------------------------------------------------------------------------
class DistributedBackend(Backend):
    """Each process trains its share of the step's clients; the partial sums meet in an all_reduce.

    Args:
        inner: how a process trains its share: "sequential" or "vectorized".
        chunk_size: the vectorized inner backend's chunk size.

    Outside torchrun (no process group) it runs as a single process, like its inner backend.
    """

    name = "distributed"

    def __init__(self, inner: str = "sequential", chunk_size: int | None = None) -> None:
        check_choice("backend.inner", inner, ("sequential", "vectorized"))
        self.inner_name = inner
        self.inner: Backend = VectorizedBackend(chunk_size) if inner == "vectorized" else SequentialBackend()

    @property
    def world_size(self) -> int:
        return world_size()

    @property
    def rank(self) -> int:
        return rank()

    def setup(self, runner: ClientRunner) -> None:
        super().setup(runner)
        if launched_by_torchrun() and not dist.is_initialized():
            init_process_group(runner.device)
        if not dist.is_initialized():
            log.warning("backend=distributed outside torchrun: training in this one process")
        self.inner.setup(runner)

    def broadcast(self, tensor: Tensor) -> None:
        # Same seed, same initial weights; broadcasting rank 0's makes it certain (as DDP does).
        if world_size() > 1:
            dist.broadcast(tensor, src=0)

    def train(self, jobs: Sequence[ClientJob], start: Tensor, payload: Payload) -> Iterator[ClientUpdate]:
        num_ranks = world_size()
        if num_ranks > 1:
            budgets = [self.runner.num_steps(job) for job in jobs]
            jobs = [jobs[i] for i in assign_clients(budgets, num_ranks)[rank()]]
        yield from self.inner.train(jobs, start, payload)

    def reduce(self, parts: Sequence[Mergeable]) -> None:
        if world_size() > 1:
            for part in parts:
                part.merge()

    def agree_stop(self, stop_reason: str | None) -> str | None:
        """Rank 0's decision to stop (its callbacks: early stopping, divergence) binds every rank."""
        if world_size() == 1:
            return stop_reason
        decision = [stop_reason]
        dist.broadcast_object_list(decision, src=0)
        return decision[0]

    def close(self) -> None:
        shutdown()
