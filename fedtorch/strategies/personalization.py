"""Per-client evaluation of personalized models (Ditto, FedPer), and q-FFL's client losses.

Personalized FL is judged on each client's own test split with the model that client would use:
the mean, the spread, and the worst 10% of per-client accuracy (the fairness figures of q-FFL and
Ditto). The per-client sums stay on the device until one host sync at the end.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from fedtorch.evaluation import client_fairness

if TYPE_CHECKING:
    from fedtorch.simulation import Simulation


@torch.no_grad()
def chunked_loss(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    indices: Tensor,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    batch_size: int = 2048,
) -> Tensor:
    """Mean loss of `model` (in eval mode) over the samples `indices`, as a 0-d float64 tensor."""
    was_training = model.training
    model.eval()
    total = torch.zeros((), device=x.device, dtype=torch.float64)
    for start in range(0, len(indices), batch_size):
        ix = indices[start : start + batch_size]
        total += loss_fn(model(x[ix]), y[ix]).double() * len(ix)
    model.train(was_training)
    return total / max(len(indices), 1)


@torch.no_grad()
def evaluate_per_client(
    sim: Simulation,
    vector_for_client: Callable[[int], Tensor],
    prefix: str = "personal",
    batch_size: int = 2048,
) -> dict[str, float]:
    """Evaluate client k's model `vector_for_client(k)` on client k's test split, for every client.

    Returns `{prefix}/loss_{mean,std,worst10}` and, for classification,
    `{prefix}/accuracy_{mean,std,worst10}` over the clients that have test samples (the same
    summary `fedtorch.evaluation.evaluate` gives the global model as `clients/...`). Empty when
    the federation has no per-client test splits (e.g. an IID split of a centralized dataset).
    """
    fed = sim.federation
    if fed.client_test_indices is None:
        return {}
    model = sim.model
    was_training = model.training
    model.eval()
    loss_sums = torch.zeros(fed.num_clients, device=fed.test_x.device, dtype=torch.float64)
    correct = torch.zeros(fed.num_clients, device=fed.test_x.device, dtype=torch.int64)
    loaded: Tensor | None = None
    for k, indices in enumerate(fed.client_test_indices):
        if len(indices) == 0:
            continue
        vector = vector_for_client(k)
        if vector is not loaded:  # the same (global) vector for many clients is loaded once
            sim.flat.load(vector)
            loaded = vector
        for start in range(0, len(indices), batch_size):
            ix = indices[start : start + batch_size]
            out = model(fed.test_x[ix])
            loss_sums[k] += sim.loss_fn(out, fed.test_y[ix]).double() * len(ix)
            if fed.is_classification:
                correct[k] += (out.argmax(-1) == fed.test_y[ix]).sum()
    model.train(was_training)
    sizes = torch.tensor([len(ix) for ix in fed.client_test_indices], dtype=torch.float64)
    has_test = sizes > 0
    per_client = [{"loss": float(v)} for v in (loss_sums.cpu() / sizes.clamp(min=1))[has_test]]
    if fed.is_classification:
        for row, value in zip(per_client, (correct.cpu().double() / sizes.clamp(min=1))[has_test]):
            row["accuracy"] = float(value)
    metrics: dict[str, float] = {}
    for key in ("loss", "accuracy"):
        metrics.update({f"{prefix}/{k}": v for k, v in client_fairness(per_client, key).items()})
    return metrics
