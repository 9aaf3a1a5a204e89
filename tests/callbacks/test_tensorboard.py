"""TensorBoard as a user sees it: the event files read back, and a real sweep served by TensorBoard
itself and queried through its HTTP data API (the routes its web pages call)."""

from __future__ import annotations

import io
import json
import math
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2

from fedtorch.callbacks.tensorboard import TensorBoard
from tests.callbacks.fake_run import FakeRun, play
from tests.conftest import run_cli

COUNTS = np.array([[5, 0, 1], [0, 7, 0], [2, 2, 2], [0, 0, 0]])  # 4 clients x 3 classes, one client empty
CONFIG = {
    "seed": 1,
    "rounds": 2,
    "objective": "eval/accuracy",
    "trainer": {"lr": 0.05, "epochs": 1},
    "strategy": {"_target_": "fedtorch.strategies.FedProx", "mu": 0.1},
    "resume": None,
}
OVERRIDES = [("trainer.lr", "0.05"), ("strategy", "fedprox"), ("seed", "1")]


def events(run_dir: Path) -> EventAccumulator:
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "tensors": 0, "images": 0})
    acc.Reload()
    return acc


def hparams_plugin(acc: EventAccumulator) -> dict[str, plugin_data_pb2.HParamsPluginData]:
    content = acc.PluginTagToContent("hparams")
    return {tag: plugin_data_pb2.HParamsPluginData.FromString(data) for tag, data in content.items()}


def rounds(*accuracies: float, dp: bool = False) -> list[dict[str, float]]:
    rows = []
    for r, accuracy in enumerate(accuracies, start=1):
        row = {"train/loss": 1.0 / r, "eval/loss": 2.0 / r, "eval/accuracy": accuracy, "comm/bytes_up": 100.0}
        if dp:
            row["privacy/epsilon"] = 0.5 * r
        rows.append(row)
    return rows


def test_events_hold_the_layout_the_partition_and_hparams_led_by_the_overrides(tmp_path):
    callback = TensorBoard(tmp_path, hparams=CONFIG, config_text="seed: 1", overrides=OVERRIDES,
                           objective="eval/accuracy", partition_counts=COUNTS)  # fmt: skip
    play(callback, FakeRun(rounds=2), rounds(0.5, 0.75))
    acc = events(tmp_path)

    # Per-round scalars, step = round; the HParams finals of the declared metrics at the last round.
    assert [(e.step, e.value) for e in acc.Scalars("eval/accuracy")] == [(1, 0.5), (2, 0.75)]
    assert [(e.step, e.value) for e in acc.Scalars("hparam/eval/accuracy")] == [(2, 0.75)]
    assert "hparam/comm/bytes_up" not in acc.Tags()["scalars"]  # not a declared metric

    # Partition statistics from the counts given (independently: 19 samples, 4 clients, 1 empty).
    assert acc.Scalars("partition/num_samples")[0].value == COUNTS.sum() == 19
    assert acc.Scalars("partition/num_clients")[0].value == 4 and acc.Scalars("partition/empty_clients")[0].value == 1
    sizes = COUNTS.sum(axis=1)
    assert acc.Scalars("partition/size_max")[0].value == sizes.max() == 7
    assert acc.Scalars("partition/size_std")[0].value == pytest.approx(sizes.std())
    # The labelled figure: an RGB image (a matplotlib rendering), not the old one-channel grid.
    image = acc.Images("partition/label_distribution")[0]
    assert (image.width, image.height) == (900, 480)
    from PIL import Image

    assert Image.open(io.BytesIO(image.encoded_image_string)).mode == "RGB"

    # Custom Scalars: loss on one chart, accuracy with the clients' mean and worst 10%, bytes; no DP here.
    layout = layout_pb2.Layout.FromString(acc.Tensors("custom_scalars__config__")[0].tensor_proto.string_val[0])
    charts = {chart.title: list(chart.multiline.tag) for c in layout.category for chart in c.chart}
    assert [c.title for c in layout.category] == ["training", "communication"]
    loss = next(tags for title, tags in charts.items() if title.startswith("loss"))
    accuracy = next(tags for title, tags in charts.items() if title.startswith("accuracy"))
    assert loss == ["^train/loss$", "^eval/loss$"]
    assert accuracy == ["^eval/accuracy$", "^eval/clients/accuracy_mean$", "^eval/clients/accuracy_worst10$"]
    assert ["^comm/bytes_up$", "^comm/bytes_down$"] in charts.values()

    # HParams: the overrides lead (marked as differing) with the config's typed values; the
    # objective is the first metric column; the run succeeded.
    plugin = hparams_plugin(acc)
    experiment = plugin["_hparams_/experiment"].experiment
    infos = {info.name: info for info in experiment.hparam_infos}
    assert [info.name for info in experiment.hparam_infos][:3] == ["trainer.lr", "strategy", "seed"]
    assert {name for name, info in infos.items() if info.differs} == {"trainer.lr", "strategy", "seed"}
    assert infos["trainer.lr"].type == api_pb2.DATA_TYPE_FLOAT64 and infos["strategy"].type == api_pb2.DATA_TYPE_STRING
    metric_tags = [m.name.tag for m in experiment.metric_infos]
    assert metric_tags == ["hparam/eval/accuracy", "hparam/eval/loss", "hparam/train/loss"]
    start = plugin["_hparams_/session_start_info"].session_start_info.hparams
    assert start["trainer.lr"].number_value == 0.05 and start["strategy"].string_value == "fedprox"
    assert start["strategy.mu"].number_value == 0.1 and start["resume"].string_value == "None"
    assert plugin["_hparams_/session_end_info"].session_end_info.status == api_pb2.STATUS_SUCCESS


