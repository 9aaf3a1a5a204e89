"""The figure of Li et al. 2020 (FedProx), Figure 1, from fedtorch run folders: for each federation,
the global model's training loss and test accuracy against rounds, one panel per share of
stragglers (0%, 50%, 90%), one curve per method (FedAvg dropping stragglers, FedProx with mu = 0
and mu = 1 keeping their partial work), mean over seeds with the seeds' range shaded; plus a table
of the final numbers (means of the last 10 rounds and of the second half of the run, where an
unstable method shows, and the accuracy's range over the second half).

    python experiments/fedprox_synthetic/figure.py outputs/repro/fedprox --out experiments/fedprox_synthetic

Reads the runs with `fedtorch.results` (any folder tree of run folders made by the commands of
experiments/fedprox_synthetic/README.md), writes `<out>/fedprox_<federation>.png` and prints the
table (markdown).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from fedtorch import results

STRAGGLERS = (0.0, 0.5, 0.9)
METRICS = (("eval/train_loss", "training loss (global model, all devices)"), ("eval/accuracy", "test accuracy"))


def method_of(row: pd.Series) -> str:
    """FedAvg (drops stragglers) or FedProx mu=<mu> (keeps their partial work), from a run's settings."""
    if row.get("strategy", "fedavg") == "fedprox":
        return f"FedProx mu={float(row['strategy.mu']):g}"
    return "FedAvg (drops stragglers)"


def federation_of(row: pd.Series) -> str:
    return str(row["experiment"]).removeprefix("fedprox_synthetic_")


def load(paths: Sequence[str | Path]) -> pd.DataFrame:
    """One row per (run, round), with `method`, `federation` and `stragglers` columns."""
    curves = results.load_curves(paths)
    curves = curves[curves["run/status"].isin(results.FINISHED)].copy()
    curves["method"] = curves.apply(method_of, axis=1)
    curves["federation"] = curves.apply(federation_of, axis=1)
    curves["stragglers"] = curves["sampler.stragglers"].astype(float)
    # FedProx with mu = 0 is FedAvg bit for bit when no device straggles (the policy then drops
    # nothing), so its 0% curve is FedAvg's, shown once under each name.
    plain = curves[(curves["method"] == "FedAvg (drops stragglers)") & (curves["stragglers"] == 0.0)].copy()
    if len(plain) and not ((curves["method"] == "FedProx mu=0") & (curves["stragglers"] == 0.0)).any():
        plain["method"] = "FedProx mu=0"
        curves = pd.concat([curves, plain], ignore_index=True)
    return curves


def final_table(curves: pd.DataFrame) -> pd.DataFrame:
    """Per (federation, stragglers, method), over seeds: the last 10 rounds' and the second half's
    mean training loss, the last 10 rounds' mean test accuracy, and its lowest value in the second half."""
    rows = []
    for (federation, stragglers, method), group in curves.groupby(["federation", "stragglers", "method"]):
        per_run = []
        for _, run in group.groupby("run/path"):
            run = run.sort_values("round")
            last = run["round"].max()
            last10, half = run[run["round"] > last - 10], run[run["round"] > last // 2]
            per_run.append(
                {
                    "loss10": last10["eval/train_loss"].mean(),
                    "loss_half": half["eval/train_loss"].mean(),
                    "acc10": last10["eval/accuracy"].mean(),
                    "acc_min_half": half["eval/accuracy"].min(),
                }
            )
        frame = pd.DataFrame(per_run)
        row = {"federation": federation, "stragglers": f"{stragglers:.0%}", "method": method, "seeds": len(frame)}
        for key in frame:
            row[key] = frame[key].mean()
            row[f"{key} std"] = frame[key].std() if len(frame) > 1 else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)


def markdown(table: pd.DataFrame) -> str:
    def cell(row: pd.Series, key: str) -> str:
        std = row[f"{key} std"]
        return f"{row[key]:.3f}" + ("" if pd.isna(std) else f" ± {std:.3f}")

    lines = [
        "| federation | stragglers | method | seeds | training loss, last 10 rounds | training loss, rounds 101-200 "
        "| test accuracy, last 10 rounds | lowest test accuracy, rounds 101-200 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for _, row in table.iterrows():
        lines.append(
            f"| {row['federation']} | {row['stragglers']} | {row['method']} | {row['seeds']} | {cell(row, 'loss10')} "
            f"| {cell(row, 'loss_half')} | {cell(row, 'acc10')} | {cell(row, 'acc_min_half')} |"
        )
    return "\n".join(lines)


def figure(curves: pd.DataFrame, federation: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = curves[curves["federation"] == federation]
    fig, axes = plt.subplots(2, len(STRAGGLERS), figsize=(13, 6.5), sharex=True, sharey="row")
    for col, stragglers in enumerate(STRAGGLERS):
        for method, group in data[data["stragglers"] == stragglers].groupby("method"):
            for row, (metric, label) in enumerate(METRICS):
                by_round = group.groupby("round")[metric]
                mean = by_round.mean()
                axis = axes[row, col]
                (line,) = axis.plot(mean.index, mean.values, label=method, linewidth=1.2)
                axis.fill_between(mean.index, by_round.min(), by_round.max(), color=line.get_color(), alpha=0.15)
                axis.set_ylabel(label if col == 0 else "")
                axis.grid(alpha=0.3)
        axes[0, col].set_title(f"Synthetic({federation.replace('_', ',')}), {stragglers:.0%} stragglers")
        axes[1, col].set_xlabel("round")
    axes[0, 0].set_ylim(0.3, 2.5)
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=72)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", help="folders of fedtorch runs (sweeps of the README's commands)")
    parser.add_argument("--out", type=Path, default=Path("."))
    args = parser.parse_args(argv)
    curves = load(args.paths)
    args.out.mkdir(parents=True, exist_ok=True)
    for federation in sorted(curves["federation"].unique()):
        figure(curves, federation, args.out / f"fedprox_{federation}.png")
    print(markdown(final_table(curves)))


if __name__ == "__main__":
    main()
