"""Central and per-client evaluation against a plain loop over clients."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fedtorch.evaluation import client_fairness, evaluate
from fedtorch.models import LogisticRegression


def test_per_client_metrics_equal_a_loop_over_clients():
    torch.manual_seed(0)
    model = LogisticRegression((5,), 4)
    x, y = torch.randn(203, 5), torch.randint(0, 4, (203,))
    groups = torch.randint(0, 11, (203,))
    result = evaluate(model, x, y, F.cross_entropy, batch_size=17, groups=groups, num_groups=11)

    with torch.no_grad():
        per_client = []
        for k in range(11):
            mask = groups == k
            out = model(x[mask])
            accuracy = float((out.argmax(1) == y[mask]).float().mean())
            per_client.append({"loss": float(F.cross_entropy(out, y[mask])), "accuracy": accuracy})
        central_loss = float(F.cross_entropy(model(x), y))
    accuracies = np.array([c["accuracy"] for c in per_client])
    losses = np.array([c["loss"] for c in per_client])
    assert result["loss"] == pytest.approx(central_loss, rel=1e-5)
    assert result["clients/accuracy_mean"] == pytest.approx(accuracies.mean())
    assert result["clients/accuracy_std"] == pytest.approx(accuracies.std())
    assert result["clients/accuracy_worst10"] == pytest.approx(np.sort(accuracies)[:2].mean())  # ceil(1.1) = 2
    assert result["clients/loss_worst10"] == pytest.approx(np.sort(losses)[-2:].mean(), rel=1e-5)


def test_fairness_worst_decile():
    rows = [{"accuracy": a} for a in [0.9, 0.1, 0.5, 0.7, 0.3, 0.8, 0.6, 0.4, 0.2, 1.0, 0.95]]
    stats = client_fairness(rows)
    assert stats["accuracy_worst10"] == pytest.approx((0.1 + 0.2) / 2)
