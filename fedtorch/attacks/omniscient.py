"""Colluding attackers with full knowledge: they craft their updates after seeing the step's benign ones.

The attacks that robust-FL papers evaluate against (ALIE, IPM, min-max / min-sum, Fang et al.'s)
assume the threat model of Fang et al. 2020 and Shejwalkar and Houmansadr 2021 called "full
knowledge": the malicious clients collude, and before sending they know every update the honest
clients of the step send (and the aggregation rule). In fedtorch such an attack is an
*omniscient* update transform (`fedtorch.pipeline`): the pipeline holds the step's updates until
the last one arrived and calls `on_step` once with all of them, sorted by client id; the attack
replaces its own clients' updates, and only then does the aggregator reduce.

A subclass implements `craft(step, benign, honest, clients)`: from the (b, d) stack of the benign
updates and the (m, d) stack of the attackers' own honestly trained updates it returns the (m, d)
updates the attackers send instead. Both stacks are in client-id order. A step whose cohort holds
no honest client gives the attackers nothing to observe; they then craft from their own honest
updates (the "partial knowledge" of the same papers). The statistics are taken in float64.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from fedtorch.attacks.base import Attack
from fedtorch.client import ClientUpdate
from fedtorch.pipeline import StepRecord


class OmniscientAttack(Attack):
    """Base class of the full-knowledge attacks: `craft` from the step's benign updates."""

    omniscient = True

    def __init__(self, fraction: float = 0.2, num_clients: int | None = None, seed: int | None = None) -> None:
        super().__init__(fraction, num_clients, seed)
        self._metrics: dict[str, float] = {}

    def craft(self, step: int, benign: Tensor, honest: Tensor, clients: list[int]) -> Tensor:
        """The (m, d) updates the m attackers `clients` send, from the (b, d) `benign` updates and
        the attackers' own (m, d) `honest` ones (float64, client-id order)."""
        raise NotImplementedError

    def begin(self, record: StepRecord) -> None:
        super().begin(record)
        self._metrics = {}

    def on_update(self, update: ClientUpdate, record: StepRecord) -> ClientUpdate:
        raise RuntimeError(f"{type(self).__name__} is omniscient: the pipeline calls on_step, not on_update")

    def on_step(self, updates: list[ClientUpdate], record: StepRecord) -> list[ClientUpdate]:
        malicious = [u for u in updates if self.is_malicious(u.client_id)]
        self._step_count = len(malicious)
        if not malicious:
            return updates
        honest = torch.stack([u.delta.to(torch.float64) for u in malicious])
        benign_updates = [u for u in updates if not self.is_malicious(u.client_id)]
        benign = torch.stack([u.delta.to(torch.float64) for u in benign_updates]) if benign_updates else honest
        crafted = self.craft(record.step, benign, honest, [u.client_id for u in malicious])
        for update, row in zip(malicious, crafted):
            update.delta = row.to(dtype=update.delta.dtype, device=update.delta.device)
        return updates

    def note(self, **metrics: float) -> None:
        """Record this step's attack parameters (logged as attack/<name>)."""
        self._metrics.update({f"attack/{k}": float(v) for k, v in metrics.items()})

    def merge(self, group: dist.ProcessGroup | None = None) -> None:
        """Nothing to combine: every process saw the whole step (see `fedtorch.pipeline`)."""

    def step_metrics(self) -> dict[str, float]:
        return {**super().step_metrics(), **self._metrics}


def benign_mean_std(benign: Tensor) -> tuple[Tensor, Tensor]:
    """Coordinate-wise mean and (unbiased, n - 1) standard deviation; std 0 for a single update."""
    mean = benign.mean(dim=0)
    if benign.shape[0] < 2:
        return mean, torch.zeros_like(mean)
    return mean, benign.std(dim=0, correction=1)