def test_a_diverged_run_is_a_failure_and_dp_runs_chart_epsilon(tmp_path):
    callback = TensorBoard(tmp_path, hparams=CONFIG, overrides=OVERRIDES, objective="eval/loss")
    summary = play(callback, FakeRun(rounds=4), rounds(0.5, 0.6, math.nan, 0.9, dp=True))
    assert summary["diverged"] and summary["rounds"] == 3
    acc = events(tmp_path)
    plugin = hparams_plugin(acc)
    assert plugin["_hparams_/session_end_info"].session_end_info.status == api_pb2.STATUS_FAILURE
    metric_tags = [m.name.tag for m in plugin["_hparams_/experiment"].experiment.metric_infos]
    assert metric_tags[0] == "hparam/eval/loss" and "hparam/privacy/epsilon" in metric_tags  # the objective first
    layout = layout_pb2.Layout.FromString(acc.Tensors("custom_scalars__config__")[0].tensor_proto.string_val[0])
    privacy = next(c for c in layout.category if c.title == "privacy")
    assert list(privacy.chart[0].multiline.tag) == ["^privacy/epsilon$", "^eval/accuracy$"]
    assert acc.Images("privacy/accuracy_vs_epsilon")[0].step == 3
    assert "partition/num_clients" not in acc.Tags()["scalars"]  # no counts given: no partition logged


def test_a_resumed_run_adds_no_second_session_or_layout(tmp_path):
    callback = TensorBoard(tmp_path, hparams=CONFIG, overrides=OVERRIDES, partition_counts=COUNTS)
    run = FakeRun(rounds=4)
    callback.on_run_start(run)
    for r, metrics in enumerate(rounds(0.1, 0.2), start=1):
        run.round = r
        callback.on_round_end(run, r, metrics)
    callback.writer.close()  # killed here; resumed from round 2 by a new process
    resumed = TensorBoard(tmp_path, hparams=CONFIG, overrides=OVERRIDES, partition_counts=COUNTS)
    play(resumed, run, rounds(0.3, 0.4))
    acc = events(tmp_path)
    assert [e.step for e in acc.Scalars("eval/accuracy")] == [1, 2, 3, 4]
    assert len(acc.Tensors("custom_scalars__config__")) == 1 and len(acc.Scalars("partition/num_clients")) == 1
    assert tag_count(tmp_path, "_hparams_/session_start_info") == 1 and tag_count(tmp_path, "_hparams_/experiment") == 1


