"""FLamby's single-centre training, written out in plain torch: an independent check of the data.

FLamby (owkin/FLamby, flamby/benchmarks/fed_benchmark.py) seeds torch with the run's seed, builds
its model (`Linear(13, 1)` + sigmoid), seeds again, and trains it with `train_single_centric`:
Adam at lr 0.001 over `DataLoader(batch_size=4, shuffle=True)` for 50 epochs with `BCELoss`. The
pooled model trains on the pooled-standardized train patients, a local model on one hospital's;
each is scored on every hospital's test patients (standardized with that hospital's statistics)
and on the pooled test set (standardized with the pooled statistics, whichever model it is).
This script repeats that procedure line for line on the features of `fedtorch.data.heart_disease`
(`split="flamby"`), without fedtorch's training loop:

    python experiments/fed_heart_disease/flamby_reference.py --seeds 42 43 44 45 46

With FLamby's own seeds (42-46) it gives FLamby's published per-hospital accuracies
(flamby/results/results_benchmark_fed_heart_disease/heart_seed4*.csv) exactly, for the pooled
model and each local one: the patients, the split, the features and their standardization are
FLamby's (measured with torch 2.13 on CPU; the seeded streams of torch's initialization and
DataLoader shuffling are what FLamby's seeds fix). What then remains
between fedtorch's baselines (baselines.py) and FLamby's is the random streams (the initial
weights and the batch order), not the data.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from fedtorch.data.base import DatasetSplits
from fedtorch.data.heart_disease import HOSPITALS, load_heart_disease


def flamby_train(x: torch.Tensor, y: torch.Tensor, seed: int, epochs: int = 50) -> torch.nn.Linear:
    """FLamby's `set_seed; Baseline(); set_seed; train_single_centric(Adam, lr 1e-3, batch 4)`."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    model = torch.nn.Linear(13, 1)
    torch.manual_seed(seed)
    np.random.seed(seed)
    loader = DataLoader(TensorDataset(x, y.float().unsqueeze(1)), batch_size=4, shuffle=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.BCELoss()
    for _ in range(epochs):
        for xb, yb in loader:
            optimizer.zero_grad()
            loss_fn(torch.sigmoid(model(xb)), yb).backward()
            optimizer.step()
    return model


@torch.no_grad()
def accuracies(model: torch.nn.Linear, data: DatasetSplits) -> list[float]:
    """Accuracy on each hospital's test patients (FLamby's metric: sigmoid > 0.5 against the label)."""
    hits = ((torch.sigmoid(model(data.test_x)).squeeze(1) > 0.5).long() == data.test_y).numpy()
    groups = np.asarray(data.test_groups)
    return [float(hits[groups == k].mean()) for k in range(len(HOSPITALS))]


@torch.no_grad()
def pooled_accuracy(model: torch.nn.Linear, pooled: DatasetSplits) -> float:
    """FLamby's "Pooled Test": all 254 test patients standardized with the pooled train statistics
    (`FedHeartDisease(train=False, pooled=True)`), for every model, local ones included."""
    return float(((torch.sigmoid(model(pooled.test_x)).squeeze(1) > 0.5).long() == pooled.test_y).double().mean())


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44, 45, 46])
    parser.add_argument("--data-dir", default=None, help="the data root (default: $FEDTORCH_DATA, else ./data)")
    args = parser.parse_args(argv)
    center = load_heart_disease(args.data_dir, normalize="center", split="flamby")
    pooled = load_heart_disease(args.data_dir, normalize="pooled", split="flamby")
    groups = np.asarray(center.train_groups)
    print("| baseline | seed | " + " | ".join(HOSPITALS) + " | mean of the 4 | pooled test |")
    print("|---|---|" + "---|" * (len(HOSPITALS) + 2))
    for name in ["pooled", *(f"local_{k}" for k in range(len(HOSPITALS)))]:
        for seed in args.seeds:
            if name == "pooled":
                model = flamby_train(pooled.train_x, pooled.train_y, seed)
            else:
                k = int(name.split("_")[1])
                model = flamby_train(center.train_x[groups == k], center.train_y[groups == k], seed)
            per_hospital = accuracies(model, center)  # FLamby's per-client test sets: per-hospital statistics
            pooled_test = pooled_accuracy(model, pooled)  # FLamby's "Pooled Test": pooled statistics, any model
            cells = " | ".join(f"{a:.4f}" for a in per_hospital)
            print(f"| {name} | {seed} | {cells} | {np.mean(per_hospital):.4f} | {pooled_test:.4f} |")


if __name__ == "__main__":
    main()
