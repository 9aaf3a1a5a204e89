"""Federated strategies: one algorithm per module, client and server halves together."""

from fedtorch.strategies.base import Strategy, UpdateTransform
from fedtorch.strategies.fedavg import FedAvg

__all__ = ["FedAvg", "Strategy", "UpdateTransform"]