def tag_count(run_dir: Path, tag: str) -> int:
    """How many summaries with `tag` the raw event files hold (the accumulator keeps only the last)."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    return sum(
        value.tag == tag
        for path in sorted(run_dir.glob("events.out.tfevents.*"))
        for event in EventFileLoader(str(path)).Load()
        for value in event.summary.value
    )


def test_partition_counts_must_be_a_matrix(tmp_path):
    with pytest.raises(ValueError, match=r"\(clients, classes\) matrix"):
        TensorBoard(tmp_path, partition_counts=np.ones(3))


def test_partition_statistics_are_the_clean_labels_under_label_flipping(tmp_path):
    """Issue 18 bug 8: TensorBoard's partition/* came from the poisoned labels, partition.json from the clean ones."""
    run_dir = tmp_path / "run"
    proc = run_cli("attack=label_flip", "attack.fraction=0.5", "rounds=1", "logging.progress=false",
                   f"hydra.run.dir={run_dir}")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    record = json.loads((run_dir / "partition.json").read_text())
    acc = events(run_dir)
    for key in ("tv_mean", "classes_per_client_mean", "entropy_mean", "num_samples"):
        assert acc.Scalars(f"partition/{key}")[0].value == pytest.approx(record["stats"][key], rel=1e-6), key


# -- TensorBoard's own server ---------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, body: dict | None = None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        raw = response.read()
    return json.loads(raw) if response.headers.get_content_type() == "application/json" else raw


@pytest.fixture
def served_sweep(tmp_path):
    """A 4-job sweep (one learning rate diverges), served by `tensorboard --logdir`."""
    sweep = tmp_path / "sweep"
    proc = run_cli("-m", "trainer.lr=0.05,1e30", "seed=0,1", "rounds=2", "logging.progress=false",
                   f"hydra.sweep.dir={sweep}")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    port = _free_port()
    log = (tmp_path / "tensorboard.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", str(sweep), "--host", "127.0.0.1", "--port", str(port),
         "--load_fast=false", "--reload_interval=1"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if len(_get(f"{base}/data/runs")) == 4:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                pytest.fail(f"tensorboard did not serve the sweep: {(tmp_path / 'tensorboard.log').read_text()}")
            time.sleep(0.5)
        yield base, sweep
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


def test_tensorboard_serves_the_sweep_as_a_researcher_needs_it(served_sweep):
    base, sweep = served_sweep
    experiment = _get(f"{base}/data/plugin/hparams/experiment", {"experimentName": "", "includeMetrics": True})
    names = [info["name"] for info in experiment["hparamInfos"]]
    # The job's overrides first (TensorBoard sorts them by name), the ~60 other config keys after.
    overrides = ["logging.progress", "rounds", "seed", "trainer.lr"]
    assert names[:4] == overrides and len(names) > 40
    assert all(info.get("differs") for info in experiment["hparamInfos"][:4])
    assert not any(info.get("differs") for info in experiment["hparamInfos"][4:])
    metrics = [m["name"]["tag"] for m in experiment["metricInfos"]]
    assert metrics[0] == "hparam/eval/accuracy" and "hparam/eval/loss" in metrics

    # The HParams table: one session per run; the diverged learning rate's sessions are failures,
    # and the table sorts by the objective.
    request = {
        "experimentName": "",
        "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"],
        "colParams": [{"metric": {"tag": "hparam/eval/accuracy"}, "order": "ORDER_DESC"}]
        + [{"hparam": name} for name in overrides],
        "startIndex": 0,
        "sliceSize": 100,
        "includeMetrics": True,
    }
    groups = _get(f"{base}/data/plugin/hparams/session_groups", request)["sessionGroups"]
    assert len(groups) == 4
    by_lr: dict[float, set[str]] = {}
    for group in groups:
        (session,) = group["sessions"]
        by_lr.setdefault(group["hparams"]["trainer.lr"], set()).add(session["status"])
    assert by_lr == {0.05: {"STATUS_SUCCESS"}, 1e30: {"STATUS_FAILURE"}}
    # The objective's values are the runs' final ones (summary.json), best first.
    finals = sorted(
        (json.loads((job / "summary.json").read_text())["metrics"]["eval/accuracy"] for job in sweep.iterdir()
         if (job / "summary.json").exists() and not json.loads((job / "summary.json").read_text())["diverged"]),
        reverse=True,
    )  # fmt: skip
    shown = [
        next(v["value"] for v in g["metricValues"] if v["name"]["tag"] == "hparam/eval/accuracy")
        for g in groups
        if g["hparams"]["trainer.lr"] == 0.05
    ]
    assert shown == pytest.approx(finals)

    # Custom Scalars: the merged layout of the runs; Images: the labelled partition of every run.
    layout = _get(f"{base}/data/plugin/custom_scalars/layout")
    assert [c["title"] for c in layout["category"]] == ["training", "communication"]
    images = _get(f"{base}/data/plugin/images/tags")
    assert all("partition/label_distribution" in tags for tags in images.values()) and len(images) == 4
