"""Federated strategies: one algorithm per module, client and server halves together."""

from fedtorch.strategies.apfl import APFL
from fedtorch.strategies.base import Strategy, StrategyContext
from fedtorch.strategies.cyclic import Cyclic
from fedtorch.strategies.ditto import Ditto
from fedtorch.strategies.fedavg import FedAvg
from fedtorch.strategies.fedavg_ft import FedAvgFT
from fedtorch.strategies.fedbabu import FedBABU
from fedtorch.strategies.fedbn import FedBN
from fedtorch.strategies.feddyn import FedDyn
from fedtorch.strategies.fedlc import FedLC
from fedtorch.strategies.fednova import FedNova
from fedtorch.strategies.fedopt import FedAdagrad, FedAdam, FedAvgM, FedYogi
from fedtorch.strategies.fedper import FedPer
from fedtorch.strategies.fedprox import FedProx
from fedtorch.strategies.fedrep import FedRep
from fedtorch.strategies.lg_fedavg import LGFedAvg
from fedtorch.strategies.moon import MOON
from fedtorch.strategies.per_fedavg import PerFedAvg
from fedtorch.strategies.personalization import PartialSharing, PersonalizedStrategy
from fedtorch.strategies.pfedme import PFedMe
from fedtorch.strategies.qffl import QFFL
from fedtorch.strategies.scaffold import Scaffold

__all__ = [
    "APFL",
    "MOON",
    "QFFL",
    "Cyclic",
    "Ditto",
    "FedAdagrad",
    "FedAdam",
    "FedAvg",
    "FedAvgFT",
    "FedAvgM",
    "FedBABU",
    "FedBN",
    "FedDyn",
    "FedLC",
    "FedNova",
    "FedPer",
    "FedProx",
    "FedRep",
    "FedYogi",
    "LGFedAvg",
    "PFedMe",
    "PartialSharing",
    "PerFedAvg",
    "PersonalizedStrategy",
    "Scaffold",
    "Strategy",
    "StrategyContext",
]
