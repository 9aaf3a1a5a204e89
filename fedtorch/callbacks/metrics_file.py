"""`metrics.jsonl`: one JSON object per round, flushed as soon as the round ends."""

from __future__ import annotations

import json
from pathlib import Path

from fedtorch.simulation import Callback, Simulation


class MetricsFile(Callback):
    """Append `{"round": r, ...metrics}` per round to a JSON-lines file.

    Each line is written whole and flushed, so a killed run leaves complete lines only. A resumed
    run first truncates the file to the rounds its checkpoint holds (no duplicated rounds).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def on_run_start(self, sim: Simulation) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        done = sim.state.round
        kept = []
        if done > 0 and self.path.exists():
            for line in self.path.read_text().splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    break  # a torn last line from a kill: drop it
                if row.get("round", 0) <= done:
                    kept.append(line)
        self.path.write_text("".join(line + "\n" for line in kept))

    def on_round_end(self, sim: Simulation, round_idx: int, metrics: dict[str, float]) -> None:
        with self.path.open("a") as handle:
            handle.write(json.dumps({"round": round_idx, **metrics}) + "\n")
            handle.flush()
