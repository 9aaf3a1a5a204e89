"""TensorBoard as a researcher opens it on a sweep.

Each run folder gets:

- Scalars: every per-round metric (step = round), and the partition's statistics at step 0.
- Custom Scalars: one layout per run (TensorBoard merges them): train and eval loss on one chart;
  accuracy with the clients' mean and worst 10%; bytes up and down, per round and in total; where
  DP is on, epsilon beside accuracy.
- HParams: the run's hyperparameters led by the job's overrides (the keys a sweep varies, which the
  table lists first), the objective and main metrics declared as metric columns so the table sorts
  by them, and the run's status: a diverged run is a failure, not a success.
- Images: the partition as a labelled figure (clients by classes, stacked sample counts, with axes
  and a legend, like Flower Datasets' label-distribution plots) when matplotlib is installed
  (the `report` extra), else a plain grey-level picture; where DP is on, accuracy against epsilon
  at the end of the run.
- Text: the resolved config.

The callback sees the run only through `RunView`; what it needs besides (the config, the
overrides, the partition's clean label counts) comes through its constructor.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2
from tensorboard.plugins.hparams import metadata as hparams_metadata
from torch.utils.tensorboard import SummaryWriter

from fedtorch.callbacks.base import Callback, RunView
from fedtorch.data.partitions import partition_stats

log = logging.getLogger("fedtorch")

#: Metric columns of the HParams table, after the objective (those the run logged).
MAIN_METRICS = (
    "eval/accuracy",
    "eval/loss",
    "train/loss",
    "eval/clients/accuracy_mean",
    "eval/clients/accuracy_worst10",
    "privacy/epsilon",
    "comm/bytes_up_total",
)
#: The HParams entry's final values are logged under this prefix at the last round.
FINAL_PREFIX = "hparam/"
PARTITION_FIGURE_MAX_CLIENTS = 100  # more bars than this are unreadable: the figure shows the first ones
LEGEND_MAX_CLASSES = 20  # more classes than this: a heatmap with a colour bar instead of stacked bars


# -- HParams ------------------------------------------------------------------------------------
def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}; None becomes "None" and lists strings (HParams takes scalars and strings)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, name + "."))
        elif isinstance(value, (bool, int, float, str)):
            flat[name] = value
        elif value is None:
            flat[name] = "None"
        else:
            flat[name] = str(value)
    return flat


def hparams_values(config: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The HParams entry: the overrides first, then the rest of the flattened config.

    An override of a config value takes the config's (typed, resolved) value, so `trainer.lr=0.05`
    is the number 0.05 even when passed as text; a group override (`strategy=fedprox`) keeps its
    option name.
    """
    flat = flatten(config)
    values = {key: flat.get(key, _hparam_scalar(value)) for key, value in overrides.items()}
    values.update({key: value for key, value in flat.items() if key not in values})
    return values


def _hparam_scalar(value: Any) -> bool | int | float | str:
    if isinstance(value, (bool, int, float, str)):
        return value
    return "None" if value is None else str(value)


def _data_type(value: Any) -> int:
    if isinstance(value, bool):
        return api_pb2.DATA_TYPE_BOOL
    if isinstance(value, (int, float)):
        return api_pb2.DATA_TYPE_FLOAT64
    return api_pb2.DATA_TYPE_STRING


def _hparams_summary(tag: str, data: plugin_data_pb2.HParamsPluginData) -> Summary:
    """One summary of the HParams plugin (how `tensorboard.plugins.hparams.summary` builds them,
    without its TensorFlow import)."""
    data.version = hparams_metadata.PLUGIN_DATA_VERSION
    plugin_data = SummaryMetadata.PluginData(plugin_name=hparams_metadata.PLUGIN_NAME, content=data.SerializeToString())
    return Summary(value=[Summary.Value(tag=tag, metadata=SummaryMetadata(plugin_data=plugin_data))])


def experiment_summary(values: Mapping[str, Any], varying: Iterable[str], metrics: Sequence[str]) -> Summary:
    """The HParams experiment: its columns. The `varying` keys are marked as differing, which
    TensorBoard lists first; `metrics` become the metric columns (read from `hparam/<metric>`)."""
    varying = set(varying)
    infos = [
        api_pb2.HParamInfo(name=key, type=_data_type(value), differs=key in varying) for key, value in values.items()
    ]
    metric_infos = [api_pb2.MetricInfo(name=api_pb2.MetricName(tag=FINAL_PREFIX + m), display_name=m) for m in metrics]
    experiment = api_pb2.Experiment(hparam_infos=infos, metric_infos=metric_infos)
    return _hparams_summary(hparams_metadata.EXPERIMENT_TAG, plugin_data_pb2.HParamsPluginData(experiment=experiment))


