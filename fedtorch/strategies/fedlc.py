"""FedLC (Zhang et al. 2022, "Federated Learning with Label Distribution Skew via Logits
Calibration", ICML).

Under label skew a client's local optimum over-predicts its frequent classes. FedLC trains on
calibrated logits that subtract a class-wise margin growing as the class gets rarer on the client:

    loss(x, y) = -log( exp(f_y(x) - tau n_y^(-1/4)) / sum_c exp(f_c(x) - tau n_c^(-1/4)) ),

n_c being the number of the client's training samples of class c. A class the client has no
sample of gets an infinite margin (the formula's limit): its logit leaves the softmax, so the
client does not learn to suppress classes it never sees. The server is FedAvg; the calibration
acts only in training, and evaluation scores the global model's plain logits. tau = 0 is FedAvg
(plain cross-entropy over every class).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from fedtorch.aggregators import Aggregator
from fedtorch.client import ClientUpdate
from fedtorch.errors import check_number
from fedtorch.runner import ClientContext
from fedtorch.strategies.base import Strategy


def calibrated_cross_entropy(
    logits: Tensor, target: Tensor, counts: Tensor, tau: float, reduction: str = "mean"
) -> Tensor:
    """Cross-entropy of the logits shifted by -tau * n_c^(-1/4) (n_c = 0: an infinite shift)."""
    if tau == 0:
        return F.cross_entropy(logits, target, reduction=reduction)  # plain CE (0 * inf would be nan)
    margin = tau * counts.to(logits.dtype).pow(-0.25)  # n_c = 0 -> inf
    return F.cross_entropy(logits - margin, target, reduction=reduction)


def calibrated_loss(labels: Tensor, tau: float) -> Callable[..., Tensor]:
    """The training loss of a client with training labels `labels`."""
    cache: dict[int, Tensor] = {}

    def loss(logits: Tensor, target: Tensor, reduction: str = "mean") -> Tensor:
        classes = logits.shape[-1]
        if classes not in cache:
            cache[classes] = torch.bincount(labels, minlength=classes)
        return calibrated_cross_entropy(logits, target, cache[classes], tau, reduction)

    return loss


class FedLC(Strategy):
    """FedAvg whose clients train on label-calibrated logits.

    Args:
        tau: the calibration strength (FedLC's tau; 0 is FedAvg; the paper tunes it around 1).
        server_lr, aggregator, weighted: FedAvg's server half.
    """

    name = "fedlc"
    changes_local_training = True

    def __init__(
        self, tau: float = 1.0, server_lr: float = 1.0, aggregator: Aggregator | None = None, weighted: bool = True
    ) -> None:
        super().__init__(torch.optim.SGD, server_lr=server_lr, aggregator=aggregator, weighted=weighted)
        self.tau = check_number("strategy.tau", tau, 0.0)

    def local_update(self, client: ClientContext) -> ClientUpdate:
        return client.train(loss_fn=calibrated_loss(client.labels(), self.tau))
