"""The same config and seed give the same run; the seed matters."""

from __future__ import annotations

import json

import torch

from fedtorch.experiment import run_experiment


def _run(compose_config, tmp_path, name, *overrides):
    cfg = compose_config("rounds=3", "logging.progress=false", "logging.tensorboard=false", *overrides)
    out = tmp_path / name
    run_experiment(cfg, out)
    summary = json.loads((out / "summary.json").read_text())
    model = torch.load(out / "model.pt", weights_only=True)
    return summary, model


def _same(model_a, model_b):
    return model_a.keys() == model_b.keys() and all(torch.equal(model_a[k], model_b[k]) for k in model_a)


def test_same_seed_same_metrics_and_model(compose_config, tmp_path):
    s1, m1 = _run(compose_config, tmp_path, "a", "seed=3")
    s2, m2 = _run(compose_config, tmp_path, "b", "seed=3")
    timing = {"round/seconds"}
    assert {k: v for k, v in s1["metrics"].items() if k not in timing} == {
        k: v for k, v in s2["metrics"].items() if k not in timing
    }
    assert _same(m1, m2)
    s3, m3 = _run(compose_config, tmp_path, "c", "seed=4")
    assert not _same(m1, m3)


def test_partition_record_covers_every_sample(compose_config, tmp_path):
    cfg = compose_config(
        "rounds=1",
        "logging.progress=false",
        "partition=dirichlet",
        "partition.num_clients=7",
        "sampler.clients_per_round=5",
    )
    out = tmp_path / "run"
    run_experiment(cfg, out)
    record = json.loads((out / "partition.json").read_text())
    from fedtorch.data.synthetic import load_fedprox_synthetic

    data = load_fedprox_synthetic()
    assert record["num_clients"] == 7
    totals = sum(torch.tensor(c["label_counts"]) for c in record["clients"].values())
    assert torch.equal(totals, torch.bincount(data.train_y, minlength=10))
