"""Tools for strategies whose local steps are not plain local SGD on one model.

pFedMe solves an inner problem per batch, Per-FedAvg takes gradients at points other than its
weights, APFL trains a second model through a mixture, MOON needs the representations of three
models. Their client halves run their own loops over `ClientContext.batches()` (the same batches
`LocalTrainer` would draw) and use these helpers:

- `grad_at(client, vector, x, y)`: loss and gradient of the model at any flat weights, through
  `torch.func.functional_call`, leaving the worker model's weights and statistics alone;
- `features_at(client, vector, x)`: the representation `model.features(x)` of any flat weights
  (`fedtorch.models.protocol`);
- `StepStats` and `finish`: the `ClientUpdate` with the same training metrics `LocalTrainer`
  reports (loss and accuracy of every step's minibatch before the step, no host sync per step);
- `require_plain_sgd`: their derivations assume plain SGD steps; other local optimizers are refused
  at set-up with one line.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.func import functional_call

from fedtorch.client import ClientUpdate, OptimizerSettings
from fedtorch.errors import OptionError
from fedtorch.runner import ClientContext


def require_plain_sgd(strategy: str, settings: OptimizerSettings) -> None:
    """Refuse, in one line, a local optimizer other than SGD without momentum or weight decay."""
    if not settings.is_sgd or settings.momentum or settings.weight_decay or settings.nesterov:
        what = settings.name
        if settings.is_sgd:
            what = f"SGD(momentum={settings.momentum}, weight_decay={settings.weight_decay})"
        raise OptionError(
            "trainer.optimizer", what, f"strategy={strategy} takes plain SGD steps (no momentum, no weight decay)"
        )


def _entries(client: ClientContext, vector: Tensor, params: Tensor | None = None) -> dict[str, Tensor]:
    """name -> tensor for `functional_call`: the parameter values of `vector` (or `params`, a flat
    parameter vector that may require grad) and clones of its buffers (so that a forward pass in
    train mode updates no one's running statistics)."""
    layout = client.layout
    n = layout.num_params
    full = torch.cat([vector[:n] if params is None else params, vector[n:].detach().clone()])
    return dict(zip(layout.names, layout.split(full)))


def grad_at(client: ClientContext, vector: Tensor, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(loss, output, flat gradient over the parameters) of the model with weights `vector` on (x, y)."""
    params = vector[: client.layout.num_params].detach().clone().requires_grad_(True)
    out = functional_call(client.model, _entries(client, vector, params), (x,))
    loss = client.loss_fn(out, y)
    (grad,) = torch.autograd.grad(loss, params)
    return loss.detach(), out.detach(), grad


class _Features(nn.Module):
    """Calls `model.features` under `functional_call` (which calls `forward`); holds no weights of its own."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model.features(x)


@torch.no_grad()
def features_at(client: ClientContext, vector: Tensor, x: Tensor) -> Tensor:
    """The representation `model.features(x)` of the model with weights `vector` (no gradient)."""
    entries = {f"model.{k}": v for k, v in _entries(client, vector).items()}
    return functional_call(_Features(client.model), entries, (x,))


class StepStats:
    """The per-step training statistics `LocalTrainer` reports, kept as tensors until `metrics()`."""

    def __init__(self) -> None:
        self.losses: list[Tensor] = []
        self.counts: list[int] = []
        self.hits: list[Tensor] = []

    def add(self, loss: Tensor, out: Tensor, y: Tensor) -> None:
        """One step's minibatch loss (mean) and predictions, before the step."""
        self.losses.append(loss.detach())
        self.counts.append(len(y))
        if y.dtype == torch.int64:
            self.hits.append((out.detach().argmax(-1) == y).sum())

    @property
    def steps(self) -> int:
        return len(self.losses)

    def metrics(self, device: torch.device, classify: bool) -> dict[str, Tensor]:
        metrics = {"loss_sum": torch.zeros((), device=device), "samples_seen": torch.tensor(sum(self.counts))}
        if self.losses:
            weights = torch.tensor(self.counts, dtype=torch.float32).to(device)
            metrics["loss_sum"] = torch.dot(torch.stack(self.losses).float(), weights)
        if classify:
            metrics["correct"] = torch.stack(self.hits).sum() if self.hits else torch.zeros((), dtype=torch.int64)
        return metrics


def finish(client: ClientContext, start: Tensor, trained: Tensor, stats: StepStats) -> ClientUpdate:
    """The update of a turn that went from `start` to `trained`."""
    classify = client.labels().dtype == torch.int64
    return ClientUpdate(
        client_id=client.client_id,
        delta=trained - start,
        num_samples=client.num_samples,
        num_steps=stats.steps,
        metrics=stats.metrics(start.device, classify),
    )
