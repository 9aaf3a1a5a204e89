"""Results table of an attacks x defenses sweep (one Markdown table on stdout).

    python experiments/attacks/make_table.py outputs/multirun/attack_grid

Reads every job folder of the sweep: its overrides (`.hydra/overrides.yaml`) name the attack and
the defense preset, `metrics.jsonl` holds the per-round metrics. A cell is the final clean test
accuracy; for the backdoor also the attack success rate; a run that diverged says so.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

DEFENSES = {
    "attack_grid": "FedAvg (mean)",
    "attack_grid_median": "median",
    "attack_grid_trimmed_mean": "trimmed mean (beta 0.2)",
    "attack_grid_krum": "Krum (f 2)",
}
ATTACKS = ["none", "sign_flip", "gaussian", "scaling", "label_flip", "backdoor"]


def _overrides(job: Path) -> dict[str, str]:
    lines = (job / ".hydra" / "overrides.yaml").read_text().splitlines()
    pairs = [line.removeprefix("- ").split("=", 1) for line in lines if "=" in line]
    return {k: v for k, v in pairs}


def _get(row: dict, name: str) -> float | None:
    return row.get(name, row.get(f"server/{name}"))


def cell(job: Path) -> str:
    rows = [json.loads(line) for line in (job / "metrics.jsonl").read_text().splitlines()]
    last = rows[-1]
    evaluated = [r for r in rows if "eval/accuracy" in r]
    accuracy = evaluated[-1]["eval/accuracy"] if evaluated else float("nan")
    diverged = any(v != v for v in last.values() if isinstance(v, float))  # NaN
    text = f"{100 * accuracy:.1f}"
    success = _get(last, "attack/backdoor_success")
    if success is not None:
        text += f" (ASR {100 * success:.0f})"
    if diverged:
        text = f"diverged at round {last['round']} (acc {100 * accuracy:.1f})"
    return text


def main(sweep: Path) -> None:
    table: dict[tuple[str, str], str] = {}
    for job in sorted(p for p in sweep.iterdir() if (p / "metrics.jsonl").exists()):
        o = _overrides(job)
        table[(o.get("attack", "none"), o["experiment"])] = cell(job)
    print("| attack \\ defense | " + " | ".join(DEFENSES.values()) + " |")
    print("|---" * (len(DEFENSES) + 1) + "|")
    for attack in ATTACKS:
        print(f"| {attack} | " + " | ".join(table.get((attack, d), "-") for d in DEFENSES) + " |")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "outputs/multirun/attack_grid"))
