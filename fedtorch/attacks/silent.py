"""Silent attackers: the malicious clients train but their updates never reach the aggregator.

Not an attack from the literature but the reference every defense is measured against: an ideal
defense that recognizes every attacker and drops it still loses what the attackers' own data
would have taught the model. Under heterogeneous data those clients hold distributions no honest
client has, so the accuracy of FedAvg over the honest clients alone (this transform, with the
mean) is the ceiling of any defense for the same attackers, lower than attack-free FedAvg's.

It is omniscient only in form (it needs the whole step to drop updates from it).
"""

from __future__ import annotations

from torch import Tensor

from fedtorch.attacks.omniscient import OmniscientAttack
from fedtorch.client import ClientUpdate
from fedtorch.pipeline import StepRecord


class Silent(OmniscientAttack):
    """The malicious clients' updates are dropped before the aggregator (an oracle defense)."""

    def on_step(self, updates: list[ClientUpdate], record: StepRecord) -> list[ClientUpdate]:
        kept = [u for u in updates if not self.is_malicious(u.client_id)]
        self._step_count = len(updates) - len(kept)
        for update in updates:
            if self.is_malicious(update.client_id) and update.client_id in record.contributors:
                record.contributors.remove(update.client_id)  # its update is not in the aggregate
        return kept

    def craft(self, step: int, benign: Tensor, honest: Tensor, clients: list[int]) -> Tensor:
        raise NotImplementedError("silent attackers send nothing")
