"""The vectorized backend: a chunk of the round's clients trained as one batched computation.

Every client of a round runs the same local SGD on different data, so the clients' weights can be
stacked along a new leading dimension and one local step mapped over all of them with `torch.func`:
`vmap(grad(loss of functional_call(model, client_weights, client_batch)))` (the per-example
gradient recipe of the torch.func docs, applied per client instead of per example). One Python step
loop and one batched kernel per layer then serve a whole chunk of clients: the per-step framework
cost (Python, dispatch, kernel launches) is paid once per chunk instead of once per client, which is
where small models and small batches spend their time, above all on a GPU.

Exactly the sequential semantics:
- Batches: each client's epoch orders come from `fedtorch.client.epoch_orders` with the same
  (seed, "batches", round, client) generator as `LocalTrainer`. A smaller last batch is padded and
  masked (the loss is the mean over the real samples only).
- Clients with fewer steps: the chunk's clients are sorted by step budget, so the clients still
  training at step t are a prefix of the chunk; the step runs on that prefix (a view), and finished
  clients neither compute nor change.
- Optimizer: `torch.optim.SGD`'s update (weight decay, momentum with dampening, Nesterov, maximize),
  written with the same elementwise operations in the same order, on the stacked weights.

What cannot be batched falls back to the sequential backend for the whole run, with one logged
warning naming the reason: a trainer that is not plain minibatch SGD (DP-SGD), a strategy that
changes local training (FedProx, SCAFFOLD, ...), models with buffers that training updates (BatchNorm), dropout, frozen
parameters, a custom loss function, or an optimizer other than SGD (all checked at set-up); and a
chunk that torch.func fails to train (an operation without a batching rule, out of memory): the
clients of the round not yet aggregated are then trained sequentially.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad_and_value, vmap

from fedtorch.backends.base import Backend
from fedtorch.backends.sequential import SequentialBackend
from fedtorch.client import ClientUpdate, OptimizerSettings, epoch_orders
from fedtorch.errors import check_int
from fedtorch.runner import ClientJob, ClientRunner, Payload
from fedtorch.seeding import torch_generator

log = logging.getLogger("fedtorch")

# Losses whose per-sample form (`reduction="none"`) averaged over the real samples is exactly the
# sequential batch loss. A custom loss may weight or normalize differently, so it is not batched.
_BATCHABLE_LOSSES = (F.cross_entropy, F.mse_loss)


def fallback_reason(runner: ClientRunner) -> str | None:
    """Why `runner`'s clients cannot be trained by the vectorized backend, or None when they can."""
    if not runner.trainer.vectorizable:
        return f"trainer {type(runner.trainer).__name__} is not plain minibatch SGD"
    if runner.algorithm.changes_local_training:
        return f"strategy {runner.algorithm.name} changes local training"
    if runner.layout.size > runner.layout.num_params:
        return "the model has buffers that training updates (e.g. BatchNorm running statistics)"
    if any(not p.requires_grad for p in runner.model.parameters()):
        return "the model has frozen parameters"
    if any(isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0 for m in runner.model.modules()):
        return "the model has dropout (random masks drawn per client)"
    if runner.loss_fn not in _BATCHABLE_LOSSES:
        return "a custom loss function (only cross-entropy and MSE are batched)"
    if not runner.optimizer.is_sgd:
        return f"trainer.optimizer is {runner.optimizer.name}; the vectorized backend implements torch.optim.SGD"
    return None


def sgd_step(
    params: list[Tensor], grads: list[Tensor], bufs: list[Tensor] | None, sgd: OptimizerSettings, first: bool
) -> None:
    """One `torch.optim.SGD` step on stacked weights, in place; the same formulas in the same order.

    torch.optim.SGD (single-tensor path): g = -g if maximize; g = g + wd * p; buf = g on the first
    step, else buf = momentum * buf + (1 - dampening) * g; g = g + momentum * buf if nesterov else
    buf; p = p - lr * g. Every operation is elementwise, so it acts on each client's slice alone.
    """
    if sgd.maximize:
        grads = torch._foreach_neg(grads)
    if sgd.weight_decay != 0:
        grads = torch._foreach_add(grads, params, alpha=sgd.weight_decay)
    if sgd.momentum != 0:
        assert bufs is not None
        if first:
            torch._foreach_copy_(bufs, grads)
        else:
            torch._foreach_mul_(bufs, sgd.momentum)
            torch._foreach_add_(bufs, grads, alpha=1 - sgd.dampening)
        grads = torch._foreach_add(grads, bufs, alpha=sgd.momentum) if sgd.nesterov else bufs
    torch._foreach_add_(params, grads, alpha=-sgd.lr)


