"""The personalization experiment's table (Markdown, on stdout) and plot, from its run folders.

    python experiments/personalization/make_table.py [outputs/personalization] [--plot FILE.png]

Reads `<root>/<setting>/<strategy>/seed<k>/{summary.json,metrics.jsonl}` (what `run.py` writes).
Per setting and method, over the seeds that finished without diverging (mean +- sample std):

- personal accuracy: `eval/personal/accuracy_mean`, the last round's value (what a paper table
  should report, docs/metrics.md) and the best over the evaluated rounds with its round;
  a global method (FedAvg, MOON, FedLC) predicts with its global model, so its own column is the
  global model's accuracy on the same clients, shown in brackets;
- global: `eval/clients/accuracy_mean`, the global model on the same clients' test splits;
- unseen clients: the global model, and after the method's personalization step;
- bytes up per round: `comm/bytes_up_total / rounds`, one client's upload times the cohort.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LABELS = {
    "fedavg": "FedAvg", "fedavg_ft": "FedAvg-FT", "fedper": "FedPer", "fedrep": "FedRep", "fedbabu": "FedBABU",
    "lg_fedavg": "LG-FedAvg", "fedbn": "FedBN", "apfl": "APFL", "pfedme": "pFedMe", "per_fedavg": "Per-FedAvg",
    "moon": "MOON", "fedlc": "FedLC", "ditto": "Ditto",
}  # fmt: skip
SETTINGS = {
    "mnist_shards": "MNIST, 100 clients x 2 label shards",
    "mnist_dirichlet": "MNIST, 100 clients, Dirichlet(0.1)",
    "sent140": "Sent140, 218 users (>= 10 tweets)",
    "feature_shift": "MNIST feature shift, 5 domains x 4 clients, BN-CNN",
}


def _stat(values: list[float], scale: float = 100.0, digits: int = 1) -> str:
    if not values:
        return "-"
    mean = statistics.fmean(values) * scale
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {statistics.stdev(values) * scale:.{digits}f}"


def _runs(method_dir: Path) -> list[tuple[dict, list[dict]]]:
    runs = []
    for seed_dir in sorted(method_dir.glob("seed*")):
        summary_file = seed_dir / "summary.json"
        if not summary_file.exists():
            continue
        summary = json.loads(summary_file.read_text())
        if summary.get("diverged"):
            continue
        rows = [json.loads(line) for line in (seed_dir / "metrics.jsonl").read_text().splitlines()]
        runs.append((summary, rows))
    return runs


def row(method: str, runs: list[tuple[dict, list[dict]]], diverged: int) -> str:
    metrics = [summary["metrics"] for summary, _ in runs]
    personal = "eval/personal/accuracy_mean"
    own = personal if any(personal in m for m in metrics) else "eval/clients/accuracy_mean"

    def values(key: str) -> list[float]:
        return [m[key] for m in metrics if key in m]

    last = _stat(values(own))
    best_rounds = [int(m[f"best_round/{own}"]) for m in metrics if f"best_round/{own}" in m]
    best = _stat(values(f"best/{own}"))
    if best_rounds:
        best += f" (r {'/'.join(str(r) for r in best_rounds)})"
    if own != personal:
        last, best = f"[{last}]", f"[{best}]"
    unseen_own = "eval/unseen/personal/accuracy_mean" if own == personal else "eval/unseen/global/accuracy_mean"
    unseen_personal = _stat(values(unseen_own))
    if own != personal and unseen_personal != "-":
        unseen_personal = f"[{unseen_personal}]"
    up = [summary["metrics"]["comm/bytes_up_total"] / summary["rounds"] / 1e6 for summary, _ in runs]
    seeds = f"{len(runs)}" + (f" (+{diverged} diverged)" if diverged else "")
    return (
        f"| {LABELS.get(method, method)} | {last} | {best} | {_stat(values('eval/clients/accuracy_mean'))} | "
        f"{_stat(values('eval/unseen/global/accuracy_mean'))} | {unseen_personal} | {_stat(up, 1.0, 2)} | {seeds} |"
    )


def table(root: Path) -> str:
    out = []
    for setting, title in SETTINGS.items():
        setting_dir = root / setting
        if not setting_dir.exists():
            continue
        out += [
            f"\n### {title}\n",
            "| method | personal acc, last | personal acc, best (round) | global acc (same clients) | "
            "unseen: global | unseen: personalized | MB up / round | seeds |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for method in LABELS:
            method_dir = setting_dir / method
            if not method_dir.exists():
                continue
            runs = _runs(method_dir)
            finished = sum(1 for d in method_dir.glob("seed*") if (d / "summary.json").exists())
            if finished:
                out.append(row(method, runs, finished - len(runs)))
    return "\n".join(out)


def plot(root: Path, path: Path) -> None:
    """Personal accuracy (the global model's for global methods) per evaluated round, mean over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = [s for s in SETTINGS if (root / s).exists()]
    fig, axes = plt.subplots(1, len(settings), figsize=(5 * len(settings), 4), squeeze=False)
    for ax, setting in zip(axes[0], settings):
        for method in LABELS:
            runs = _runs(root / setting / method) if (root / setting / method).exists() else []
            if not runs:
                continue
            key = "eval/personal/accuracy_mean" if "eval/personal/accuracy_mean" in runs[0][1][-1] else None
            key = key or "eval/clients/accuracy_mean"
            curves: dict[int, list[float]] = {}
            for _, rows in runs:
                for r in rows:
                    if key in r:
                        curves.setdefault(r["round"], []).append(r[key])
            rounds = sorted(curves)
            style = "-" if key.startswith("eval/personal") else "--"
            ax.plot(rounds, [100 * statistics.fmean(curves[r]) for r in rounds], style, label=LABELS[method])
        ax.set_title(SETTINGS[setting], fontsize=9)
        ax.set_xlabel("round")
        ax.set_ylabel("accuracy on the clients' own test splits (%)")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="lower right")
    fig.suptitle("solid: personal models (eval/personal); dashed: global model (eval/clients)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", nargs="?", type=Path, default=ROOT / "outputs" / "personalization")
    parser.add_argument("--plot", type=Path, default=None)
    args = parser.parse_args()
    print(table(args.root))
    if args.plot is not None:
        plot(args.root, args.plot)


if __name__ == "__main__":
    main()
