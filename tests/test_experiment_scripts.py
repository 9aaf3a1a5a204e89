"""The scripts under experiments/ that use the library: FLamby's single-centre baselines
(experiments/fed_heart_disease/baselines.py), checked against fedtorch's own evaluation."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import shared_data_dir

ROOT = Path(__file__).resolve().parent.parent


def _load(relative: str):  # noqa: ANN202 - a module
    spec = importlib.util.spec_from_file_location(Path(relative).stem, ROOT / relative)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def keep_torch_threads():  # noqa: ANN201
    """debug=smoke sets num_threads=1, which a run applies process-wide: restore it."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def baselines():  # noqa: ANN201
    if not (shared_data_dir() / "heart_disease").is_dir():
        pytest.skip("the heart disease files are missing")
    return _load("experiments/fed_heart_disease/baselines.py")


def test_one_hospital_keeps_its_train_patients_and_every_test_patient(baselines) -> None:  # noqa: ANN001
    data = baselines.flamby_data(str(shared_data_dir()), "center")
    sizes = [len(baselines.one_hospital(data, k).train_y) for k in range(4)]
    assert sizes == [199, 172, 30, 85]  # FLamby's per-hospital train sizes
    local = baselines.one_hospital(data, 2)
    groups = np.asarray(data.train_groups)
    assert np.array_equal(local.train_x.numpy(), data.train_x[groups == 2].numpy())
    assert len(local.test_y) == 254 and local.train_groups is None


def test_flamby_cyclic_turns_follow_the_cyclic_order(baselines) -> None:  # noqa: ANN001
    for seed in range(5):
        turns = [baselines.cyclic_turns(seed, k) for k in range(4)]
        assert sum(turns) == 15 and set(turns) <= {3, 4}  # 3 full cycles and 3 of the 4th


def test_scores_agree_with_fedtorchs_evaluation(baselines, tmp_path: Path, keep_torch_threads) -> None:  # noqa: ANN001
    """The script's per-hospital accuracies, weighted by the hospitals' test sizes, are the run's own
    eval/accuracy (fedtorch's evaluation of the same model on the same test patients)."""
    rows = baselines.run_baselines([0], tmp_path, str(shared_data_dir()), ["debug=smoke"], only=("pooled", "local_2"))
    assert [row["baseline"] for row in rows] == ["pooled", "local_2"]
    test_sizes = np.array([104, 89, 16, 45])
    pooled_stats = baselines.flamby_data(str(shared_data_dir()), "pooled")
    for row in rows:
        model = tmp_path / row["baseline"] / "seed_0" / "model.pt"
        summary = json.loads((model.parent / "summary.json").read_text())
        test = pooled_stats if row["baseline"] == "pooled" else baselines.flamby_data(str(shared_data_dir()), "center")
        weighted = float(np.dot(baselines.hospital_accuracies(model, test), test_sizes) / test_sizes.sum())
        assert weighted == pytest.approx(summary["metrics"]["eval/accuracy"], abs=1e-9)
        assert row["eval_accuracy"] == summary["metrics"]["eval/accuracy"]
        per_hospital = [row[f"test_{h}"] for h in baselines.HOSPITALS]
        assert row["hospital_mean"] == pytest.approx(np.mean(per_hospital))
    assert rows[0]["pooled_test"] == pytest.approx(rows[0]["eval_accuracy"], abs=1e-9)  # pooled: the same test set
    assert (tmp_path / "baselines.csv").read_text().startswith("baseline,seed,pooled_test")
    assert "| pooled | 0 |" in baselines.table(rows)


