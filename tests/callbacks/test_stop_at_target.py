"""StopAtTarget ends a run after the first round that reaches the target ("rounds to 97%")."""

from __future__ import annotations

import pytest
import torch

from fedtorch.callbacks.stop_at_target import StopAtTarget
from fedtorch.client import LocalTrainer
from fedtorch.errors import OptionError
from fedtorch.models import LogisticRegression
from fedtorch.samplers import FullParticipation
from fedtorch.simulation import Simulation
from fedtorch.strategies import FedAvg
from tests.strategies._federations import classification_federation


def _run(callbacks: list, rounds: int = 30) -> tuple[dict, list[dict]]:
    fed = classification_federation()
    torch.manual_seed(0)
    model = LogisticRegression(fed.input_shape, fed.num_classes)
    trainer = LocalTrainer(lr=0.05, batch_size=8)
    sim = Simulation(fed, model, FedAvg(), FullParticipation(), trainer, rounds=rounds, callbacks=callbacks)
    summary = sim.run()
    return summary, sim.state.history


@pytest.mark.parametrize("metric, mode", [("eval/accuracy", "max"), ("eval/loss", "min")])
def test_stops_after_the_first_round_at_the_target(metric: str, mode: str) -> None:
    _, free = _run([])  # the same run without the callback: where would the target first be reached?
    values = [row[metric] for row in free]
    target = sorted(values)[len(values) // 2]  # a value reached mid-run
    first = next(i for i, v in enumerate(values) if (v >= target if mode == "max" else v <= target))
    assert 0 < first < len(free) - 1

    summary, history = _run([StopAtTarget(metric, target, mode, run_dir=None, run_config={}, overrides={})])
    assert len(history) == first + 1  # stopped right after that round ...
    assert summary["stop_reason"] == "target_reached"
    assert [row[metric] for row in history] == values[: first + 1]  # ... having trained the same rounds


def test_a_target_never_reached_trains_every_round() -> None:
    summary, history = _run([StopAtTarget("eval/accuracy", 1.01)], rounds=5)
    assert len(history) == 5 and summary["stop_reason"] is None


def test_bad_options_are_refused() -> None:
    with pytest.raises(OptionError, match="logging.stop_at_target.mode='up' is invalid"):
        StopAtTarget("eval/accuracy", 0.9, mode="up")
    with pytest.raises(OptionError, match="logging.stop_at_target.value"):
        StopAtTarget("eval/accuracy", float("nan"))
