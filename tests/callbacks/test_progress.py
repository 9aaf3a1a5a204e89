"""The tqdm progress bar in its terminal and log (non-terminal) modes, driven by a fake run."""

from __future__ import annotations

import io
import re

import pytest

from fedtorch.callbacks.progress import ProgressBar
from tests.callbacks.fake_run import FakeRun


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def drive(bar: ProgressBar, run: FakeRun, eval_every: int = 1, stop_at: int | None = None) -> None:
    """Play a run through the callback: train/loss every round, evaluation every `eval_every`."""
    bar.on_run_start(run)
    while run.round < run.rounds and run.stop_reason is None:
        r = run.round + 1
        metrics = {"train/loss": 1.0 / r, "round/clients": 10.0}
        if r % eval_every == 0 or r == run.rounds:
            metrics |= {"eval/loss": 2.0 / r, "eval/accuracy": 1 - 1.0 / (r + 1)}
        run.round = r
        run.history.append({"round": r, **metrics})
        if r == stop_at:
            run.request_stop("diverged")
        bar.on_round_end(run, r, metrics)
    bar.on_run_end(run, {"rounds": run.round})


def test_log_mode_prints_one_plain_line_every_n_rounds():
    stream = io.StringIO()  # not a TTY: a log file, a pipe, CI
    bar = ProgressBar(stream=stream)
    drive(bar, FakeRun(rounds=20), eval_every=5)
    assert bar.mode == "log" and "\r" not in stream.getvalue()
    lines = stream.getvalue().splitlines()
    printed = [int(re.match(r"round (\d+)/20 ", line).group(1)) for line in lines]
    assert printed == list(range(2, 21, 2))  # every 20 // 10 rounds
    # tqdm's line: percentage, bar, elapsed<remaining (the ETA), rate, then the latest metrics. Round 6
    # shows round 5's evaluation, the latest there is, beside round 6's train/loss.
    sixth = lines[2]
    assert re.fullmatch(
        r"round 6/20  30%\|#{7}.? *\| \[\d\d:\d\d<\d\d:\d\d, +\S+(round/s|s/round), "
        r"train/loss=0\.1667, eval/loss=0\.4, eval/accuracy=0\.8333\]",
        sixth,
    ), sixth
    assert lines[-1].startswith("round 20/20 100%|########################|")
    assert lines[0].count("eval/") == 0  # nothing evaluated yet at round 2


def test_log_mode_prints_the_round_a_run_stopped_at():
    stream = io.StringIO()
    drive(ProgressBar(stream=stream, every=5), FakeRun(rounds=20), stop_at=7)
    lines = stream.getvalue().splitlines()
    assert [line.split(" ")[1] for line in lines] == ["5/20", "7/20"]


def test_terminal_mode_redraws_one_tqdm_line():
    stream = Terminal()
    bar = ProgressBar(stream=stream)
    drive(bar, FakeRun(rounds=5))
    assert bar.mode == "terminal"
    output = stream.getvalue()
    assert output.count("\r") >= 2 and output.endswith("\n")  # redrawn in place, left on screen at the end
    final = output.rstrip("\n").split("\r")[-1]
    assert final.startswith("round 5/5 100%|") and "train/loss=0.2, eval/loss=0.4, eval/accuracy=0.8333]" in final
    assert re.search(r"\[\d\d:\d\d<\d\d:\d\d, +\S+(round/s|s/round)", final), final


def test_a_resumed_run_starts_the_bar_at_its_round():
    stream = io.StringIO()
    run = FakeRun(rounds=10, round=6)
    drive(ProgressBar(stream=stream, every=2), run)
    assert [line.split(" ")[1] for line in stream.getvalue().splitlines()] == ["8/10", "10/10"]


def test_every_must_be_positive():
    with pytest.raises(ValueError, match="every >= 1"):
        ProgressBar(every=0)
