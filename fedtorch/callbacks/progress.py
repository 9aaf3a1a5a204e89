"""The round progress bar, through tqdm: rate, ETA and the latest metrics.

    round 20/50  40%|#########               | [00:01<00:02, 12.10round/s, train/loss=0.7424, eval/accuracy=0.7799]

Where it goes decides how it is drawn (chosen when the run starts):

- a Jupyter notebook (tqdm.auto finds a kernel and ipywidgets): tqdm's widget;
- a terminal (the stream is a TTY): tqdm redrawing one line in place;
- anything else (a log file, a pipe, a CI log, a SLURM output file): one plain line every `every`
  rounds and after the last, never a carriage return, so the log reads top to bottom.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

from tqdm import tqdm as plain_tqdm
from tqdm.auto import tqdm as auto_tqdm

from fedtorch.callbacks.base import Callback, RunView

#: The metrics shown by default: the latest value of each (evaluation runs every `eval_every` rounds).
SHOWN = ("train/loss", "eval/loss", "eval/accuracy")
#: `{bar}` fills the terminal's width; a log line gets a fixed 24-character bar.
BAR_FORMAT = "{desc} {n_fmt}/{total_fmt} {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}, {rate_fmt}{postfix}]"
LOG_BAR_FORMAT = BAR_FORMAT.replace("{bar}", "{bar:24}")
FALLBACK_SIZE = (120, 24)  # (columns, rows) of a terminal that reports no size


def in_notebook() -> bool:
    """Whether tqdm.auto picked its notebook widget (a Jupyter kernel with ipywidgets installed)."""
    from tqdm.notebook import tqdm as notebook_tqdm  # imports without ipywidgets too

    return issubclass(auto_tqdm, notebook_tqdm)


class ProgressBar(Callback):
    """A tqdm bar over the run's rounds with the latest values of `metrics`.

    Args:
        stream: where to draw (default: stderr, looked up when the run starts).
        every: in log mode (not a terminal, not a notebook), print a line every `every` rounds;
            default: a tenth of the run (at least every round).
        metrics: the metrics to show, each with its latest value.
    """

    def __init__(self, stream: TextIO | None = None, every: int | None = None, metrics: Sequence[str] = SHOWN) -> None:
        if every is not None and every < 1:
            raise ValueError(f"ProgressBar needs every >= 1, got {every}")
        self.stream = stream
        self.every = every
        self.metrics = tuple(metrics)
        self.latest: dict[str, float] = {}
        self.bar: Any = None  # a tqdm bar in the terminal and notebook modes
        self.mode = "log"

    # -- the run --------------------------------------------------------------------------------
    def on_run_start(self, run: RunView) -> None:
        stream = self.stream or sys.stderr
        self.latest = {}
        self.first_round = run.round  # a resumed run counts its rate from here
        self.start = time.perf_counter()
        self.last_printed: int | None = None
        if in_notebook():
            self.mode = "notebook"
        elif _is_terminal(stream):
            self.mode = "terminal"
        else:
            self.mode = "log"
        if self.mode == "log":
            self.log_every = self.every or max(1, run.rounds // 10)
            return
        bar_class = auto_tqdm if self.mode == "notebook" else plain_tqdm
        # A terminal that reports no size (a pty without a window size, as under `script` or some CI
        # runners) makes tqdm hide the bar (0 rows) or draw it 0 wide: give it a fixed size instead.
        sized = _terminal_columns(stream) > 0
        self.bar = bar_class(
            total=run.rounds,
            initial=run.round,
            desc="round",
            unit="round",
            bar_format=BAR_FORMAT,
            file=stream,
            dynamic_ncols=sized,
            ncols=None if sized else FALLBACK_SIZE[0],
            nrows=None if sized else FALLBACK_SIZE[1],
            leave=True,
        )

    def on_round_end(self, run: RunView, round_idx: int, metrics: dict[str, float]) -> None:
        self.latest.update({k: v for k, v in metrics.items() if k in self.metrics})
        if self.bar is not None:
            self.bar.set_postfix_str(self.postfix(), refresh=False)
            self.bar.update(round_idx - self.bar.n)
            return
        final = round_idx >= run.rounds or run.stop_reason is not None
        if round_idx % self.log_every == 0 or final:
            self._print_line(run, round_idx)

    def on_run_end(self, run: RunView, summary: dict[str, Any]) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        elif self.last_printed != run.round and run.round > self.first_round:
            self._print_line(run, run.round)  # stopped early between two log lines

    # -- drawing --------------------------------------------------------------------------------
    def postfix(self) -> str:
        """The latest metrics, in the order they were asked for."""
        shown = [m for m in self.metrics if m in self.latest]
        return ", ".join(f"{m}={self.latest[m]:.4g}" for m in shown)

    def line(self, run: RunView, round_idx: int) -> str:
        """The log-mode line for `round_idx`, as tqdm formats it (rate and ETA over this process's rounds)."""
        elapsed = time.perf_counter() - self.start
        return plain_tqdm.format_meter(
            round_idx,
            run.rounds,
            elapsed,
            prefix="round",
            unit="round",
            ascii=True,
            bar_format=LOG_BAR_FORMAT,
            postfix=self.postfix() or None,
            initial=self.first_round,
        )

    def _print_line(self, run: RunView, round_idx: int) -> None:
        stream = self.stream or sys.stderr
        stream.write(self.line(run, round_idx) + "\n")
        stream.flush()
        self.last_printed = round_idx


def _terminal_columns(stream: TextIO) -> int:
    """The terminal's width in columns, 0 when it does not say."""
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, OSError, ValueError):
        return 0


def _is_terminal(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False