def session_start_summary(values: Mapping[str, Any]) -> Summary:
    """This run's hyperparameter values (one HParams session per run folder)."""
    start = plugin_data_pb2.SessionStartInfo()
    for key, value in values.items():
        if isinstance(value, bool):
            start.hparams[key].bool_value = value
        elif isinstance(value, (int, float)):
            start.hparams[key].number_value = value
        else:
            start.hparams[key].string_value = str(value)
    return _hparams_summary(
        hparams_metadata.SESSION_START_INFO_TAG, plugin_data_pb2.HParamsPluginData(session_start_info=start)
    )


def session_end_summary(failed: bool) -> Summary:
    status = api_pb2.STATUS_FAILURE if failed else api_pb2.STATUS_SUCCESS
    end = plugin_data_pb2.SessionEndInfo(status=status)
    data = plugin_data_pb2.HParamsPluginData(session_end_info=end)
    return _hparams_summary(hparams_metadata.SESSION_END_INFO_TAG, data)


# -- Custom Scalars -----------------------------------------------------------------------------
def custom_scalars_layout(privacy: bool) -> dict[str, dict[str, list[Any]]]:
    """{category: {chart title: ["Multiline", tag regexes]}} for `SummaryWriter.add_custom_scalars`.

    A chart whose tags a run does not log (no per-client test splits, say) shows no line for them.
    """
    layout = {
        "training": {
            "loss: train (clients' minibatches) and eval (global model)": [
                "Multiline",
                [r"^train/loss$", r"^eval/loss$"],
            ],
            "accuracy: global model, clients' mean and worst 10%": [
                "Multiline",
                [r"^eval/accuracy$", r"^eval/clients/accuracy_mean$", r"^eval/clients/accuracy_worst10$"],
            ],
        },
        "communication": {
            "bytes per round: up and down": ["Multiline", [r"^comm/bytes_up$", r"^comm/bytes_down$"]],
            "bytes in total: up and down": ["Multiline", [r"^comm/bytes_up_total$", r"^comm/bytes_down_total$"]],
        },
    }
    if privacy:
        layout["privacy"] = {
            "epsilon spent and accuracy, by round": ["Multiline", [r"^privacy/epsilon$", r"^eval/accuracy$"]],
        }
    return layout


