"""Time to accuracy on a heterogeneous federation: synchronous FedAvg, a deadline with
over-selection, FedAsync and FedBuff, several seeds (experiments/async/README.md).

    python experiments/async/run.py                    # every method, seeds 0 1 2, then the report
    python experiments/async/run.py --methods sync fedbuff --seeds 0
    python experiments/async/run.py --report-only

Each run is one CLI command (printed before it starts) with its own folder under
outputs/async/<method>/seed_<s>; a finished folder is not run again (resume=auto), so the script
can be stopped and restarted. The report reads every folder's metrics.jsonl: the virtual time at
which eval/accuracy first reaches each target (mean and spread over seeds), the ratio of
synchronous FedAvg's time to each method's, and the plot of accuracy against virtual time.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "outputs" / "async"
HERE = Path(__file__).resolve().parent

#: Every method sees the same federation, device profiles (same seed), model, local training and
#: number of client updates (1,500); they differ only in when the server steps.
BASE = ["experiment=fedbuff_mnist", "num_threads=1", "logging.progress=false", "checkpoint_every=50"]
METHODS: dict[str, list[str]] = {
    "sync": ["server=sync", "rounds=150"],
    "deadline": ["server=deadline", "server.deadline=60", "server.over_selection=1.3", "rounds=150"],
    "fedasync": ["server=fedasync", "server.concurrency=20", "server.alpha=0.6", "rounds=1500", "eval_every=10"],
    "fedbuff": ["server=fedbuff", "server.concurrency=20", "server.buffer_size=10", "rounds=150"],
}
LABELS = {
    "sync": "FedAvg (synchronous, 10/round)",
    "deadline": "FedAvg, deadline 60 s + 1.3x over-selection",
    "fedasync": "FedAsync (C=20, alpha=0.6, poly 0.5)",
    "fedbuff": "FedBuff (C=20, K=10)",
}
TARGETS = (0.90, 0.95, 0.96, 0.97)
ANATOMY = 0.95


def run_dir(method: str, seed: int) -> Path:
    return OUT / method / f"seed_{seed}"


def run(method: str, seed: int, extra: list[str]) -> None:
    command = [sys.executable, "-m", "fedtorch", *BASE, *METHODS[method], f"seed={seed}", *extra]
    command.append(f"hydra.run.dir={run_dir(method, seed)}")
    print(" ".join(command[1:]), flush=True)
    subprocess.run(command, cwd=REPO, check=True)


def history(method: str, seed: int) -> list[dict[str, float]]:
    path = run_dir(method, seed) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def first_row(rows: list[dict[str, float]], target: float) -> dict[str, float] | None:
    """The first evaluated row whose eval/accuracy reaches `target`."""
    return next((row for row in rows if row.get("eval/accuracy", -1.0) >= target), None)


def first_time(rows: list[dict[str, float]], target: float) -> float | None:
    row = first_row(rows, target)
    return None if row is None else row["time/virtual_seconds"]


def report(methods: list[str], seeds: list[int]) -> str:
    lines = [
        "| method | seeds | "
        + " | ".join(f"time to {t:.0%} (s)" for t in TARGETS)
        + " | final accuracy | virtual time (s) |",
        "|---" * (4 + len(TARGETS)) + "|",
    ]
    times: dict[str, dict[float, list[float | None]]] = {}
    for method in methods:
        rows = {s: history(method, s) for s in seeds}
        rows = {s: r for s, r in rows.items() if r}
        if not rows:
            continue
        times[method] = {t: [first_time(r, t) for r in rows.values()] for t in TARGETS}
        cells = []
        for t in TARGETS:
            found = [v for v in times[method][t] if v is not None]
            miss = len(rows) - len(found)
            text = f"{np.mean(found):,.0f} ± {np.std(found):,.0f}" if found else "not reached"
            cells.append(text + (f" ({miss} of {len(rows)} not reached)" if found and miss else ""))
        final = [[x for x in r if "eval/accuracy" in x][-1]["eval/accuracy"] for r in rows.values()]
        end = [r[-1]["time/virtual_seconds"] for r in rows.values()]
        lines.append(
            f"| {LABELS[method]} | {len(rows)} | "
            + " | ".join(cells)
            + f" | {np.mean(final):.4f} | {np.mean(end):,.0f} |"
        )
    lines += [
        "",
        f"Where the time goes, to {ANATOMY:.0%}: server steps, client updates, mean virtual seconds a step, "
        "mean staleness, busy fraction of the client slots (means over seeds):",
        "",
        "| method | steps | client updates | seconds a step | staleness | utilization |",
        "|---|---|---|---|---|---|",
    ]
    for method in times:
        reached = [(r, first_row(r, ANATOMY)) for r in (history(method, s) for s in seeds) if r]
        reached = [(r, row) for r, row in reached if row is not None]
        if not reached:
            continue
        steps = [row["round"] for _, row in reached]
        updates = [sum(x["round/clients"] for x in r[: int(row["round"])]) for r, row in reached]
        seconds = [row["time/virtual_seconds"] / row["round"] for _, row in reached]
        stale = [np.mean([x.get("async/staleness_mean", 0.0) for x in r[: int(row["round"])]]) for r, row in reached]
        busy = [
            np.mean([x["clock/utilization"] for x in r[: int(row["round"])] if "clock/utilization" in x])
            for r, row in reached
        ]
        lines.append(
            f"| {LABELS[method]} | {np.mean(steps):,.0f} | {np.mean(updates):,.0f} | {np.mean(seconds):.1f} | "
            f"{np.mean(stale):.1f} | {np.mean(busy):.2f} |"
        )
    if "sync" in times:
        lines += [
            "",
            "Speed-up over synchronous FedAvg (ratio of mean times to the target, seeds that reached it):",
            "",
        ]
        for method in times:
            if method == "sync":
                continue
            ratios = []
            for t in TARGETS:
                a = [v for v in times["sync"][t] if v is not None]
                b = [v for v in times[method][t] if v is not None]
                ratios.append(f"{t:.0%}: {np.mean(a) / np.mean(b):.2f}x" if a and b else f"{t:.0%}: n/a")
            lines.append(f"- {LABELS[method]}: " + ", ".join(ratios))
    return "\n".join(lines)


def plot(methods: list[str], seeds: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for i, method in enumerate(methods):
        for j, seed in enumerate(seeds):
            rows = [r for r in history(method, seed) if "eval/accuracy" in r]
            if rows:
                x = [r["time/virtual_seconds"] / 3600 for r in rows]
                y = [r["eval/accuracy"] for r in rows]
                ax.plot(x, y, color=f"C{i}", alpha=0.8, lw=1.2, label=LABELS[method] if j == 0 else None)
    ax.set_xlabel("virtual time (hours)")
    ax.set_ylabel("eval/accuracy (MNIST test set)")
    ax.set_ylim(0.8, 1.0)
    ax.set_xlim(0, 3)  # synchronous FedAvg reaches 97% within 3 hours; its tail continues flat
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title("MNIST 2NN, 100 clients, Dirichlet(0.5), log-normal devices (3 seeds each)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("extra", nargs="*", help="more overrides for every run (e.g. rounds=20)")
    args = parser.parse_args()
    if not args.report_only:
        for seed in args.seeds:
            for method in args.methods:
                run(method, seed, args.extra)
    text = report(args.methods, args.seeds)
    print(text)
    (HERE / "results.md").write_text(text + "\n")
    plot(args.methods, args.seeds, HERE / "accuracy_vs_virtual_time.png")


if __name__ == "__main__":
    main()
