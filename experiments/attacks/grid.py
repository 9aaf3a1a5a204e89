"""Run the attack x defense x heterogeneity x attacker-fraction grid as Hydra multirun sweeps.

    python experiments/attacks/grid.py synthetic             # the full synthetic grid
    python experiments/attacks/grid.py natural mnist         # the other settings
    python experiments/attacks/grid.py synthetic --dry-run   # print the commands only
    python experiments/attacks/grid_table.py outputs/multirun/attack_grid   # table + heat map

A setting is an experiment preset (conf/experiment/attack_*.yaml) with the values of the sweep.
Every defense is one sweep per setting (its options differ: Krum's f, centered clipping's radius),
with the attacks, attacker fractions, Dirichlet alphas and seeds as the multirun axes; the
attack-free runs are a sweep of their own (attack=none has no fraction). Each sweep writes into
<root>/<setting>/<defense>/<clean|attacked_FRACTION>/<job>; the jobs run one after another in one process
(add `--parallel N` for Hydra's joblib launcher on a quiet machine). A sweep that already finished
is skipped (its folder holds a summary.json per job), so the grid can be resumed. Last, FedAvg
with `attack=silent` (the attackers' updates dropped) gives the ceiling of any defense.

The defenses' options follow from the cohort: f = the attackers of a round at the largest fraction
(20% of 25 = 5 on the synthetic settings, 20% of 10 = 2 on MNIST), the trimmed mean's beta = 0.2;
bucketing's s = 2 (Karimireddy et al. 2022); centered clipping's radius is about the median
distance of an update to the previous aggregate in each setting (measured, see the README).
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ATTACKS = ("alie", "ipm", "min_max", "min_sum", "fang_trimmed_mean", "fang_krum")


@dataclass(frozen=True)
class Setting:
    preset: str
    f: int  # the Byzantine clients a round the defenses assume (20% of the cohort)
    tau: float  # centered clipping's radius for this setting's update scale
    alphas: tuple[str, ...] | None  # Dirichlet alphas (None: the natural partition)
    fractions: tuple[str, ...] = ("0.1", "0.2")
    seeds: tuple[str, ...] = ("0", "1", "2")
    attacks: tuple[str, ...] = ATTACKS
    skip: tuple[str, ...] = ()  # defenses left out of this setting


SETTINGS = {
    "synthetic": Setting("attack_synthetic", f=5, tau=1.0, alphas=("100", "1", "0.1")),
    "natural": Setting("attack_synthetic_natural", f=5, tau=0.1, alphas=None, fractions=("0.2",)),
    "mnist": Setting(
        "attack_mnist",
        f=2,
        tau=0.5,
        alphas=("1", "0.1"),
        fractions=("0.2",),
        seeds=("0",),
        attacks=("alie", "ipm", "min_max", "fang_trimmed_mean"),
        # Bucketed Krum needs 2(2f + 2) + 1 = 13 clients a round; the rest is left out for CPU time.
        skip=("bucketing_krum", "trimmed_mean", "geomed", "fedavgm"),
    ),
}


def defenses(f: int, tau: float) -> dict[str, list[str]]:
    """Each defense of the grid as the overrides that select it."""
    return {
        "fedavg": ["strategy=fedavg"],
        "fedavgm": ["strategy=fedavgm"],  # server momentum alone (centered clipping's companion)
        "median": ["strategy=median"],
        "trimmed_mean": ["strategy=trimmed_mean", "strategy.aggregator.beta=0.2"],
        "krum": ["strategy=krum", f"strategy.aggregator.f={f}"],
        "geomed": ["strategy=geomed"],
        "bucketing": ["strategy=bucketing"],  # s = 2, then the median
        "bucketing_krum": ["strategy=bucketing_krum", f"strategy.aggregator.inner.f={f}"],
        "nnm": ["strategy=nnm", f"strategy.aggregator.f={f}"],  # then the median
        "centered_clipping": ["strategy=centered_clipping", f"strategy.aggregator.tau={tau}"],
        "fltrust": ["strategy=fltrust"],
    }


def sweeps(
    name: str, root: Path, only: set[str] | None = None, fractions: set[str] | None = None
) -> list[tuple[Path, list[str]]]:
    """(sweep folder, command) of every sweep of setting `name` (`only` these defenses, `fractions`)."""
    setting = SETTINGS[name]
    common = [
        f"experiment={setting.preset}",
        "logging.progress=false",
        "logging.tensorboard=false",  # metrics.jsonl has every round; 1000+ event files would not help
        f"seed={','.join(setting.seeds)}",
    ]
    if setting.alphas is not None:
        common.append(f"partition.alpha={','.join(setting.alphas)}")
    chosen = {
        defense: overrides
        for defense, overrides in defenses(setting.f, setting.tau).items()
        if (not only or defense in only) and defense not in setting.skip
    }
    out = []
    # The attack-free runs first, then the largest attacker fraction for every defense, then the
    # smaller ones: a grid stopped early still has every defense at the headline fraction.
    parts = [("clean", ["attack=none"])] + [
        # choice(): a sweep axis even with one value (a plain override would be applied to the
        # default attack=none first, which has no fraction).
        (f"attacked_{fraction}", [f"attack={','.join(setting.attacks)}", f"attack.fraction=choice({fraction})"])
        for fraction in sorted(setting.fractions, key=float, reverse=True)
        if not fractions or fraction in fractions
    ]
    for part, axes in parts:
        for defense, overrides in chosen.items():
            out.append(_sweep(root / name / defense / part, [*common, *overrides, *axes]))
    # The ceiling of every defense: FedAvg over the honest clients alone (attack=silent).
    for fraction in sorted(setting.fractions, key=float, reverse=True):
        if (not fractions or fraction in fractions) and (not only or "fedavg" in only):
            axes = ["strategy=fedavg", "attack=silent", f"attack.fraction=choice({fraction})"]
            out.append(_sweep(root / name / "fedavg" / f"oracle_{fraction}", [*common, *axes]))
    return out


def _sweep(folder: Path, overrides: list[str]) -> tuple[Path, list[str]]:
    return folder, [sys.executable, "-m", "fedtorch", "-m", *overrides, f"hydra.sweep.dir={folder}"]


def finished(folder: Path) -> bool:
    jobs = [p for p in folder.iterdir() if p.is_dir() and p.name.isdigit()] if folder.is_dir() else []
    return bool(jobs) and all((job / "summary.json").is_file() for job in jobs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("settings", nargs="+", choices=sorted(SETTINGS))
    parser.add_argument("--root", type=Path, default=Path("outputs/multirun/attack_grid"))
    parser.add_argument("--defenses", help="comma-separated subset of the defenses")
    parser.add_argument("--fractions", help="comma-separated subset of the attacker fractions")
    parser.add_argument("--parallel", type=int, default=0, help="jobs at once (Hydra's joblib launcher)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    args = parser.parse_args()
    only = set(args.defenses.split(",")) if args.defenses else None
    fractions = set(args.fractions.split(",")) if args.fractions else None
    for name in args.settings:
        for folder, command in sweeps(name, args.root, only, fractions):
            if args.parallel > 1:
                command += ["hydra/launcher=parallel", f"hydra.launcher.n_jobs={args.parallel}"]
            print(shlex.join(command), flush=True)
            if args.dry_run or finished(folder):
                continue
            subprocess.run(command, check=True)


if __name__ == "__main__":
    main()
