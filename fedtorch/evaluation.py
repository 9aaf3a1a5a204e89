"""Evaluation of a model on a held-out set: loss and (for classification) accuracy."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor, nn


@torch.no_grad()
def evaluate(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    batch_size: int = 2048,
) -> dict[str, float]:
    """Mean loss and accuracy of `model` on (x, y), in eval mode, in large batches."""
    was_training = model.training
    model.eval()
    classify = y.dtype == torch.int64
    loss_sum = torch.zeros((), device=x.device, dtype=torch.float64)
    correct = torch.zeros((), device=x.device, dtype=torch.int64)
    for start in range(0, len(y), batch_size):
        xb, yb = x[start : start + batch_size], y[start : start + batch_size]
        out = model(xb)
        loss_sum += loss_fn(out, yb).double() * len(yb)
        if classify:
            correct += (out.argmax(-1) == yb).sum()
    model.train(was_training)
    n = max(len(y), 1)
    result = {"loss": loss_sum.item() / n}
    if classify:
        result["accuracy"] = correct.item() / n
    return result


def client_fairness(per_client: list[dict[str, float]], key: str = "accuracy") -> dict[str, float]:
    """Mean, standard deviation and worst-10% mean of a per-client metric (federated evaluation).

    The worst-10% figure (mean over the lowest decile of clients, at least one) is the fairness
    measure of Li et al. 2020 (q-FFL).
    """
    values = np.array([m[key] for m in per_client if key in m], dtype=np.float64)
    if values.size == 0:
        return {}
    worst = np.sort(values)[: max(1, int(np.ceil(0.1 * len(values))))]
    return {
        f"{key}_mean": float(values.mean()),
        f"{key}_std": float(values.std()),
        f"{key}_worst10": float(worst.mean()),
    }
