"""Tables and heat maps of the attack grid (experiments/attacks/grid.py).

    python experiments/attacks/grid_table.py outputs/multirun/attack_grid [--out experiments/attacks]

Reads every run under the grid's root with `fedtorch.report` (overrides, summary.json,
metrics.jsonl) and writes, per setting and attacker fraction,

- `grid_<setting>_<fraction>.md`: one table per Dirichlet alpha (or the natural partition): a row
  per defense, a column per attack, each cell "final / worst" test accuracy in %, the mean over the
  seeds (and its standard deviation for the final accuracy). *Final* is the last round's accuracy,
  *worst* the lowest accuracy over the last 10 rounds (how far an attack pulls a run down between
  two evaluations once it has learned: oscillations, collapses); a backdoor's success rate is added where one is logged;
  a run that diverged counts as accuracy 0.1 (chance) and is marked with its count;
- `grid_<setting>_<fraction>.png`: the heat map of the mean final accuracy minus the attack-free
  FedAvg accuracy of the same alpha (0 = no loss; one panel per alpha), and
  `grid_<setting>_<fraction>_cost.png` minus each defense's own attack-free accuracy (what the
  attack costs that defense).

The attack-free column "none" is the same for both fractions. Stdout gets the Markdown.
"""

from __future__ import annotations

import argparse
import math
import statistics
from collections import defaultdict
from pathlib import Path

from fedtorch.report import _pyplot, find_runs, load_run

ATTACK_ORDER = ["none", "silent", "alie", "ipm", "min_max", "min_sum", "fang_trimmed_mean", "fang_krum", "backdoor"]
DEFENSE_ORDER = [
    "fedavg",
    "fedavgm",
    "median",
    "trimmed_mean",
    "krum",
    "geomed",
    "bucketing",
    "bucketing_krum",
    "nnm",
    "centered_clipping",
    "fltrust",
    "norm_bounding",
]
LABELS = {
    "fedavg": "FedAvg (mean)",
    "fedavgm": "FedAvgM (momentum 0.9)",
    "median": "median",
    "trimmed_mean": "trimmed mean (0.2)",
    "krum": "Krum",
    "geomed": "geometric median",
    "bucketing": "bucketing s=2 + median",
    "bucketing_krum": "bucketing s=2 + Krum",
    "nnm": "NNM + median",
    "centered_clipping": "centered clipping + momentum",
    "fltrust": "FLTrust (100 root samples)",
    "norm_bounding": "norm bounding",
}
CHANCE = 0.1
WORST_WINDOW = 10  # rounds at the end over which the worst accuracy is taken


def collect(root: Path) -> dict[tuple[str, str, str, str, str], list[dict[str, float | bool]]]:
    """(setting, fraction, alpha, defense, attack) -> one record per seed."""
    cells: dict[tuple[str, str, str, str, str], list[dict[str, float | bool]]] = defaultdict(list)
    for folder in find_runs([root]):
        parts = folder.relative_to(root).parts
        if len(parts) < 4:
            continue
        setting, defense, part = parts[0], parts[1], parts[2]
        run = load_run(folder)
        if run.summary is None:
            continue  # unfinished (a grid still running)
        attack = run.overrides.get("attack", "none")
        fraction = "0" if part == "clean" else run.overrides.get("attack.fraction", part.removeprefix("attacked_"))
        alpha = run.overrides.get("partition.alpha", "natural")
        accuracy = [row["eval/accuracy"] for row in run.history if "eval/accuracy" in row]
        diverged = bool(run.summary.get("diverged")) or not accuracy
        last = accuracy[-WORST_WINDOW:]
        record: dict[str, float | bool] = {
            "final": CHANCE if diverged else accuracy[-1],
            "worst": CHANCE if diverged else min(last),
            "diverged": diverged,
        }
        success = [row["eval/attack/backdoor_success"] for row in run.history if "eval/attack/backdoor_success" in row]
        if success:
            record["backdoor"] = success[-1]
        cells[(setting, fraction, alpha, defense, attack)].append(record)
    return cells


def _mean(records: list[dict[str, float | bool]], key: str) -> float:
    return statistics.fmean(float(r[key]) for r in records)


def cell_text(records: list[dict[str, float | bool]] | None) -> str:
    if not records:
        return "—"
    final = [100 * float(r["final"]) for r in records]
    text = f"{statistics.fmean(final):.1f}"
    if len(final) > 1:
        text += f" ± {statistics.stdev(final):.1f}"
    text += f" / {100 * _mean(records, 'worst'):.1f}"
    if "backdoor" in records[0]:
        text += f" (ASR {100 * _mean(records, 'backdoor'):.0f})"
    diverged = sum(bool(r["diverged"]) for r in records)
    if diverged:
        text += f" ({diverged} div.)"
    return text


def _ordered(values: set[str], order: list[str]) -> list[str]:
    return [v for v in order if v in values] + sorted(values - set(order))