# -- figures ------------------------------------------------------------------------------------
def _matplotlib_figure_class() -> Any:
    """matplotlib's Figure (no pyplot, so no global backend is touched), or None without matplotlib."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return None
    return Figure


def figure_pixels(figure: Any) -> np.ndarray:
    """An (H, W, 3) uint8 array of a matplotlib figure, drawn with the Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def partition_figure(counts: np.ndarray, client_names: Sequence[str] | None = None) -> Any:
    """The partition as a labelled matplotlib figure, or None without matplotlib.

    One bar per client (the first PARTITION_FIGURE_MAX_CLIENTS), its height the client's number of
    samples, stacked by class with a legend; with more than LEGEND_MAX_CLASSES classes a clients x
    classes heatmap with a colour bar and the clients' sizes beside it; for regression (one
    column) the clients' sizes alone.
    """
    figure_class = _matplotlib_figure_class()
    if figure_class is None:
        return None
    counts = np.asarray(counts, dtype=np.float64)
    total_clients, classes = counts.shape
    shown = counts[:PARTITION_FIGURE_MAX_CLIENTS]
    clients = np.arange(len(shown))
    names = [str(n) for n in (client_names or clients)][: len(shown)]
    which = f"{total_clients} clients"
    if len(shown) < total_clients:
        which = f"first {len(shown)} of {which}"
    samples = f"{int(counts.sum())} samples in all"
    figure = figure_class(figsize=(9.0, 4.8), dpi=100)
    if classes == 1:
        ax = figure.add_subplot()
        ax.bar(clients, shown[:, 0], color="tab:blue")
        ax.set_title(f"Client sizes ({which}; {samples})")
        ax.set_ylabel("samples")
    elif classes <= LEGEND_MAX_CLASSES:
        ax = figure.add_subplot()
        colours = _class_colours(classes)
        bottom = np.zeros(len(shown))
        for c in range(classes):
            ax.bar(clients, shown[:, c], bottom=bottom, color=colours[c], label=str(c), width=0.85)
            bottom += shown[:, c]
        ax.set_title(f"Label distribution ({which}; {classes} classes, {samples})")
        ax.set_ylabel("samples")
        ax.legend(title="class", loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small", frameon=False)
    else:
        ax, sizes_ax = figure.subplots(1, 2, gridspec_kw={"width_ratios": [4, 1]}, sharey=True)
        image = ax.imshow(shown, aspect="auto", interpolation="nearest", cmap="viridis")
        figure.colorbar(image, ax=sizes_ax, label="samples of the class", fraction=0.15)
        ax.set_title(f"Label distribution ({which}; {classes} classes)")
        ax.set_xlabel("class")
        ax.set_ylabel("client")
        sizes_ax.barh(clients, shown.sum(axis=1), color="tab:gray")
        sizes_ax.set_xlabel("samples")
        sizes_ax.set_title("client size")
        if len(clients) <= 30:
            ax.set_yticks(clients, names)
        figure.tight_layout()
        return figure
    ax.set_xlabel("client")
    if len(clients) <= 30:
        crowded = len(clients) * max(map(len, names)) > 60  # characters the axis can hold side by side
        ax.set_xticks(clients, names, rotation=90 if crowded else 0)
    ax.set_xlim(-0.6, len(shown) - 0.4)
    figure.tight_layout()
    return figure


def _class_colours(classes: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if classes <= 10 else "tab20"]
    return [cmap(c % cmap.N) for c in range(classes)]


def label_distribution_image(label_counts: np.ndarray, max_clients: int = 256, cell: int = 6) -> torch.Tensor:
    """The figure's fallback without matplotlib: a (1, H, W) uint8 picture, one row per client and
    one column per class, darker where a larger share of the client's samples has that label."""
    counts = np.asarray(label_counts, dtype=np.float64)[:max_clients]
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1.0)
    pixels = (255 * (1.0 - shares)).astype(np.uint8)
    row_height = max(2, cell * 16 // max(len(pixels), 16))
    pixels = np.repeat(np.repeat(pixels, row_height, axis=0), cell, axis=1)
    return torch.from_numpy(pixels).unsqueeze(0)


def accuracy_vs_epsilon_figure(history: Sequence[Mapping[str, float]], metric: str = "eval/accuracy") -> Any:
    """`metric` against the epsilon spent by that round, or None (no matplotlib, or nothing to draw)."""
    figure_class = _matplotlib_figure_class()
    points = [
        (row["privacy/epsilon"], row[metric])
        for row in history
        if _finite(row.get("privacy/epsilon")) and _finite(row.get(metric))
    ]
    if figure_class is None or not points:
        return None
    figure = figure_class(figsize=(6.0, 4.0), dpi=100)
    ax = figure.add_subplot()
    epsilons, values = zip(*points)
    ax.plot(epsilons, values, marker="o", markersize=3)
    ax.set_xlabel("privacy/epsilon (spent so far)")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} against the privacy spent")
    ax.grid(alpha=0.3)
    figure.tight_layout()
    return figure


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# -- the callback -------------------------------------------------------------------------------
class TensorBoard(Callback):
    """Write TensorBoard event files into `log_dir` (the run folder).

    Args:
        log_dir: folder for the event files.
        hparams: the run's resolved configuration (nested dict); flattened for the HParams entry.
        config_text: the resolved config as YAML, shown under the Text tab.
        overrides: the job's command-line overrides as (key, value) pairs or a dict, e.g.
            `[("trainer.lr", "0.05"), ("seed", "1")]` (the values as text, or typed): the keys a
            sweep varies. They lead the HParams entry and are marked as differing, so the HParams
            table lists them first; a key that is also a config value takes the config's typed value.
        objective: the metric the run is judged by (the config's `objective`): the first metric
            column of the HParams table.
        metrics: further metric columns, in order (those the run logged).
        partition_counts: the partition's CLEAN (clients x classes) label counts, before any data
            poisoning (for regression one column: the client sizes); None logs no partition.
        client_names: the clients' names for the partition figure's axis (natural partitions).
    """

    def __init__(
        self,
        log_dir: str | Path,
        hparams: Mapping[str, Any] | None = None,
        config_text: str = "",
        overrides: Mapping[str, Any] | Iterable[tuple[str, Any]] = (),
        objective: str | None = None,
        metrics: Sequence[str] = MAIN_METRICS,
        partition_counts: np.ndarray | None = None,
        client_names: Sequence[str] | None = None,
    ) -> None:
        self.log_dir = str(log_dir)
        self.overrides = dict(overrides.items() if isinstance(overrides, Mapping) else overrides)
        self.hparams = hparams_values(hparams or {}, self.overrides)
        self.config_text = config_text
        self.objective = objective
        self.metrics = tuple(metrics)
        self.partition_counts = None if partition_counts is None else np.asarray(partition_counts)
        if self.partition_counts is not None and self.partition_counts.ndim != 2:
            raise ValueError(f"partition_counts must be a (clients, classes) matrix, got {self.partition_counts.shape}")
        self.client_names = list(client_names) if client_names is not None else None
        self.layout_written = False

    def on_run_start(self, run: RunView) -> None:
        # purge_step drops events past the resumed round, so curves never hold duplicate steps; a
        # resumed run's step-0 entries (config, partition, layout, HParams session) are already there.
        fresh = run.round == 0
        self.writer = SummaryWriter(self.log_dir, purge_step=None if fresh else run.round + 1)
        self.layout_written = not fresh
        if not fresh:
            return
        if self.config_text:
            self.writer.add_text("config", f"```\n{self.config_text}\n```", 0)
        if self.partition_counts is not None:
            self._log_partition(self.partition_counts)
        # The session starts now, so a running (or killed) run is in the HParams table too.
        self.writer._get_file_writer().add_summary(session_start_summary(self.hparams))

    def _log_partition(self, counts: np.ndarray) -> None:
        """Client-size and label-skew statistics at step 0, and the partition figure."""
        for key, value in partition_stats(counts).items():
            if np.isfinite(value):
                self.writer.add_scalar(f"partition/{key}", value, 0)
        figure = partition_figure(counts, self.client_names)
        if figure is not None:
            tag = "partition/label_distribution" if counts.shape[1] > 1 else "partition/client_sizes"
            self.writer.add_image(tag, figure_pixels(figure), 0, dataformats="HWC")
        elif counts.shape[1] > 1:
            log.info("partition figure: a plain picture; install matplotlib (the report extra) for a labelled one")
            self.writer.add_image("partition/label_distribution", label_distribution_image(counts), 0)

    def on_round_end(self, run: RunView, round_idx: int, metrics: dict[str, float]) -> None:
        if not self.layout_written:
            # After the first round, when it is known whether this run logs privacy metrics.
            self.writer.add_custom_scalars(custom_scalars_layout(privacy="privacy/epsilon" in metrics))
            self.layout_written = True
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, round_idx)
        self.writer.flush()

    def declared_metrics(self, logged: Iterable[str]) -> list[str]:
        """The HParams metric columns: the objective, then `metrics`, among those the run logged."""
        logged = set(logged)
        wanted = [m for m in (self.objective, *self.metrics) if m]
        return [m for m in dict.fromkeys(wanted) if m in logged]

    def on_run_end(self, run: RunView, summary: dict[str, Any]) -> None:
        final = {k: v for k, v in summary["metrics"].items() if isinstance(v, (int, float))}
        declared = self.declared_metrics(final)
        for metric in declared:
            self.writer.add_scalar(FINAL_PREFIX + metric, final[metric], summary["rounds"])
        figure = accuracy_vs_epsilon_figure(run.history) if "privacy/epsilon" in final else None
        if figure is not None:
            pixels = figure_pixels(figure)
            self.writer.add_image("privacy/accuracy_vs_epsilon", pixels, summary["rounds"], dataformats="HWC")
        file_writer = self.writer._get_file_writer()
        # The experiment (the table's columns) is written at the end, when the logged metrics are known.
        file_writer.add_summary(experiment_summary(self.hparams, self.overrides, declared))
        file_writer.add_summary(session_end_summary(failed=bool(summary.get("diverged"))))
        self.writer.flush()
        self.writer.close()
