"""Byzantine clients as an update transform: a fixed set of malicious clients tampers with its
data (before training) and/or its update (after training), whatever the strategy.

Which clients are malicious is a function of the root seed alone: `choose_attackers` draws
round(fraction * K) of the K clients from the (seed, "attackers") stream, once, so the same
clients attack in every round they are sampled, on every backend and after a resume.

An attack has two halves, both optional:
- `poison(federation)`: data poisoning (label flipping, backdoor triggers): the malicious clients'
  samples are replaced by poisoned copies appended to the train tensors, so every backend trains
  them as ordinary data and honest clients' data is untouched;
- `tamper(round, update)`: model poisoning (sign flipping, Gaussian updates, scaling).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch.distributed as dist
from torch import Tensor

from fedtorch.client import ClientUpdate
from fedtorch.data.base import FederatedDataset
from fedtorch.seeding import numpy_rng
from fedtorch.strategies.base import UpdateTransform


def choose_attackers(num_clients: int, fraction: float, seed: int) -> np.ndarray:
    """round(fraction * K) distinct client ids, sorted, from the (seed, "attackers") stream."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"attack.fraction={fraction} must be in [0, 1]")
    count = int(round(fraction * num_clients))
    return np.sort(numpy_rng(seed, "attackers").choice(num_clients, size=count, replace=False))


class Attack(UpdateTransform):
    """Base class: no poisoning, no tampering; counts the malicious clients of each round.

    Args:
        num_clients: K, the size of the federation.
        fraction: share of the clients that are malicious.
        seed: root seed (which clients; any randomness of the attack).
    """

    def __init__(self, num_clients: int, fraction: float = 0.2, seed: int = 0) -> None:
        self.num_clients = num_clients
        self.fraction = fraction
        self.seed = seed
        self.attackers = frozenset(int(k) for k in choose_attackers(num_clients, fraction, seed))
        self._round_count = 0

    def is_malicious(self, client: int) -> bool:
        return client in self.attackers

    def poison(self, federation: FederatedDataset) -> FederatedDataset:
        """The federation with the malicious clients' data poisoned (default: unchanged)."""
        return federation

    def tamper(self, round_idx: int, update: ClientUpdate) -> Tensor:
        """The delta a malicious client sends instead of its honest one (default: unchanged)."""
        return update.delta

    def begin_round(self, round_idx: int, client_ids: Any) -> None:
        self._round_count = 0

    def on_update(self, round_idx: int, update: ClientUpdate) -> ClientUpdate:
        if self.is_malicious(update.client_id):
            update.delta = self.tamper(round_idx, update)
            self._round_count += 1
        return update

    def merge(self, group: dist.ProcessGroup | None = None) -> None:
        parts: list[Any] = [None] * dist.get_world_size(group)
        dist.all_gather_object(parts, self._round_count, group=group)
        self._round_count = sum(parts)

    def round_metrics(self) -> dict[str, float]:
        return {"attack/malicious_clients": float(self._round_count)}
