"""FedAvg (McMahan et al. 2017, "Communication-Efficient Learning of Deep Networks from
Decentralized Data"): the new global model is the sample-weighted average of the client models.

In FedOpt form: global + weighted mean of the client deltas, i.e. SGD with lr 1.0 on the
pseudo-gradient -mean(delta). A server learning rate other than 1 scales the step (Reddi et al.).
"""

from __future__ import annotations

import torch

from fedtorch.aggregators import Aggregator
from fedtorch.strategies.base import Strategy


class FedAvg(Strategy):
    """FedAvg; `server_lr` = 1.0 is the original algorithm."""

    name = "fedavg"

    def __init__(self, server_lr: float = 1.0, aggregator: Aggregator | None = None, weighted: bool = True) -> None:
        super().__init__(torch.optim.SGD, server_lr=server_lr, aggregator=aggregator, weighted=weighted)
