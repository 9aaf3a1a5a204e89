"""The privacy budget as a callback: stop before a round would exceed the target epsilon, and put
the final (epsilon, delta) into the run summary."""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any, Protocol

from fedtorch.callbacks.base import Callback

if TYPE_CHECKING:
    from fedtorch.simulation import Simulation

log = logging.getLogger("fedtorch")


class PrivacyLedger(Protocol):
    """What `CentralDP` and `LocalDPAccounting` expose about the privacy spent so far."""

    @property
    def epsilon(self) -> float: ...

    @property
    def delta(self) -> float: ...

    def next_epsilon(self) -> float: ...


class PrivacyBudget(Callback):
    """Stops the run when the *next* round would take epsilon past `target_epsilon`.

    The check runs after every round, so the run never releases a model whose privacy cost
    exceeds the target (`sim.stop_reason = "privacy_budget"`). Whether or not a target is set,
    the summary gets `privacy: {epsilon, delta, mode, target_epsilon}`.
    """

    def __init__(self, ledger: PrivacyLedger, target_epsilon: float | None = None, mode: str = "central") -> None:
        self.ledger = ledger
        self.target_epsilon = target_epsilon
        self.mode = mode

    def on_round_end(self, sim: Simulation, round_idx: int, metrics: dict[str, float]) -> None:
        if self.target_epsilon is None or sim.stop_reason is not None or round_idx >= sim.rounds:
            return
        upcoming = self.ledger.next_epsilon()
        if upcoming > self.target_epsilon:
            sim.stop_reason = "privacy_budget"
            log.info(
                "privacy budget: round %d would reach epsilon %.4g > target %.4g; stopping after round %d",
                round_idx + 1,
                upcoming,
                self.target_epsilon,
                round_idx,
            )

    def on_run_end(self, sim: Simulation, summary: dict[str, Any]) -> None:
        epsilon = self.ledger.epsilon
        summary["privacy"] = {
            "mode": self.mode,
            "epsilon": epsilon if math.isfinite(epsilon) else None,  # None: no noise, no guarantee
            "delta": self.ledger.delta,
            "target_epsilon": self.target_epsilon,
        }
