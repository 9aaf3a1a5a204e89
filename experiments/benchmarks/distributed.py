"""Speed-up of the distributed backend: N torchrun processes against one process, same workload.

Runs `floor.py` three ways and compares seconds per round (medians; the first round is a warm-up):
  1. one process, sequential backend, 1 thread         (the reference)
  2. one process, sequential backend, N threads        (the same cores used by intra-op threads)
  3. torchrun --nproc_per_node=N, backend distributed, 1 thread per process

    python experiments/benchmarks/distributed.py                       # 2nn, 2 processes
    python experiments/benchmarks/distributed.py --nproc 4 --workload cnn --rounds 3

Run it on an otherwise idle machine: with other jobs on the cores the processes wait for each
other at every all_reduce, and the figure says more about the load than about fedtorch.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
FLOOR = str(HERE / "floor.py")


def run(command: list[str]) -> dict:
    env = {**os.environ, "PYTHONPATH": str(HERE.parents[1])}
    proc = subprocess.run(command, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{proc.stderr[-3000:]}")
    lines = [line for line in proc.stdout.splitlines() if line.startswith("JSON ")]
    return json.loads(lines[-1][5:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--workload", choices=["cnn", "2nn"], default="2nn")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--data", default="auto")
    args = parser.parse_args()
    common = ["--workload", args.workload, "--rounds", str(args.rounds), "--data", args.data, "--json"]
    single = [sys.executable, FLOOR, "--backends", "sequential", *common]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}"]
    results = {
        "sequential, 1 process x 1 thread": run([*single, "--threads", "1"]),
        f"sequential, 1 process x {args.nproc} threads": run([*single, "--threads", str(args.nproc)]),
        f"distributed, {args.nproc} processes x 1 thread": run([*torchrun, FLOOR, *common, "--threads", "1"]),
    }
    reference = next(iter(results.values()))["seconds_per_round"]["sequential"]
    print(f"\n{args.workload}: seconds per round (median of {args.rounds}), speed-up over 1 process x 1 thread")
    for label, result in results.items():
        seconds = next(iter(result["seconds_per_round"].values()))
        print(f"  {label:40} {seconds:8.3f} s   x{reference / seconds:.2f}")


if __name__ == "__main__":
    main()
