"""A stand-in for the round loop: the `RunView` protocol and nothing else, so callback tests see
exactly what a callback may see."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fedtorch.callbacks.base import Callback


@dataclass
class FakeRun:
    rounds: int
    round: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    stop_reason: str | None = None

    def request_stop(self, reason: str) -> None:
        self.stop_reason = self.stop_reason or reason


def play(callback: Callback, run: FakeRun, rows: list[dict[str, float]]) -> dict[str, Any]:
    """Feed `rows` (one dict of metrics per round) to `callback` as the loop would; returns the summary.

    A non-finite value stops the run as diverged, as the loop does.
    """
    callback.on_run_start(run)
    for metrics in rows:
        run.round += 1
        run.history.append({"round": run.round, **metrics})
        if any(v != v or abs(v) == float("inf") for v in metrics.values()):
            run.stop_reason = "diverged"
        callback.on_round_end(run, run.round, metrics)
        if run.stop_reason is not None:
            break
    final: dict[str, float] = {}
    for row in run.history:
        final.update({k: v for k, v in row.items() if k != "round"})
    summary = {"metrics": final, "rounds": run.round, "wall_seconds": 1.0, "diverged": run.stop_reason == "diverged",
               "stop_reason": run.stop_reason}  # fmt: skip
    callback.on_run_end(run, summary)
    return summary
