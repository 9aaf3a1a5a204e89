"""TensorBoard logging: per-round scalars (step = round), the config as text, and an HParams
entry (flattened config + final metrics) so a sweep's jobs compare in the HParams dashboard."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams as hparams_summary

from fedtorch.callbacks.base import Callback, RunView
from fedtorch.data.partitions import partition_stats


def label_distribution_image(label_counts: np.ndarray, max_clients: int = 256, cell: int = 6) -> torch.Tensor:
    """A (1, H, W) uint8 picture of the partition: one row per client, one column per class,
    darker where a larger share of the client's samples has that label (first `max_clients`)."""
    counts = np.asarray(label_counts, dtype=np.float64)[:max_clients]
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1.0)
    pixels = (255 * (1.0 - shares)).astype(np.uint8)
    row_height = max(2, cell * 16 // max(len(pixels), 16))
    pixels = np.repeat(np.repeat(pixels, row_height, axis=0), cell, axis=1)
    return torch.from_numpy(pixels).unsqueeze(0)


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

    def __init__(
        self,
        log_dir: str | Path,
        hparams: dict[str, Any] | None = None,
        config_text: str = "",
        partition_counts: np.ndarray | None = None,
    ) -> None:
        self.log_dir = str(log_dir)
        self.hparams = flatten(hparams or {})
        self.config_text = config_text
        # (clients x classes) label counts of the clean partition, or (clients x 1) sizes.
        self.partition_counts = partition_counts

    def on_run_start(self, run: RunView) -> None:
        # purge_step drops events past the resumed round, so curves never hold duplicate steps.
        purge = run.round + 1 if run.round > 0 else None
        self.writer = SummaryWriter(self.log_dir, purge_step=purge)
        if run.round == 0:
            if self.config_text:
                self.writer.add_text("config", f"```\n{self.config_text}\n```", 0)
            self._log_partition()

    def _log_partition(self) -> None:
        """Client-size and label-skew statistics at step 0, and a picture of the label distribution."""
        counts = self.partition_counts
        if counts is None:
            return
        if counts.shape[1] > 1:
            self.writer.add_image("partition/label_distribution", label_distribution_image(counts), 0)
        for key, value in partition_stats(counts).items():
            if np.isfinite(value):
                self.writer.add_scalar(f"partition/{key}", value, 0)

    def on_round_end(self, run: RunView, round_idx: int, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, round_idx)
        self.writer.flush()

    def on_run_end(self, run: RunView, summary: dict[str, Any]) -> None:
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