def _alphas(values: set[str]) -> list[str]:
    return sorted(values, key=lambda a: -math.inf if a == "natural" else -float(a))


def tables(cells, setting: str, fraction: str) -> str:
    keys = [k for k in cells if k[0] == setting and k[1] in (fraction, "0")]
    lines = []
    for alpha in _alphas({k[2] for k in keys}):
        defenses = _ordered({k[3] for k in keys if k[2] == alpha}, DEFENSE_ORDER)
        attacks = _ordered({k[4] for k in keys if k[2] == alpha}, ATTACK_ORDER)
        seeds = max(len(v) for k, v in cells.items() if k in keys and k[2] == alpha)
        where = "natural partition" if alpha == "natural" else f"Dirichlet alpha = {alpha}"
        lines += [
            f"**{setting}, {where}, {float(fraction):.0%} attackers** (final ± std / worst, %, {seeds} seeds)",
            "",
        ]
        lines.append("| defense | " + " | ".join(attacks) + " |")
        lines.append("|---" * (len(attacks) + 1) + "|")
        for defense in defenses:
            row = []
            for attack in attacks:
                key = (setting, "0" if attack == "none" else fraction, alpha, defense, attack)
                row.append(cell_text(cells.get(key)))
            lines.append(f"| {LABELS.get(defense, defense)} | " + " | ".join(row) + " |")
        lines.append("")
    return "\n".join(lines)


def heat_map(cells, setting: str, fraction: str, path: Path, own_baseline: bool = False) -> None:
    """Mean final accuracy minus attack-free FedAvg's (or, `own_baseline`, minus the same defense's
    attack-free accuracy: what the attack costs it), in points, one panel per alpha."""
    plt = _pyplot()
    keys = [k for k in cells if k[0] == setting and k[1] in (fraction, "0")]
    alphas = _alphas({k[2] for k in keys})
    defenses = _ordered({k[3] for k in keys}, DEFENSE_ORDER)
    attacks = _ordered({k[4] for k in keys}, ATTACK_ORDER)
    figure, axes = plt.subplots(1, len(alphas), figsize=(4.2 * len(alphas) + 1.5, 0.42 * len(defenses) + 1.8))
    axes = [axes] if len(alphas) == 1 else list(axes)
    image = None
    for axis, alpha in zip(axes, alphas):
        reference_records = cells.get((setting, "0", alpha, "fedavg", "none"))
        reference = _mean(reference_records, "final") if reference_records else math.nan
        grid = []
        for defense in defenses:
            own = cells.get((setting, "0", alpha, defense, "none"))
            base = (_mean(own, "final") if own else math.nan) if own_baseline else reference
            row = []
            for attack in attacks:
                records = cells.get((setting, "0" if attack == "none" else fraction, alpha, defense, attack))
                row.append(100 * (_mean(records, "final") - base) if records else math.nan)
            grid.append(row)
        image = axis.imshow(grid, cmap="RdYlGn", vmin=-40, vmax=10, aspect="auto")
        for i, row in enumerate(grid):
            for j, value in enumerate(row):
                if not math.isnan(value):
                    axis.text(j, i, f"{value:+.0f}", ha="center", va="center", fontsize=7)
        axis.set_xticks(range(len(attacks)), attacks, rotation=45, ha="right", fontsize=8)
        axis.set_yticks(range(len(defenses)), [LABELS.get(d, d) for d in defenses], fontsize=8)
        where = "natural" if alpha == "natural" else f"alpha = {alpha}"
        axis.set_title(f"{where} (FedAvg clean {100 * reference:.1f}%)", fontsize=9)
        if axis is not axes[0]:
            axis.set_yticklabels([])
    baseline = "the defense's own attack-free run" if own_baseline else "attack-free FedAvg"
    figure.suptitle(f"{setting}, {float(fraction):.0%} attackers: final accuracy - {baseline} (points)")
    figure.colorbar(image, ax=axes, shrink=0.8)
    figure.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path, nargs="?", default=Path("outputs/multirun/attack_grid"))
    parser.add_argument("--out", type=Path, default=None, help="folder for the .md and .png files (default: root)")
    parser.add_argument("--no-figures", action="store_true")
    args = parser.parse_args()
    out = args.out or args.root
    out.mkdir(parents=True, exist_ok=True)
    cells = collect(args.root)
    for setting in sorted({k[0] for k in cells}):
        for fraction in sorted({k[1] for k in cells if k[0] == setting} - {"0"}, key=float, reverse=True):
            text = tables(cells, setting, fraction)
            (out / f"grid_{setting}_{fraction}.md").write_text(text)
            print(text)
            if not args.no_figures:
                heat_map(cells, setting, fraction, out / f"grid_{setting}_{fraction}.png")
                heat_map(cells, setting, fraction, out / f"grid_{setting}_{fraction}_cost.png", own_baseline=True)


if __name__ == "__main__":
    main()
