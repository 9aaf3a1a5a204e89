"""The client side: local training of the global model on one client's data.

`LocalTrainer.train` loads the global weights into a reused model (one `copy_`, no deepcopy),
runs local epochs of minibatch SGD with a fresh optimizer, lets the strategy's `ClientHooks`
adjust gradients (FedProx's proximal term, SCAFFOLD's control variates, ...), and returns the
change of the weights as one flat vector in a `ClientUpdate`. The client's data is a tensor of
indices into the device-resident train tensors, so a batch is an index gather.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fedtorch.errors import check_int, check_number, require
from fedtorch.params import FlatModel

OptimizerFactory = Callable[..., torch.optim.Optimizer]


@dataclass(frozen=True)
class OptimizerSettings:
    """The local optimizer as strategies and backends need to know it: its class and SGD's options.

    Read back from an optimizer the trainer's factory actually builds (`LocalTrainer.optimizer_settings`),
    so any way of configuring it (a `functools.partial`, Hydra's `_partial_`, a subclass) is seen as
    it really is. The SGD fields are those of `torch.optim.SGD`'s `defaults` (0 / False otherwise).
    """

    name: str
    lr: float
    momentum: float = 0.0
    dampening: float = 0.0
    weight_decay: float = 0.0
    nesterov: bool = False
    maximize: bool = False

    @property
    def is_sgd(self) -> bool:
        """Exactly `torch.optim.SGD` (not a subclass, whose step may differ)."""
        return self.name == "SGD"


@dataclass
class ClientUpdate:
    """What one client sends back after local training.

    Attributes:
        client_id: the client's index in the federation.
        delta: local weights minus the global weights it started from (flat vector).
        num_samples: size of the client's training set (FedAvg's weight).
        num_steps: local optimizer steps taken (FedNova normalizes by it).
        metrics: training statistics as 0-d tensors (no host sync inside the loop):
            `loss_sum` and, for classification, `correct`, both summed over `samples_seen`.
        extra: strategy-specific payload (e.g. SCAFFOLD's control-variate change).
        sent: bool mask over `delta` of the values the client really sends (a partially shared
            model: FedPer's body, FedBN's non-norm layers); None: all of them. `delta` is zero
            elsewhere; the byte meter counts, and a compressor encodes, only the sent values.
    """

    client_id: int
    delta: Tensor
    num_samples: int
    num_steps: int
    metrics: dict[str, Tensor] = field(default_factory=dict)
    extra: dict[str, Tensor] = field(default_factory=dict)
    sent: Tensor | None = None


class ClientHooks:
    """Client-side callbacks a strategy gives the trainer for one client in one round.

    The default does nothing; strategies override what they need. `params` are the model's
    parameters (views into the flat weight vector) and `global_params` the matching views of the
    weights the client started from. A subclass that overrides `after_backward` sets
    `adjusts_gradients = True` (the trainer skips the per-step call otherwise).
    """

    adjusts_gradients: bool = False

    def on_train_start(self, params: list[Tensor], global_params: list[Tensor]) -> None:
        """Called once the global weights are loaded, before the first step."""

    def after_backward(self, params: list[Tensor], grads: list[Tensor], global_params: list[Tensor]) -> None:
        """Adjust the gradients in place before the optimizer step."""

    def on_train_end(self, update: ClientUpdate) -> None:
        """Inspect or extend the update (e.g. attach control variates to `update.extra`)."""


def epoch_orders(num_samples: int, batch: int, budget: int, generator: torch.Generator) -> list[Tensor]:
    """The sample orders of a client's local epochs: one `torch.randperm(num_samples, generator=generator)`
    per epoch that `budget` steps of `batch` samples reach into (the last batch of an epoch may be smaller).

    The one place the batch order is derived, so every backend (sequential `LocalTrainer`, the vectorized
    backend) draws exactly the same batches from the same (seed, "batches", round, client) generator.
    """
    if budget <= 0:
        return []
    steps_per_epoch = -(-num_samples // batch)
    return [torch.randperm(num_samples, generator=generator) for _ in range(-(-budget // steps_per_epoch))]


def to_device_async(tensor: Tensor, device: torch.device) -> Tensor:
    """`tensor` (on the CPU) on `device` without waiting for the device: a copy from pageable host memory
    to a GPU first waits for the stream's queued kernels (one host sync per call), a copy from pinned
    memory does not (the caching host allocator keeps the pinned block until the copy is done)."""
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def default_loss(num_classes: int | None) -> Callable[[Tensor, Tensor], Tensor]:
    """Cross-entropy for classification, mean squared error for regression."""
    return F.cross_entropy if num_classes is not None else F.mse_loss


class LocalTrainer:
    """Local epochs of minibatch training on one client.

    Args:
        optimizer: a factory `optimizer(params, lr=...)`, e.g. `functools.partial(torch.optim.SGD,
            momentum=0.9)`; a fresh optimizer is made for every client (the usual FL semantics:
            clients keep no optimizer state between rounds).
        lr: the client learning rate.
        epochs: passes over the client's data per round (McMahan et al.'s E).
        batch_size: minibatch size (B); the last batch of an epoch may be smaller. `-1` means the
            client's whole dataset (full-batch gradient descent).
        max_steps: optional cap on local steps (a fixed-step budget instead of epochs).
    """

    #: Plain minibatch training that a batched backend may reproduce (DP-SGD's trainer is not).
    vectorizable: bool = True

    def __init__(
        self,
        optimizer: OptimizerFactory | None = None,
        lr: float = 0.01,
        epochs: int = 1,
        batch_size: int = 10,
        max_steps: int | None = None,
    ) -> None:
        self.optimizer = optimizer if optimizer is not None else torch.optim.SGD
        self.lr = check_number("trainer.lr", lr, 0.0, low_open=True)
        self.epochs = check_int("trainer.epochs", epochs, 1)
        require(
            "trainer.batch_size",
            batch_size,
            isinstance(batch_size, int) and not isinstance(batch_size, bool) and (batch_size >= 1 or batch_size == -1),
            "an integer >= 1, or -1 for the whole client dataset",
        )
        self.batch_size = batch_size
        self.max_steps = check_int("trainer.max_steps", max_steps, 1, none=True)

    def optimizer_settings(self) -> OptimizerSettings:
        """What `self.optimizer` builds, probed on a dummy parameter (see `OptimizerSettings`)."""
        probe = self.optimizer([nn.Parameter(torch.zeros(1))], lr=self.lr)
        d = probe.defaults
        sgd = type(probe) is torch.optim.SGD
        return OptimizerSettings(
            name="SGD" if sgd else type(probe).__name__,
            lr=float(d.get("lr", self.lr)),
            momentum=float(d.get("momentum", 0.0)) if sgd else 0.0,
            dampening=float(d.get("dampening", 0.0)) if sgd else 0.0,
            weight_decay=float(d.get("weight_decay", 0.0)),
            nesterov=bool(d.get("nesterov", False)) if sgd else False,
            maximize=bool(d.get("maximize", False)),
        )

    def num_steps(self, num_samples: int, max_steps: int | None = None) -> int:
        """Local steps for a client with `num_samples` samples (a closed form, for FedNova and tests)."""
        if num_samples == 0:
            return 0  # an empty client (e.g. a natural group with no train sample) takes no step
        batch = num_samples if self.batch_size == -1 else self.batch_size
        steps = self.epochs * -(-num_samples // batch)
        for cap in (self.max_steps, max_steps):
            if cap is not None:
                steps = min(steps, cap)
        return steps

    def train(
        self,
        flat: FlatModel,
        global_vector: Tensor,
        x: Tensor,
        y: Tensor,
        indices: Tensor,
        generator: torch.Generator,
        loss_fn: Callable[[Tensor, Tensor], Tensor],
        client_id: int = 0,
        hooks: ClientHooks | None = None,
        max_steps: int | None = None,
    ) -> ClientUpdate:
        """Train `flat`'s module from `global_vector` on the samples `x[indices]`, `y[indices]`.

        `generator` (a CPU generator seeded from (seed, round, client)) orders the batches, so
        the batch sequence does not depend on the device or on which process trains the client.
        `max_steps` lets a sampler make this client a straggler that does only part of its work.
        """
        hooks = hooks or ClientHooks()
        model: nn.Module = flat.module
        flat.load(global_vector)
        params = flat.params
        global_params = flat.layout.split(global_vector)[: len(params)]
        optimizer = self.optimizer(params, lr=self.lr)
        model.train()
        hooks.on_train_start(params, global_params)

        n = len(indices)
        batch = n if self.batch_size == -1 else self.batch_size
        budget = self.num_steps(n, max_steps)
        classify = y.dtype == torch.int64
        # Hooks that do nothing after backward: skip the call and its gradient list per step.
        adjusts_grads = hooks.adjusts_gradients
        # Training statistics are reduced once after the loop, not per step: a step only keeps
        # references to its loss, predictions and labels (no extra kernels, no host sync).
        losses: list[Tensor] = []
        counts: list[int] = []
        predictions: list[Tensor] = []
        labels: list[Tensor] = []
        for perm in epoch_orders(n, batch, budget, generator):  # one epoch per permutation
            order = indices[to_device_async(perm, indices.device)]
            for start in range(0, n, batch):
                if len(losses) == budget:
                    break
                batch_ix = order[start : start + batch]
                xb, yb = x[batch_ix], y[batch_ix]
                out = model(xb)
                loss = loss_fn(out, yb)
                optimizer.zero_grad()
                loss.backward()
                if adjusts_grads:
                    hooks.after_backward(params, [p.grad for p in params], global_params)
                optimizer.step()
                losses.append(loss.detach())
                counts.append(len(batch_ix))
                if classify:
                    predictions.append(out.detach().argmax(-1))
                    labels.append(yb)

        metrics = {"samples_seen": torch.tensor(sum(counts))}
        if losses:
            # The sum over steps of (mean batch loss * batch size), without a tensor of batch sizes
            # (its copy to a GPU would wait for the queue: a host sync per client). Every batch holds
            # `batch` samples but the last of each epoch, the step at positions per_epoch-1 (mod
            # per_epoch), which is `short` samples shorter: a strided slice, no index tensor.
            stacked = torch.stack(losses).float()
            per_epoch = -(-n // batch)
            short = per_epoch * batch - n
            loss_sum = stacked.sum() * batch
            metrics["loss_sum"] = loss_sum - stacked[per_epoch - 1 :: per_epoch].sum() * short if short else loss_sum
        else:
            metrics["loss_sum"] = torch.zeros((), device=x.device)
        if classify:
            if predictions:
                hits = torch.cat([p.reshape(-1) for p in predictions]) == torch.cat([t.reshape(-1) for t in labels])
                metrics["correct"] = hits.sum()
            else:
                metrics["correct"] = torch.zeros((), device=x.device, dtype=torch.int64)
        update = ClientUpdate(
            client_id=client_id,
            delta=flat.vector - global_vector,
            num_samples=n,
            num_steps=len(losses),
            metrics=metrics,
        )
        hooks.on_train_end(update)
        return update
