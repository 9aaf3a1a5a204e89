"""Stop a run once a metric reaches a target: "communication rounds to reach X% test accuracy".

McMahan et al. 2017 (Tables 1, 2 and 4) report the number of rounds FedAvg needs to first reach a
target test accuracy (97% for the MNIST 2NN, 99% for the CNN); every round after that changes
nothing in the table, so a reproduction (and the learning-rate grid behind it) can stop there.
Add it to any run as a `logging.<name>` node, the way trackers are added:

    logging:
      stop_at_target:
        _target_: fedtorch.callbacks.stop_at_target.StopAtTarget
        metric: eval/accuracy
        value: 0.97

The run then ends after the first round whose `metric` is >= `value` (`mode: max`) or <= it
(`mode: min`, for a loss), with `stop_reason: target_reached` in `summary.json`; a run that never
gets there trains all its rounds. `fedtorch.report --target eval/accuracy=0.97` reads the round.
"""

from __future__ import annotations

import math
from typing import Any

from fedtorch.callbacks.base import Callback, RunView
from fedtorch.errors import OptionError, check_choice, check_number

REASON = "target_reached"


class StopAtTarget(Callback):
    """Request a stop after the first round where `metric` reaches `value`.

    Args:
        metric: a per-round metric (e.g. "eval/accuracy"); rounds that do not log it are skipped.
        value: the target.
        mode: "max" (stop when metric >= value) or "min" (metric <= value).
        **context: what every `logging.<name>` callback is built with (run_dir, run_config,
            overrides); not needed here.
    """

    def __init__(self, metric: str, value: float, mode: str = "max", **context: Any) -> None:
        if not isinstance(metric, str) or not metric:
            raise OptionError("logging.stop_at_target.metric", metric, "a logged metric name, e.g. eval/accuracy")
        self.metric = metric
        self.value = check_number("logging.stop_at_target.value", value)
        self.mode = check_choice("logging.stop_at_target.mode", mode, ("max", "min"))

    def reached(self, metrics: dict[str, float]) -> bool:
        current = metrics.get(self.metric)
        if current is None or not math.isfinite(current):
            return False
        return current >= self.value if self.mode == "max" else current <= self.value

    def on_round_end(self, run: RunView, round_idx: int, metrics: dict[str, float]) -> None:
        if self.reached(metrics):
            run.request_stop(REASON)
