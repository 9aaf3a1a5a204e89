"""FLamby's single-centre baselines on Fed-Heart-Disease, trained with fedtorch, scored as FLamby does.

FLamby (Ogier du Terrail et al. 2022; owkin/FLamby flamby/benchmarks/fed_benchmark.py) reports,
beside its seven federated strategies, a *pooled* model (all 486 train patients in one place) and
four *local* models (one hospital's train patients each), every one scored on each hospital's own
test patients; its results figure shows the mean of the four hospitals' test accuracies. Both
baselines train FLamby's logistic regression with Adam at lr 0.001, batch 4, for 50 epochs.

    python experiments/fed_heart_disease/baselines.py --seeds 0 1 2 3 4 --out outputs/fed_heart_disease/baselines

Every baseline is an ordinary fedtorch run (`fedtorch.run`, one run folder each, so
`fedtorch.report` and `fedtorch.results` read them):

- `pooled`: `experiment=fed_heart_disease_pooled` (one client holding every train patient,
  standardized with the pooled train statistics, FLamby's `pooled=True`); its `eval/accuracy` is
  FLamby's "Pooled Test" (the 254 test patients with the pooled statistics);
- `local_<k>`: the same preset, standardized per hospital, with the dataset replaced by hospital
  k's train patients (and every hospital's test patients);
- `flamby_cyclic`: what FLamby's published "Cyclic" row measures. In FLamby's code every client
  holds its own copy of the model, the copies are never synchronized, and the benchmark scores
  client 0's copy; so that row is hospital 0 training alone with Cyclic's SGD (lr 0.01, 100 steps)
  during its turns of the 15 rounds. The number of turns comes from the same cyclic order
  `experiment=fed_heart_disease_cyclic` draws for the seed.

The script then scores each final model (`model.pt`) on every hospital's test patients, each
standardized with its own hospital's train statistics, which is how FLamby's per-client test sets
are built (`FedHeartDisease(center=k, train=False)`); for the pooled model that means features
standardized differently from its training, exactly as in FLamby (the consistent alternative,
pooled statistics throughout, is reported beside it). FLamby's "Pooled Test" standardizes the
test patients with the pooled statistics for every model, local ones included; so does
`pooled_test` here (`eval_accuracy` keeps the run's own evaluation). It writes `baselines.csv`
(one row per run) and prints a table of mean +- sample std over the seeds.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import statistics
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

import fedtorch
from fedtorch.data.base import DatasetSplits
from fedtorch.data.heart_disease import HOSPITALS, load_heart_disease
from fedtorch.models import LogisticRegression
from fedtorch.samplers import CyclicSampler

#: FLamby's Cyclic: `nrounds` hospital visits of `num_updates` SGD steps at lr 0.01.
CYCLIC_ROUNDS, CYCLIC_STEPS, CYCLIC_LR = 15, 100, 0.01


def flamby_data(root: str | None, normalize: str) -> DatasetSplits:
    """FLamby's patients and split, standardized per hospital ("center") or with pooled statistics."""
    return load_heart_disease(root, preprocessing="flamby", normalize=normalize, split="flamby", download=False)


def one_hospital(data: DatasetSplits, hospital: int) -> DatasetSplits:
    """Hospital `hospital`'s train patients, every hospital's test patients (for the central score)."""
    keep = torch.from_numpy(np.asarray(data.train_groups) == hospital)
    return dataclasses.replace(
        data,
        name=f"fed_heart_disease_{HOSPITALS[hospital]}",
        train_x=data.train_x[keep],
        train_y=data.train_y[keep],
        train_groups=None,
        test_groups=None,
        group_names=None,
    )


def hospital_accuracies(model_file: Path, test: DatasetSplits) -> list[float]:
    """Accuracy of the saved model on each hospital's test patients (FLamby's client_test_k)."""
    model = LogisticRegression(test.input_shape, test.num_classes, binary=True)
    model.load_state_dict(torch.load(model_file, weights_only=True))
    model.eval()
    groups = np.asarray(test.test_groups)
    with torch.no_grad():
        hits = (model(test.test_x).argmax(1) == test.test_y).numpy()
    return [float(hits[groups == k].mean()) for k in range(len(HOSPITALS))]


def cyclic_turns(seed: int, hospital: int = 0) -> int:
    """How often `hospital` trains in FLamby's 15 Cyclic rounds, in the order fedtorch draws for `seed`."""
    sampler = CyclicSampler(clients_per_round=1, shuffle=True, seed=seed)
    sampler.setup(np.ones(len(HOSPITALS), dtype=np.int64))
    return sum(int(sampler.sample(r, None)[0]) == hospital for r in range(1, CYCLIC_ROUNDS + 1))