@dataclass
class ChunkSchedule:
    """The batches of a chunk of clients, sorted by step budget (longest first).

    `index[t, c, :]` are the train-set indices of client c's batch at step t, padded to the widest
    batch; `mask[t, c, :]` is 1 for real samples. `active[t]` is how many clients (a prefix) still
    train at step t.
    """

    jobs: list[ClientJob]
    budgets: list[int]
    seen: list[int]
    index: Tensor
    mask: Tensor
    active: list[int]


def chunk_schedule(
    seed: int, batch_size: int, jobs: Sequence[ClientJob], budgets: Sequence[int], cpu_indices: Sequence[Tensor]
) -> ChunkSchedule:
    """Lay out the batches of `jobs` (sorted by descending budget) as padded index tensors.

    `cpu_indices[c]` are job c's sample positions in the chunk's data (`Federation.gather`).
    """
    sizes = [len(ix) for ix in cpu_indices]
    widths = [n if batch_size == -1 else min(batch_size, n) for n in sizes]
    steps = max(budgets, default=0)
    width = max((w for w, b in zip(widths, budgets) if b > 0), default=1)
    index = torch.zeros(steps, len(jobs), width, dtype=torch.int64)
    mask = torch.zeros(steps, len(jobs), width, dtype=torch.bool)
    seen = []
    for c, (job, n, budget, client_index) in enumerate(zip(jobs, sizes, budgets, cpu_indices)):
        if budget == 0:
            seen.append(0)
            continue
        batch = n if batch_size == -1 else batch_size
        per_epoch = -(-n // batch)
        generator = torch_generator(seed, "batches", job.round, job.client_id)
        # Pad each epoch's order to whole batches: (per_epoch, batch) rows, the tail masked out.
        padded = torch.zeros(per_epoch * batch, dtype=torch.int64)
        real = torch.arange(per_epoch * batch) < n
        rows = []
        for perm in epoch_orders(n, batch, budget, generator):
            padded[:n] = client_index[perm]
            rows.append(padded.view(per_epoch, batch).clone())
        positions = torch.cat(rows)[:budget]
        valid = real.view(per_epoch, batch).repeat(len(rows), 1)[:budget]
        index[:budget, c, : min(batch, width)] = positions[:, :width]
        mask[:budget, c, : min(batch, width)] = valid[:, :width]
        seen.append(int(valid.sum()))
    # Budgets are sorted descending, so the clients with budget > t are the first active[t].
    active = (np.asarray(budgets)[None, :] > np.arange(steps)[:, None]).sum(1).tolist()
    return ChunkSchedule(list(jobs), list(budgets), seen, index, mask, active)


class VectorizedBackend(Backend):
    """Train the step's clients in chunks of `chunk_size`, each chunk as one batched computation.

    Args:
        chunk_size: clients trained together; None puts the whole step in one chunk. Memory grows
            with it (a chunk holds chunk_size copies of the weights, their gradients and momentum,
            and chunk_size batches of activations): lower it for large models on a GPU.
    """

    name = "vectorized"

    def __init__(self, chunk_size: int | None = None) -> None:
        self.chunk_size = check_int("backend.chunk_size", chunk_size, 1, none=True, extra=" (null: the whole round)")
        self.fallback: str | None = None  # why training runs sequentially, once it does

    def setup(self, runner: ClientRunner) -> None:
        super().setup(runner)
        self._sequential = SequentialBackend()
        self._sequential.setup(runner)
        self.fallback = None
        reason = fallback_reason(runner)
        if reason is not None:
            self._fall_back(reason)
            return
        self.sgd = runner.optimizer
        self.names = runner.layout.names[: len(runner.flat.params)]
        # Batches are laid out on the CPU (the batch generators are CPU generators), from the chunk's
        # CPU index positions (`Federation.gather`), then moved to the device once per chunk.
        model, loss_fn = runner.model, runner.loss_fn

        def client_loss(params: dict[str, Tensor], xb: Tensor, yb: Tensor, mb: Tensor) -> tuple[Tensor, Tensor]:
            out = functional_call(model, params, (xb,))
            per_sample = loss_fn(out, yb, reduction="none")
            if per_sample.dim() > 1:  # MSE with several outputs: the mean over them, as reduction="mean"
                per_sample = per_sample.flatten(1).mean(1)
            loss = (per_sample * mb).sum() / mb.sum().clamp(min=1)
            return loss, out

        self._step = vmap(grad_and_value(client_loss, has_aux=True))

    def _fall_back(self, reason: str) -> None:
        log.warning("backend=vectorized falls back to sequential training: %s", reason)
        self.fallback = reason
        self.name = "sequential"  # what summary.json records: how the clients were really trained

    def train(self, jobs: Sequence[ClientJob], start: Tensor, payload: Payload) -> Iterator[ClientUpdate]:
        done: set[int] = set()
        if self.fallback is None:
            try:
                # Updates stream out chunk by chunk: memory holds one chunk's updates.
                for chunk in self.chunks(jobs, start):
                    for update in chunk:
                        done.add(update.client_id)
                        yield update
                return
            except RuntimeError as error:  # an operation torch.func cannot batch, or out of memory
                self._fall_back(f"torch.func could not train the chunk ({str(error).splitlines()[0]})")
        remaining = [job for job in jobs if job.client_id not in done]
        yield from self._sequential.train(remaining, start, payload)

    def chunks(self, jobs: Sequence[ClientJob], start: Tensor) -> Iterator[list[ClientUpdate]]:
        """Local training of `jobs` from the weights `start`, one chunk's updates at a time.

        Each client's step budget is the trainer's, capped by the job's (a straggler's). Clients
        are grouped by budget; a chunk's updates come in the order of `jobs`.
        """
        budgets = [self.runner.num_steps(job) for job in jobs]
        order = sorted(range(len(jobs)), key=lambda i: -budgets[i])  # stable: ties keep their order
        size = self.chunk_size or max(len(order), 1)
        for first in range(0, len(order), size):
            members = order[first : first + size]
            # The chunk's data: the resident train tensors of an in-memory federation, or its
            # clients materialized side by side (a generated or memory-mapped federation).
            x, y, positions = self.runner.federation.gather([jobs[i].client_id for i in members])
            schedule = chunk_schedule(
                self.runner.seed,
                self.runner.trainer.batch_size,
                [jobs[i] for i in members],
                [budgets[i] for i in members],
                positions,
            )
            chunk = self._train_chunk(schedule, start, x, y)
            # The caller's order (for a single chunk exactly the sequential backend's order).
            yield [u for _, u in sorted(zip(members, chunk), key=lambda pair: pair[0])]

    def _train_chunk(self, schedule: ChunkSchedule, start: Tensor, x: Tensor, y: Tensor) -> list[ClientUpdate]:
        runner = self.runner
        device = runner.device
        num = len(schedule.jobs)
        start_params = runner.layout.split(start)[: len(self.names)]
        # Every client starts from the same weights: (num, *shape) per parameter, contiguous.
        params = [g.detach().unsqueeze(0).repeat(num, *([1] * g.dim())) for g in start_params]
        bufs = [torch.empty_like(p) for p in params] if self.sgd.momentum != 0 else None
        index = schedule.index.to(device, non_blocking=True)
        mask = schedule.mask.to(device=device, dtype=x.dtype if x.is_floating_point() else torch.float32)
        counts = mask.sum(-1)  # (steps, num): samples in each step's batch
        classify = y.dtype == torch.int64
        loss_sum = torch.zeros(num, device=device)
        correct = torch.zeros(num, device=device, dtype=torch.int64)
        runner.model.train()
        for t, k in enumerate(schedule.active):
            ix = index[t, :k]
            xb, yb, mb = x[ix], y[ix], mask[t, :k]
            active_params = [p[:k] for p in params]
            grads, (loss, out) = self._step(dict(zip(self.names, active_params)), xb, yb, mb)
            sgd_step(
                active_params,
                [grads[name] for name in self.names],
                None if bufs is None else [b[:k] for b in bufs],
                self.sgd,
                first=t == 0,
            )
            loss_sum[:k] += loss.detach() * counts[t, :k]
            if classify:
                correct[:k] += ((out.detach().argmax(-1) == yb) & (mb > 0)).sum(-1)

        updates = []
        for c, job in enumerate(schedule.jobs):
            local = torch.cat([p[c].reshape(-1) for p in params])
            metrics = {"loss_sum": loss_sum[c], "samples_seen": torch.tensor(schedule.seen[c])}
            if classify:
                metrics["correct"] = correct[c]
            updates.append(
                ClientUpdate(
                    client_id=job.client_id,
                    delta=local - start,
                    num_samples=int(runner.client_sizes()[job.client_id]),
                    num_steps=schedule.budgets[c],
                    metrics=metrics,
                )
            )
        return updates
