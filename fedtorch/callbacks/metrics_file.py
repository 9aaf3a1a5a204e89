"""`metrics.jsonl`: one JSON object per round, flushed as soon as the round ends."""

from __future__ import annotations

import json
from pathlib import Path

from fedtorch.callbacks.base import Callback, RunView
from fedtorch.io import atomic_write_text


class MetricsFile(Callback):
    """Append `{"round": r, ...metrics}` per round to a JSON-lines file.

    Each line is written whole and flushed, so a killed run leaves complete lines only. A resumed
    run first rewrites the file from its checkpoint's history (no duplicated or missing rounds).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def on_run_start(self, run: RunView) -> None:
        # The restored history (the checkpoint's) is the truth: rows the killed process wrote after
        # its last checkpoint are dropped, and rows it never got to write are put back.
        rows = run.history if run.round > 0 else []
        atomic_write_text(self.path, "".join(json.dumps(row) + "\n" for row in rows))

    def on_round_end(self, run: RunView, round_idx: int, metrics: dict[str, float]) -> None:
        with self.path.open("a") as handle:
            handle.write(json.dumps({"round": round_idx, **metrics}) + "\n")
            handle.flush()