def test_flamby_procedure_gives_flambys_published_numbers() -> None:
    """FLamby's single-centre training in plain torch (flamby_reference.py) on fedtorch's features,
    with FLamby's seed 42, gives FLamby's published per-hospital accuracies (heart_seed42.csv,
    "Local 2" and "Local 3"): fedtorch's split and standardization are FLamby's, patient for patient.
    (It relies on torch's seeded initialization and DataLoader shuffling, stable across versions.)"""
    if not (shared_data_dir() / "heart_disease").is_dir():
        pytest.skip("the heart disease files are missing")
    reference = _load("experiments/fed_heart_disease/flamby_reference.py")
    from fedtorch.data.heart_disease import load_heart_disease

    center = load_heart_disease(str(shared_data_dir()), normalize="center", split="flamby")
    pooled = load_heart_disease(str(shared_data_dir()), normalize="pooled", split="flamby")
    groups = np.asarray(center.train_groups)
    published = {  # flamby/results/results_benchmark_fed_heart_disease/heart_seed42.csv
        2: ([0.5673076923076923, 0.4606741573033708, 0.8125, 0.6666666666666666], 0.5236220472440944),
        3: ([0.5961538461538461, 0.47191011235955055, 0.875, 0.7555555555555555], 0.5826771653543307),
    }
    for k, (per_hospital, pooled_test) in published.items():
        model = reference.flamby_train(center.train_x[groups == k], center.train_y[groups == k], seed=42)
        assert reference.accuracies(model, center) == pytest.approx(per_hospital, abs=1e-9)
        assert reference.pooled_accuracy(model, pooled) == pytest.approx(pooled_test, abs=1e-9)


def test_fedprox_figure_summarizes_each_run_by_hand() -> None:
    """experiments/fedprox_synthetic/figure.py: the table's numbers from hand-made curves."""
    import pandas as pd

    figure = _load("experiments/fedprox_synthetic/figure.py")
    rounds = list(range(1, 21))
    frames = []
    for path, seed, loss in (("a", 0, [2.0] * 10 + [1.0] * 10), ("b", 1, [2.0] * 10 + [3.0] * 10)):
        frames.append(
            pd.DataFrame(
                {
                    "run/path": path,
                    "seed": seed,
                    "round": rounds,
                    "eval/train_loss": loss,
                    "eval/accuracy": [0.5] * 19 + [0.9],
                    "federation": "1_1",
                    "stragglers": 0.9,
                    "method": "FedProx mu=1",
                }
            )
        )
    table = figure.final_table(pd.concat(frames))
    row = table.iloc[0]
    assert (row["stragglers"], row["method"], row["seeds"]) == ("90%", "FedProx mu=1", 2)
    assert row["loss10"] == pytest.approx(2.0)  # runs a (1.0) and b (3.0): mean 2, std sqrt(2)
    assert row["loss10 std"] == pytest.approx(2**0.5)
    assert row["loss_half"] == pytest.approx(2.0)  # rounds 11-20 are the second half here
    assert row["acc10"] == pytest.approx((0.5 * 9 + 0.9) / 10)
    assert row["acc_min_half"] == pytest.approx(0.5)
    assert figure.method_of(pd.Series({"strategy": "fedprox", "strategy.mu": 1.0})) == "FedProx mu=1"
    assert figure.method_of(pd.Series({"strategy": "fedavg"})) == "FedAvg (drops stragglers)"
    assert "| 1_1 | 90% | FedProx mu=1 | 2 | 2.000 ± 1.414 |" in figure.markdown(table)


def test_the_mcmahan_driver_picks_the_fastest_rate_and_counts_unreached_runs(tmp_path):
    """experiments/mcmahan_mnist/run.py's table from hand-made run folders: the best rate is the
    one with the fewest rounds to the target for seed 0 (ties: the smaller), its other seeds are
    averaged, and a run that stopped without reaching the target is "not reached", never a count."""
    driver = _load("experiments/mcmahan_mnist/run.py")
    cell = tmp_path / "t1_iid_c0.1_b10"

    def run(lr: float, seed: int, rounds: int, reached: bool) -> None:
        folder = cell / f"lr{lr:g}_seed{seed}"
        folder.mkdir(parents=True)
        summary = {"rounds": rounds, "stop_reason": "target_reached" if reached else None, "wall_seconds": 10.0}
        (folder / "summary.json").write_text(json.dumps(summary))

    run(0.0464, 0, 105, True)
    run(0.1, 0, 54, True)
    run(0.215, 0, 36, True)
    run(0.464, 0, 1000, False)
    run(0.215, 1, 45, True)
    run(0.215, 2, 1000, False)
    assert driver.rounds_to_target(cell / "lr0.464_seed0") == float("inf")
    row = next(line for line in driver.table(tmp_path).splitlines() if line.startswith("| t1_iid_c0.1_b10 "))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "87"  # the published count beside ours
    assert cells[2].startswith("0.215 (") and "0.464: -" in cells[2]
    assert cells[3] == "36, 45, not reached"
    assert cells[4] == "40 ± 6"  # mean ± std of the reached seeds (36, 45), not of the cap
