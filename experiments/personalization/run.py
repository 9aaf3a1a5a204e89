"""Run the personalization grid: every method on every setting and seed, one run folder each.

    python experiments/personalization/run.py                      # the whole grid (hours on 2 CPU cores)
    python experiments/personalization/run.py --settings mnist_shards --seeds 0 --rounds 30

Each job is one `python -m fedtorch ...` command (printed before it runs) writing to
`outputs/personalization/<setting>/<strategy>/seed<k>`; a folder that already holds a
`summary.json` is skipped, so re-running the script continues the grid. Jobs run one at a time with
one torch thread at the lowest priority (`--nice 19`: on a shared machine they take only CPU time
nobody else wants), and a job starts only when the 1-minute load average is below `--max-load`.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

#: What every run shares: the evaluation protocol and the logging.
COMMON = [
    "logging.progress=false",
    "logging.tensorboard=false",
    "checkpoint_every=0",
    "num_threads=1",
]

#: MNIST, 100 clients, 10 per round, McMahan's 2NN, E = 1, B = 10 (LG-FedAvg's MNIST command uses
#: the same setting with lr 0.05), a fifth of every client's samples as its own test split, 10% of
#: the clients unseen.
MNIST = [
    "dataset=mnist",
    "model=mlp",
    "sampler.clients_per_round=10",
    "trainer.lr=0.05",
    "trainer.epochs=1",
    "trainer.batch_size=10",
    "test_fraction=0.2",
    "holdout=0.1",
]
MNIST_METHODS = [
    "fedavg", "fedavg_ft", "fedper", "fedrep", "fedbabu", "lg_fedavg", "apfl", "pfedme", "per_fedavg", "moon",
    "fedlc", "ditto",
]  # fmt: skip

SETTINGS: dict[str, tuple[list[str], list[str]]] = {
    "mnist_shards": ([*MNIST, "partition=shards", "partition.num_clients=100", "partition.shards_per_client=2"],
                     MNIST_METHODS),
    "mnist_dirichlet": ([*MNIST, "partition=dirichlet", "partition.num_clients=100", "partition.alpha=0.1",
                         "partition.min_size=10"], MNIST_METHODS),
    # LEAF Sent140 users with >= 10 tweets (218 users), their own 90/10 train/test splits, 10% unseen;
    # a user has ~9 train tweets (one batch), so 5 local epochs at lr 0.3.
    "sent140": (["dataset=sent140", "dataset.min_samples=10", "partition=natural", "model=mlp", "model.hidden=[64]",
                 "sampler.clients_per_round=10", "trainer.lr=0.3", "trainer.epochs=5", "trainer.batch_size=10",
                 "holdout=0.1"], MNIST_METHODS),
    # Feature shift: 5 MNIST domains x 4 clients, every client every round, the batch-norm CNN.
    "feature_shift": (["dataset=mnist_feature_shift", "partition=natural", "model=bn_cnn", "sampler=full",
                       "trainer.lr=0.05", "trainer.batch_size=32"], ["fedavg", "fedavg_ft", "fedbn", "fedper"]),
}  # fmt: skip

#: Per-setting options of single methods: pFedMe's outer step w -= lr * lam * (w - theta) needs
#: lr * lam < 2, so at Sent140's lr 0.3 its lam drops from 15 to 5.
EXTRA: dict[str, dict[str, list[str]]] = {"sent140": {"pfedme": ["strategy.lam=5"]}}


def wait_for_load(max_load: float, poll: float = 30.0) -> None:
    while os.getloadavg()[0] >= max_load:
        print(f"  load {os.getloadavg()[0]:.1f} >= {max_load}: waiting", flush=True)
        time.sleep(poll)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--methods", nargs="+", default=None, help="a subset of each setting's methods")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--eval-every", type=int, default=5)
    parser.add_argument("--max-load", type=float, default=3.0)
    parser.add_argument("--nice", type=int, default=19, help="priority of the jobs (19: only idle CPU time)")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "personalization")
    args = parser.parse_args()
    os.nice(args.nice)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for seed in args.seeds:  # seed-major: a partial grid has every method at the first seeds
        for setting in args.settings:
            overrides, methods = SETTINGS[setting]
            for strategy in methods:
                if args.methods and strategy not in args.methods:
                    continue
                run_dir = args.out / setting / strategy / f"seed{seed}"
                if (run_dir / "summary.json").exists():
                    continue
                command = [
                    sys.executable, "-m", "fedtorch", *overrides, f"strategy={strategy}",
                    *EXTRA.get(setting, {}).get(strategy, []), f"seed={seed}",
                    f"rounds={args.rounds}", f"eval_every={args.eval_every}", *COMMON, f"hydra.run.dir={run_dir}",
                ]  # fmt: skip
                wait_for_load(args.max_load)
                print(" ".join(command[1:]), flush=True)
                start = time.perf_counter()
                done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
                status = "ok" if done.returncode == 0 else f"failed ({done.stderr.strip().splitlines()[-1:]})"
                print(f"  {setting}/{strategy}/seed{seed}: {status} in {time.perf_counter() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
