"""Byzantine clients as an update transform: a fixed set of malicious clients tampers with its
data (before training) and/or its update (after training), whatever the strategy.

Which clients are malicious is a function of the root seed alone: `choose_attackers` draws
round(fraction * K) of the K clients from the (seed, "attackers") stream, once, so the same
clients attack in every round they are sampled, on every backend and after a resume.

An attack has two halves, both optional:
- `poison(federation)`: data poisoning (label flipping, backdoor triggers): the malicious clients'
  samples are replaced by poisoned copies appended to the train tensors, so every backend trains
  them as ordinary data and honest clients' data is untouched;
- `tamper(step, update)`: model poisoning (sign flipping, Gaussian updates, scaling);
- or, for colluding attackers that see the honest clients' updates first (ALIE, IPM, min-max,
  Fang et al.), `craft(step, benign, honest)` in `fedtorch.attacks.omniscient.OmniscientAttack`.

The attackers are fixed by `bind(num_clients, seed)`, which the experiment calls before poisoning
the data (the constructor does it when both are given); `setup` binds from the pipeline context.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch.distributed as dist
from torch import Tensor

from fedtorch.client import ClientUpdate
from fedtorch.data.base import FederatedDataset
from fedtorch.errors import check_number
from fedtorch.pipeline import PipelineContext, StepRecord, UpdateTransform
from fedtorch.seeding import numpy_rng


def choose_attackers(num_clients: int, fraction: float, seed: int) -> np.ndarray:
    """round(fraction * K) distinct client ids, sorted, from the (seed, "attackers") stream."""
    check_number("attack.fraction", fraction, 0.0, 1.0)
    count = int(round(fraction * num_clients))
    return np.sort(numpy_rng(seed, "attackers").choice(num_clients, size=count, replace=False))


class Attack(UpdateTransform):
    """Base class: no poisoning, no tampering; counts the malicious clients of each step.

    Args:
        fraction: share of the clients that are malicious, in [0, 1].
        num_clients: K, the size of the federation (None: known at `bind`/`setup`).
        seed: root seed (which clients; any randomness of the attack); None: known at `bind`/`setup`.
    """

    group = "attack"

    def __init__(self, fraction: float = 0.2, num_clients: int | None = None, seed: int | None = None) -> None:
        self.fraction = check_number("attack.fraction", fraction, 0.0, 1.0)
        self.malicious_fraction = self.fraction  # the declaration fedtorch.compatibility reads
        self.attackers: frozenset[int] = frozenset()
        self.seed = 0
        self._bound: tuple[int, int] | None = None
        self._step_count = 0
        if num_clients is not None:
            self.bind(num_clients, 0 if seed is None else seed)

    def bind(self, num_clients: int, seed: int) -> Attack:
        """Fix the malicious clients of a federation of `num_clients` for the root `seed`."""
        self.seed = int(seed)
        self.num_clients = int(num_clients)
        self.attackers = frozenset(int(k) for k in choose_attackers(num_clients, self.fraction, seed))
        self._bound = (self.num_clients, self.seed)
        return self

    def setup(self, context: PipelineContext) -> None:
        if self._bound != (context.num_clients, context.seed):
            self.bind(context.num_clients, context.seed)
        self.context = context

    def is_malicious(self, client: int) -> bool:
        return client in self.attackers

    def poison(self, federation: FederatedDataset) -> FederatedDataset:
        """The federation with the malicious clients' data poisoned (default: unchanged)."""
        return federation

    def tamper(self, step: int, update: ClientUpdate) -> Tensor:
        """The delta a malicious client sends instead of its honest one (default: unchanged)."""
        return update.delta

    def begin(self, record: StepRecord) -> None:
        self._step_count = 0

    def on_update(self, update: ClientUpdate, record: StepRecord) -> ClientUpdate:
        if self.is_malicious(update.client_id):
            update.delta = self.tamper(record.step, update)
            self._step_count += 1
        return update

    def merge(self, group: dist.ProcessGroup | None = None) -> None:
        parts: list[Any] = [None] * dist.get_world_size(group)
        dist.all_gather_object(parts, self._step_count, group=group)
        self._step_count = sum(parts)

    def step_metrics(self) -> dict[str, float]:
        return {"attack/malicious_clients": float(self._step_count)}


def replacement_scale(context: PipelineContext, update: ClientUpdate) -> float:
    """Model replacement's boost gamma for this update: the global step then carries the attacker's
    whole update (Bagdasaryan et al. 2020, "How To Backdoor Federated Learning").

    The server moves the model by server_lr * sum_k w_k Delta_k / W, W the round's total weight.
    An attacker of weight w_a sending gamma * Delta_a contributes server_lr * w_a * gamma / W of it,
    which is 1 for gamma = W / (server_lr * w_a). W is known only after the round, so the expected
    total weight E[W] stands in: E[m] for a uniform mean (the paper's gamma = m / eta), E[sum n_k]
    with FedAvg's sample weights, so a large attacker is boosted less than a small one.
    """
    if context.expected_total_weight is None:
        raise ValueError("model replacement needs data-independent aggregation weights (sample counts or uniform)")
    weight = context.weighting(update)
    return float(context.expected_total_weight) / (float(context.server_lr) * max(weight, 1e-12))
