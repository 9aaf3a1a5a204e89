"""Cyclic weight transfer (Chang et al. 2018, "Distributed deep learning networks among
institutions for medical imaging", JAMIA 25(8)), as FLamby's Fed-Heart-Disease benchmark runs it
(Ogier du Terrail et al. 2022, `flamby/strategies/cyclic.py`): one client at a time trains the
model and passes it on to the next.

Round r: the one client of the round, k_r, starts from the current model x_r, trains locally
(FLamby: `num_updates` SGD steps) and its model becomes the next one:

    x_{r+1} = y_{k_r}(x_r)            (no averaging: the model is handed from client to client)

Which client trains when is the sampler's choice, not the strategy's: `sampler=cyclic
sampler.clients_per_round=1` visits the clients in id order (FLamby's `deterministic_cycle=True`),
and `sampler.shuffle=true` in a new random order every pass over the clients (FLamby's default,
`deterministic_cycle=False`). The strategy declares `cohort_size = 1`, so
`fedtorch.compatibility` refuses any sampler that does not give exactly one client every round.

In FedOpt form this is the server step x += Delta with Delta the single client's delta y - x,
taken uniformly weighted (weight 1, so the "mean" of one update is the update itself): the new
global model is the client's model up to the rounding of x + (y - x).

Note on FLamby's published Cyclic numbers: in FLamby's code (since May 2022) every client holds
its own deep copy of the model (`_Model` copies the model it is given), the copies are never
synchronized, and the benchmark evaluates the first client's copy (`s.run()[0]`); so the
published "Cyclic" row is in effect client 0 training alone with SGD during its turns.
experiments/fed_heart_disease/README.md measures that emulation beside this strategy.
"""

from __future__ import annotations

import torch

from fedtorch.aggregators import Aggregator
from fedtorch.strategies.base import Strategy


class Cyclic(Strategy):
    """Cyclical weight transfer: one client a round trains, and its model is the next global model.

    Args:
        aggregator: the reducer of the (single) update; the default mean returns it unchanged.
    """

    name = "cyclic"
    cohort_size = 1  # the model visits one client at a time (checked against the sampler)

    def __init__(self, aggregator: Aggregator | None = None) -> None:
        # Server SGD at lr 1 on -Delta is x + Delta; uniform weight 1 keeps Delta exactly the
        # client's delta (a weight n_k would be divided out again, with rounding).
        super().__init__(torch.optim.SGD, server_lr=1.0, aggregator=aggregator, weighted=False)
