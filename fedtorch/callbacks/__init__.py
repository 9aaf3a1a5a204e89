"""Callbacks observe a simulation; the round loop itself does no logging."""

from fedtorch.callbacks.base import Callback, RunView
from fedtorch.callbacks.checkpoint import Checkpoint
from fedtorch.callbacks.metrics_file import MetricsFile
from fedtorch.callbacks.progress import ProgressBar
from fedtorch.callbacks.tensorboard import TensorBoard
from fedtorch.callbacks.trackers import MLflowTracker, WandbTracker  # the trackers import their packages when built

__all__ = [
    "Callback",
    "RunView",
    "Checkpoint",
    "MetricsFile",
    "MLflowTracker",
    "ProgressBar",
    "TensorBoard",
    "WandbTracker",
]
