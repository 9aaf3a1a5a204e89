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
        per_hospital = [row[f"test_{h}"] for h in baselines.HOSPITALS]
        assert row["hospital_mean"] == pytest.approx(np.mean(per_hospital))
    assert (tmp_path / "baselines.csv").read_text().startswith("baseline,seed,pooled_test")
    assert "| pooled | 0 |" in baselines.table(rows)
