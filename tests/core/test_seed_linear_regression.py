"""The founding example: FedAvg recovers y = 2x + 1 as well as centralized least squares does."""

from __future__ import annotations

import torch

from fedtorch.data.synthetic import least_squares_fit, load_linear_regression
from fedtorch.experiment import run_experiment


def test_fedavg_matches_centralized_least_squares(compose_config, tmp_path):
    cfg = compose_config("experiment=seed_linear_regression", "logging.progress=false", "logging.tensorboard=false")
    run_experiment(cfg, tmp_path)
    state = torch.load(tmp_path / "model.pt", weights_only=True)
    w_fed, b_fed = float(state["linear.weight"]), float(state["linear.bias"])

    data = load_linear_regression(**{k: v for k, v in cfg.dataset.items() if k != "_target_"})
    w_ls, b_ls = least_squares_fit(data.train_x, data.train_y)

    assert abs(w_fed - w_ls) < 0.02 and abs(b_fed - b_ls) < 0.02
    assert abs(w_fed - 2.0) < 0.35 and abs(b_fed - 1.0) < 0.35  # three standard errors of the truth
