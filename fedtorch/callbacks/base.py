"""The callback interface: observers of a run (logging, progress, checkpoints, budgets).

A callback sees the run through `RunView`, a read-only protocol (the round loop implements it),
so callbacks never import the loop and the loop never imports a callback.
"""

from __future__ import annotations

from typing import Any, Protocol


class RunView(Protocol):
    """What a callback may read about the run, and the one thing it may do: ask it to stop."""

    @property
    def round(self) -> int:
        """The last finished round (0 before the first)."""

    @property
    def rounds(self) -> int:
        """The number of rounds the run is planned for."""

    @property
    def history(self) -> list[dict[str, float]]:
        """One row per finished round: {"round": r, **metrics}."""

    @property
    def stop_reason(self) -> str | None:
        """Why the run stops early ("diverged", "privacy_budget", ...), or None."""

    def request_stop(self, reason: str) -> None:
        """Stop after the current round (the first reason given wins)."""

    def state_dict(self) -> dict[str, Any]:
        """Everything a checkpoint holds to continue the run exactly."""


class Callback:
    """Observer of a run: every method is optional."""

    def on_run_start(self, run: RunView) -> None:
        pass

    def on_round_start(self, run: RunView, round_idx: int) -> None:
        """Before round `round_idx` trains; `run.request_stop` here means it never does."""

    def on_round_end(self, run: RunView, round_idx: int, metrics: dict[str, float]) -> None:
        pass

    def on_run_end(self, run: RunView, summary: dict[str, Any]) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        """State a resumed run needs (e.g. early stopping's patience); most callbacks have none."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
