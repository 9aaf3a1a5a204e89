"""Periodic checkpoints of a running simulation (see `fedtorch.checkpoint` for the file format)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fedtorch.callbacks.base import Callback, RunView
from fedtorch.checkpoint import (
    checkpoint_path,
    list_checkpoints,
    make_payload,
    remove_temporaries,
    save_checkpoint,
)


class Checkpoint(Callback):
    """Save the simulation every `every` rounds and after the last round into `<run_dir>/checkpoints/`.

    Put it last in the callback list, so that it captures the other callbacks' state after they
    have seen the round. A round that diverged (non-finite loss or model) is never saved: the
    last good checkpoint stays the newest one.

    Args:
        run_dir: the run folder.
        every: checkpoint period in rounds (>= 1).
        keep: how many of the newest checkpoints to keep (older ones are deleted; >= 1).
        config: the run's resolved config (nested dict), stored so a resume can compare configs.
        choices: the config-group choices (`strategy: fedavg`, ...), stored for the same reason.
    """

    def __init__(
        self,
        run_dir: str | Path,
        every: int,
        keep: int = 2,
        config: dict[str, Any] | None = None,
        choices: dict[str, Any] | None = None,
    ) -> None:
        if every < 1 or keep < 1:
            raise ValueError(f"Checkpoint needs every >= 1 and keep >= 1, got every={every}, keep={keep}")
        self.run_dir = Path(run_dir)
        self.every = every
        self.keep = keep
        self.config = config or {}
        self.choices = choices or {}
        self.last_round: int | None = None
        self.last_path: Path | None = None

    def on_run_start(self, run: RunView) -> None:
        remove_temporaries(self.run_dir)  # torn writes of a killed process
        found = list_checkpoints(self.run_dir)
        # Checkpoints newer than the resumed round (resume from an older file) belong to the
        # abandoned trajectory: drop them, so the newest checkpoint is always this run's.
        for round_idx, path in found:
            if round_idx > run.round:
                path.unlink(missing_ok=True)
        kept = [(r, p) for r, p in found if r <= run.round]
        if kept:
            self.last_round, self.last_path = kept[-1]

    def on_round_end(self, run: RunView, round_idx: int, metrics: dict[str, float]) -> None:
        if run.stop_reason == "diverged":
            return
        final = round_idx >= run.rounds or run.stop_reason is not None
        if round_idx % self.every == 0 or final:
            self.save(run)

    def on_run_end(self, run: RunView, summary: dict[str, Any]) -> None:
        # A run that stopped by plan between periodic checkpoints (a spent privacy budget) saves its
        # final state, so that a resume sees the stop and never trains past it. A failed run keeps
        # its last good checkpoint.
        if summary.get("diverged") or "message" in summary or run.round == 0:
            return
        if self.last_round != run.round or run.stop_reason is not None:
            self.save(run)

    def save(self, run: RunView) -> Path:
        """Write the checkpoint of the round just finished and prune old ones."""
        round_idx = run.round
        path = checkpoint_path(self.run_dir, round_idx)
        save_checkpoint(path, make_payload(round_idx, run.state_dict(), self.config, self.choices))
        self.last_round, self.last_path = round_idx, path
        for _, old in list_checkpoints(self.run_dir)[: -self.keep]:
            old.unlink(missing_ok=True)
        return path
