"""Evaluation: the global model on the central test set, personal models on the clients' own test
splits, and the loss of a model on a client's training data."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from fedtorch.params import FlatModel


@torch.no_grad()
def evaluate(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    loss_fn: Callable[..., Tensor],
    batch_size: int = 2048,
    groups: Tensor | None = None,
    num_groups: int = 0,
) -> dict[str, float]:
    """Mean loss and accuracy of `model` on (x, y), in eval mode, in large batches.

    With `groups` (the client id of every test sample, -1 for a sample of no client) the same
    single pass also yields each
    client's own loss and accuracy, summarized by `client_fairness` as `clients/...` keys: the
    federated evaluation on per-client test splits, at the cost of one central evaluation.
    `loss_fn` must then accept `reduction="none"` (torch's functional losses do).
    """
    was_training = model.training
    model.eval()
    classify = y.dtype == torch.int64
    loss_sum = torch.zeros((), device=x.device, dtype=torch.float64)
    correct = torch.zeros((), device=x.device, dtype=torch.int64)
    if groups is not None:
        group_loss = torch.zeros(num_groups, device=x.device, dtype=torch.float64)
        group_correct = torch.zeros(num_groups, device=x.device, dtype=torch.float64)
    for start in range(0, len(y), batch_size):
        xb, yb = x[start : start + batch_size], y[start : start + batch_size]
        out = model(xb)
        if groups is None:
            loss_sum += loss_fn(out, yb).double() * len(yb)
            if classify:
                correct += (out.argmax(-1) == yb).sum()
            continue
        gb = groups[start : start + batch_size]
        owned = gb >= 0  # -1: a test sample of no client (counted centrally only)
        per_sample = loss_fn(out, yb, reduction="none").double()
        loss_sum += per_sample.sum()
        group_loss.index_add_(0, gb[owned], per_sample[owned])
        if classify:
            hits = out.argmax(-1) == yb
            correct += hits.sum()
            group_correct.index_add_(0, gb[owned], hits[owned].double())
    model.train(was_training)
    n = max(len(y), 1)
    result = {"loss": loss_sum.item() / n}
    if classify:
        result["accuracy"] = correct.item() / n
    if groups is not None:
        sizes = torch.bincount(groups[groups >= 0], minlength=num_groups).double()
        present = (sizes > 0).cpu()
        per_client = [{"loss": float(v)} for v in (group_loss.cpu() / sizes.cpu().clamp(min=1))[present]]
        if classify:
            accuracy = (group_correct.cpu() / sizes.cpu().clamp(min=1))[present]
            for row, value in zip(per_client, accuracy):
                row["accuracy"] = float(value)
        weights = sizes.cpu()[present].numpy()
        for key in ("loss", "accuracy"):
            result.update({f"clients/{k}": v for k, v in client_fairness(per_client, key, weights).items()})
    return result


@torch.no_grad()
def mean_loss(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    indices: Tensor,
    loss_fn: Callable[..., Tensor],
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


def evaluate_per_client(
    flat: FlatModel,
    test_x: Tensor,
    test_y: Tensor,
    client_test_indices: Sequence[Tensor],
    vector_for_client: Callable[[int], Tensor],
    loss_fn: Callable[..., Tensor],
    classify: bool,
    prefix: str = "personal",
    batch_size: int = 2048,
) -> dict[str, float]:
    """Evaluate client k's model `vector_for_client(k)` on client k's test split, for every client.

    Personalized FL is judged on each client's own test split with the model that client would
    use. `vector_for_client` may train (a fine-tuning personalization step on the same worker
    model): the returned weights are loaded and scored in eval mode afterwards. Returns
    `{prefix}/{loss,accuracy}_{mean,weighted_mean,std,worst10,best10}` over the clients that have
    test samples (see `client_fairness`); the per-client sums stay on the device until one host
    sync at the end.
    """
    model = flat.module
    was_training = model.training
    num_clients = len(client_test_indices)
    loss_sums = torch.zeros(num_clients, device=test_x.device, dtype=torch.float64)
    correct = torch.zeros(num_clients, device=test_x.device, dtype=torch.int64)
    # Only the clients that have test samples (a CSR index gives its sizes without a loop).
    sizes_of = getattr(client_test_indices, "sizes", None)
    test_sizes = sizes_of() if sizes_of is not None else np.array([len(ix) for ix in client_test_indices])
    for k in np.flatnonzero(test_sizes).tolist():
        indices = client_test_indices[k]
        # Loaded after the call, which may have trained the worker model (one copy per client).
        flat.load(vector_for_client(k))
        model.eval()
        with torch.no_grad():
            for start in range(0, len(indices), batch_size):
                ix = indices[start : start + batch_size]
                out = model(test_x[ix])
                loss_sums[k] += loss_fn(out, test_y[ix]).double() * len(ix)
                if classify:
                    correct[k] += (out.argmax(-1) == test_y[ix]).sum()
    model.train(was_training)
    sizes = torch.as_tensor(np.asarray(test_sizes), dtype=torch.float64)
    has_test = sizes > 0
    per_client = [{"loss": float(v)} for v in (loss_sums.cpu() / sizes.clamp(min=1))[has_test]]
    if classify:
        for row, value in zip(per_client, (correct.cpu().double() / sizes.clamp(min=1))[has_test]):
            row["accuracy"] = float(value)
    weights = sizes[has_test].numpy()
    metrics: dict[str, float] = {}
    for key in ("loss", "accuracy"):
        metrics.update({f"{prefix}/{k}": v for k, v in client_fairness(per_client, key, weights).items()})
    return metrics


def client_fairness(
    per_client: list[dict[str, float]], key: str = "accuracy", sizes: Sequence[float] | np.ndarray | None = None
) -> dict[str, float]:
    """Mean, test-size-weighted mean, standard deviation, worst-10% and best-10% means of a
    per-client metric (federated evaluation).

    `mean` weights clients equally (the pFL papers' "average personalized accuracy");
    `weighted_mean` (with `sizes`, the clients' test-split sizes) weights them by their test samples,
    i.e. the metric pooled over all the clients' test samples. The worst-10% figure (the mean over
    the worst decile of clients, at least one client) is the fairness measure of Li et al. 2020
    (q-FFL); best-10% the same over the best decile. Worst means lowest for accuracy and highest
    for a loss (any key containing "loss"). The std is the population one (ddof = 0).
    """
    rows = [(m[key], i) for i, m in enumerate(per_client) if key in m]
    if not rows:
        return {}
    values = np.array([v for v, _ in rows], dtype=np.float64)
    ordered = np.sort(values)
    if "loss" in key:
        ordered = ordered[::-1]
    decile = max(1, int(np.ceil(0.1 * len(values))))
    stats = {
        f"{key}_mean": float(values.mean()),
        f"{key}_std": float(values.std()),
        f"{key}_worst10": float(ordered[:decile].mean()),
        f"{key}_best10": float(ordered[-decile:].mean()),
    }
    if sizes is not None:
        weights = np.asarray(sizes, dtype=np.float64)[[i for _, i in rows]]
        if weights.sum() > 0:
            stats[f"{key}_weighted_mean"] = float((values * weights).sum() / weights.sum())
    return stats
