"""Callbacks observe a simulation; the round loop itself does no logging."""

from fedtorch.callbacks.checkpoint import Checkpoint
from fedtorch.callbacks.metrics_file import MetricsFile
from fedtorch.callbacks.progress import ProgressBar
from fedtorch.callbacks.tensorboard import TensorBoard
from fedtorch.simulation import Callback

__all__ = ["Callback", "Checkpoint", "MetricsFile", "ProgressBar", "TensorBoard"]
