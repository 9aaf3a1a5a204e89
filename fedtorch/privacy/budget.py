"""The privacy budget as a callback: no round starts that would take epsilon past the target, and
the final (epsilon, delta) goes into the run summary."""

from __future__ import annotations

import logging
import math
from typing import Any, Protocol

from fedtorch.callbacks.base import Callback, RunView

log = logging.getLogger("fedtorch")


class PrivacyLedger(Protocol):
    """What `CentralDP` and `LocalDPAccounting` expose about the privacy spent so far."""

    @property
    def epsilon(self) -> float: ...

    @property
    def delta(self) -> float: ...

    def next_epsilon(self) -> float: ...


class PrivacyBudget(Callback):
    """Stops the run before a round whose release would take epsilon past `target_epsilon`.

    The check runs before every round, from the ledger's state (which a checkpoint restores), so
    no resume, extension (`rounds=` raised) or re-run of a finished run can release a round past
    the target: the run stops with `stop_reason = "privacy_budget"`. Whether or not a target is
    set, the summary gets `privacy: {epsilon, delta, mode, target_epsilon}`.
    """

    def __init__(self, ledger: PrivacyLedger, target_epsilon: float | None = None, mode: str = "central") -> None:
        self.ledger = ledger
        self.target_epsilon = target_epsilon
        self.mode = mode

    def on_round_start(self, run: RunView, round_idx: int) -> None:
        if self.target_epsilon is None or run.stop_reason is not None:
            return
        upcoming = self.ledger.next_epsilon()
        if upcoming > self.target_epsilon:
            run.request_stop("privacy_budget")
            log.info(
                "privacy budget: round %d would reach epsilon %.4g > target %.4g; stopping after round %d",
                round_idx,
                upcoming,
                self.target_epsilon,
                round_idx - 1,
            )

    def on_run_end(self, run: RunView, summary: dict[str, Any]) -> None:
        epsilon = self.ledger.epsilon
        summary["privacy"] = {
            "mode": self.mode,
            "epsilon": epsilon if math.isfinite(epsilon) else None,  # None: no noise, no guarantee
            "delta": self.ledger.delta,
            "target_epsilon": self.target_epsilon,
        }
