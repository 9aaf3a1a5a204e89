"""A dependency-free progress bar over rounds with the latest metrics."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from fedtorch.callbacks.base import Callback, RunView

_SHOWN = ("train/loss", "eval/loss", "eval/accuracy")


class ProgressBar(Callback):
    """Redraws one line per round on a terminal; prints every `every` rounds to a log file."""

    def __init__(self, stream: TextIO | None = None, width: int = 24, every: int | None = None) -> None:
        self.stream = stream or sys.stderr
        self.width = width
        self.interactive = self.stream.isatty()
        self.every = every
        self.latest: dict[str, float] = {}

    def on_run_start(self, run: RunView) -> None:
        self.start = time.perf_counter()
        self.first_round = run.round
        if self.every is None:
            self.every = 1 if self.interactive else max(1, run.rounds // 10)

    def on_round_end(self, run: RunView, round_idx: int, metrics: dict[str, float]) -> None:
        self.latest.update({k: v for k, v in metrics.items() if k in _SHOWN})
        if not self.interactive and round_idx % self.every and round_idx != run.rounds:
            return
        done = round_idx / run.rounds
        filled = int(self.width * done)
        bar = "#" * filled + "-" * (self.width - filled)
        elapsed = time.perf_counter() - self.start
        rate = (round_idx - self.first_round) / elapsed if elapsed > 0 else 0.0
        shown = " ".join(f"{k}={v:.4g}" for k, v in self.latest.items())
        line = f"round {round_idx}/{run.rounds} [{bar}] {rate:.1f} rounds/s {shown}"
        end = "" if self.interactive and round_idx != run.rounds else "\n"
        self.stream.write(("\r" if self.interactive else "") + line + end)
        self.stream.flush()
