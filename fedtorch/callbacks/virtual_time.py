"""TensorBoard curves against virtual time, for runs on the virtual clock (`fedtorch.clock`).

The main TensorBoard callback logs every scalar with the server step as its step. This one logs
the same scalars again, in the run folder's `virtual_time/` subfolder (a TensorBoard run of its
own) under the tag family `virtual_time/`, with the *virtual second* (rounded down) as the step,
so synchronous and asynchronous runs, whose steps last different amounts of time, compare on one
axis (time-to-accuracy). Asynchronous servers also get the histogram of each step's staleness
values (`virtual_time/async/staleness`).

Everything it writes derives from the run's history and the staleness values it keeps in its
checkpointed state, so a resumed run rewrites the folder from them: no point is repeated or lost.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any

import torch
from torch.utils.tensorboard import SummaryWriter

from fedtorch.callbacks.base import Callback, RunView

#: The metric carrying the virtual time of the end of a step (`fedtorch.clock.step_metrics`).
TIME_KEY = "time/virtual_seconds"
PREFIX = "virtual_time/"
FOLDER = "virtual_time"


class VirtualTimeTensorBoard(Callback):
    """`virtual_time/<tag>` = every scalar of a step, at step floor(time/virtual_seconds).

    Args:
        run_dir: the run folder (the events go into its `virtual_time/` subfolder).
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.log_dir = Path(run_dir) / FOLDER
        self.staleness: dict[int, list[int]] = {}  # server step -> its updates' staleness

    def on_run_start(self, run: RunView) -> None:
        shutil.rmtree(self.log_dir, ignore_errors=True)  # rewritten from the (restored) history
        self.writer = SummaryWriter(str(self.log_dir))
        self.staleness = {step: values for step, values in self.staleness.items() if step <= run.round}
        for row in run.history:
            self._write(int(row["round"]), row)
        self.writer.flush()

    def on_round_end(self, run: RunView, round_idx: int, metrics: dict[str, float]) -> None:
        staleness = getattr(run, "step_staleness", None)
        if staleness:
            self.staleness[round_idx] = [int(s) for s in staleness]
        self._write(round_idx, metrics)
        self.writer.flush()

    def _write(self, step: int, metrics: dict[str, float]) -> None:
        if TIME_KEY not in metrics:
            return
        second = math.floor(metrics[TIME_KEY])
        for key, value in metrics.items():
            if key not in (TIME_KEY, "round"):
                self.writer.add_scalar(PREFIX + key, value, second)
        if step in self.staleness:
            values = torch.tensor(self.staleness[step], dtype=torch.float64)
            self.writer.add_histogram(PREFIX + "async/staleness", values, second)

    def on_run_end(self, run: RunView, summary: dict[str, Any]) -> None:
        self.writer.close()

    def state_dict(self) -> dict[str, Any]:
        return {"staleness": {step: list(values) for step, values in self.staleness.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.staleness = {int(step): [int(s) for s in values] for step, values in state.get("staleness", {}).items()}
