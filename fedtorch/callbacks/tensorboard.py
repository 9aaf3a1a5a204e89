"""TensorBoard logging: per-round scalars (step = round), the config as text, and an HParams
entry (flattened config + final metrics) so a sweep's jobs compare in the HParams dashboard."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams as hparams_summary

from fedtorch.simulation import Callback, Simulation


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}; lists become strings (HParams takes scalars and strings)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        elif isinstance(value, (bool, int, float, str)):
            flat[name] = value
        elif value is None:
            flat[name] = "None"
        else:
            flat[name] = str(value)
    return flat


class TensorBoard(Callback):
    """Write TensorBoard event files into `log_dir` (the run folder).

    Args:
        log_dir: folder for the event files.
        hparams: the run's configuration (nested dict); flattened for the HParams dashboard.
        config_text: the resolved config as YAML, shown under the Text tab.
    """

    def __init__(self, log_dir: str | Path, hparams: dict[str, Any] | None = None, config_text: str = "") -> None:
        self.log_dir = str(log_dir)
        self.hparams = flatten(hparams or {})
        self.config_text = config_text

    def on_run_start(self, sim: Simulation) -> None:
        # purge_step drops events past the resumed round, so curves never hold duplicate steps.
        purge = sim.state.round + 1 if sim.state.round > 0 else None
        self.writer = SummaryWriter(self.log_dir, purge_step=purge)
        if self.config_text and sim.state.round == 0:
            self.writer.add_text("config", f"```\n{self.config_text}\n```", 0)

    def on_round_end(self, sim: Simulation, round_idx: int, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, round_idx)
        self.writer.flush()

    def on_run_end(self, sim: Simulation, summary: dict[str, Any]) -> None:
        final = {f"hparam/{k}": v for k, v in summary["metrics"].items() if isinstance(v, (int, float))}
        # Written into the run folder itself (not a timestamped subfolder as add_hparams does),
        # so the HParams dashboard shows one row per run folder of a sweep.
        experiment, session_start, session_end = hparams_summary(self.hparams, final)
        file_writer = self.writer._get_file_writer()
        for item in (experiment, session_start, session_end):
            file_writer.add_summary(item)
        for key, value in final.items():
            self.writer.add_scalar(key, value, summary["rounds"])
        self.writer.flush()
        self.writer.close()