def run_baselines(
    seeds: Sequence[int],
    out: Path,
    data_dir: str | None = None,
    extra: Sequence[str] = (),
    only: Sequence[str] | None = None,
) -> list[dict]:
    """Train and score the baselines (all, or those named in `only`) for every seed; returns one row
    per run, also written to `out/baselines.csv`."""
    center, pooled = flamby_data(data_dir, "center"), flamby_data(data_dir, "pooled")
    common = ["experiment=fed_heart_disease_pooled", "logging.progress=false", *extra]
    if data_dir is not None:
        common.append(f"data_dir={data_dir}")
    rows = []
    for seed in seeds:
        jobs: list[tuple[str, list[str], DatasetSplits | None, DatasetSplits]] = [("pooled", [], None, center)]
        for k in range(len(HOSPITALS)):
            jobs.append((f"local_{k}", ["dataset.normalize=center"], one_hospital(center, k), center))
        turns = cyclic_turns(seed)
        steps = CYCLIC_STEPS * turns
        cyclic = ["dataset.normalize=center", "trainer=sgd", f"trainer.lr={CYCLIC_LR}", "trainer.batch_size=4",
                  f"trainer.max_steps={steps}", f"trainer.epochs={-(-steps // 50)}"]  # fmt: skip
        jobs.append(("flamby_cyclic", cyclic, one_hospital(center, 0), center))
        for name, overrides, dataset, test in jobs:
            if only is not None and name not in only:
                continue
            objects = {} if dataset is None else {"dataset": dataset}
            run_dir = out / name / f"seed_{seed}"
            summary = fedtorch.run([*common, *overrides, f"seed={seed}"], output_dir=run_dir, **objects)
            per_hospital = hospital_accuracies(run_dir / "model.pt", test)
            pooled_stats = hospital_accuracies(run_dir / "model.pt", pooled)
            # FLamby's "Pooled Test" standardizes every test patient with the pooled train statistics,
            # whichever model is scored: the test-size-weighted mean of the per-hospital accuracies.
            sizes = np.bincount(np.asarray(pooled.test_groups), minlength=len(HOSPITALS))
            row = {"baseline": name, "seed": seed, "pooled_test": float(np.dot(pooled_stats, sizes) / sizes.sum())}
            row.update({f"test_{h}": a for h, a in zip(HOSPITALS, per_hospital)})
            row["hospital_mean"] = float(np.mean(per_hospital))
            row["eval_accuracy"] = summary["metrics"]["eval/accuracy"]  # the run's own central evaluation
            if name == "pooled":  # the consistent alternative: pooled statistics for the test patients too
                row["hospital_mean_pooled_stats"] = float(np.mean(pooled_stats))
            if name == "flamby_cyclic":
                row["turns"] = turns
            row["wall_s"] = summary.get("wall_seconds")
            rows.append(row)
    out.mkdir(parents=True, exist_ok=True)
    columns = list(dict.fromkeys(key for row in rows for key in row))  # in first-appearance order
    with open(out / "baselines.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return rows


def table(rows: Sequence[dict]) -> str:
    """Markdown: mean +- sample std over seeds of the hospital mean and the pooled test accuracy."""

    def cell(values: list[float]) -> str:
        values = [v for v in values if v is not None]
        if len(values) < 2:
            return f"{values[0]:.4f}" if values else ""
        return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"

    lines = [
        "| baseline | seeds | mean of the 4 hospitals' test accuracy | pooled test accuracy |",
        "|---|---|---|---|",
    ]
    for name in dict.fromkeys(row["baseline"] for row in rows):
        group = [row for row in rows if row["baseline"] == name]
        seeds = ",".join(str(row["seed"]) for row in group)
        means, pooled = cell([r["hospital_mean"] for r in group]), cell([r["pooled_test"] for r in group])
        lines.append(f"| {name} | {seeds} | {means} | {pooled} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--out", type=Path, default=Path("outputs/fed_heart_disease/baselines"))
    parser.add_argument("--data-dir", default=None, help="the data root (default: $FEDTORCH_DATA, else ./data)")
    parser.add_argument("overrides", nargs="*", help="extra fedtorch overrides for every run (e.g. debug=smoke)")
    args = parser.parse_args(argv)
    rows = run_baselines(args.seeds, args.out, args.data_dir, args.overrides)
    print(table(rows))
    print(f"\nwritten: {args.out / 'baselines.csv'}")


if __name__ == "__main__":
    main()
