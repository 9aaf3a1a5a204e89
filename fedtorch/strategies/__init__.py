"""Federated strategies: one algorithm per module, client and server halves together."""

from fedtorch.strategies.base import Strategy, StrategyContext
from fedtorch.strategies.cyclic import Cyclic
from fedtorch.strategies.ditto import Ditto
from fedtorch.strategies.fedavg import FedAvg
from fedtorch.strategies.feddyn import FedDyn
from fedtorch.strategies.fednova import FedNova
from fedtorch.strategies.fedopt import FedAdagrad, FedAdam, FedAvgM, FedYogi
from fedtorch.strategies.fedper import FedPer
from fedtorch.strategies.fedprox import FedProx
from fedtorch.strategies.qffl import QFFL
from fedtorch.strategies.scaffold import Scaffold

__all__ = [
    "QFFL",
    "Cyclic",
    "Ditto",
    "FedAdagrad",
    "FedAdam",
    "FedAvg",
    "FedAvgM",
    "FedDyn",
    "FedNova",
    "FedPer",
    "FedProx",
    "FedYogi",
    "Scaffold",
    "Strategy",
    "StrategyContext",
]
