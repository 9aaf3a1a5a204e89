"""Scale: a round's cost and the memory of a run with 100 vs 10,000 clients (100 per round).

The federation is FedProx's Synthetic(1, 1) (Li et al. 2020) scaled up: K devices, each capped at
50 samples (40 train / 10 test), so a sampled client does the same work whatever K is and only the
size of the federation changes. Each K runs in a fresh process, so its peak RSS is its own.

For a stateless algorithm (FedAvg) a round should cost the same for any K (sampling is O(cohort)
and the data is one resident tensor indexed per client), and memory should be the data plus a small
multiple of the model (the worker model, the global vector, the float64 running sum, one client
delta), never a model per client.

    python experiments/benchmarks/scale.py                       # K = 100 and 10,000
    python experiments/benchmarks/scale.py --clients 100,1000,10000,30000 --rounds 10 --backend vectorized
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def rss_mb() -> float:
    """Current resident set size (MiB)."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    """Peak RSS (MiB) since the last `reset_peak_rss()`, else since the process started."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_rss() -> None:
    """Start a new peak-RSS window (Linux: writing 5 to clear_refs resets VmHWM)."""
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")


def child(num_clients: int, rounds: int, backend_name: str, hidden: int) -> dict:
    sys.path.insert(0, str(REPO))
    import numpy as np
    import torch

    from fedtorch.backends import SequentialBackend, VectorizedBackend
    from fedtorch.client import LocalTrainer
    from fedtorch.data.base import FederatedDataset
    from fedtorch.data.partitions import natural_partition
    from fedtorch.data.synthetic import load_fedprox_synthetic
    from fedtorch.models import MLP
    from fedtorch.samplers import UniformSampler
    from fedtorch.simulation import Simulation
    from fedtorch.strategies import FedAvg

    torch.set_num_threads(1)
    base = rss_mb()
    data = load_fedprox_synthetic(num_devices=num_clients, max_samples_per_device=50)
    fed = FederatedDataset.from_partition(data, natural_partition(data.train_groups))
    data_mb = sum(t.numel() * t.element_size() for t in (data.train_x, data.train_y, data.test_x, data.test_y)) / 2**20
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand the generator's float64 temporaries back to the OS
    loaded = rss_mb()
    torch.manual_seed(0)
    model = MLP(data.input_shape, data.num_classes, hidden=(hidden, hidden))
    backend = VectorizedBackend() if backend_name == "vectorized" else SequentialBackend()
    trainer = LocalTrainer(lr=0.05, epochs=1, batch_size=10)
    sim = Simulation(
        fed, model, FedAvg(), UniformSampler(100), trainer, rounds=10**9, eval_every=10**9, backend=backend
    )
    del data  # the federation holds the tensors
    setup = rss_mb()
    wall, cpu = [], []
    for round_idx in range(1, rounds + 2):
        start, start_cpu = time.perf_counter(), time.process_time()
        sim.run_round(round_idx)
        if round_idx == 1:  # a warm-up round: lazy imports, allocator pools; then a fresh peak window
            warm = rss_mb()
            reset_peak_rss()
        else:
            wall.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
    return {
        "clients": num_clients,
        "backend": backend_name,
        "seconds_per_round": float(np.median(wall)),
        "cpu_seconds_per_round": float(np.median(cpu)),
        "data_mb": data_mb,
        "model_mb": sim.flat.layout.size * 4 / 2**20,
        "rss_base_mb": base,
        "rss_data_mb": loaded,
        "rss_setup_mb": setup,
        "rss_warm_mb": warm,
        "peak_rss_rounds_mb": peak_rss_mb(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", default="100,10000", help="federation sizes to compare")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds (after one warm-up round)")
    parser.add_argument("--backend", choices=["sequential", "vectorized"], default="sequential")
    parser.add_argument("--hidden", type=int, default=1000, help="MLP width (1000: 1.07M parameters, 4 MiB)")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(child(args.child, args.rounds, args.backend, args.hidden)))
        return

    rows = []
    for k in (int(v) for v in args.clients.split(",")):
        command = [sys.executable, __file__, "--child", str(k), "--rounds", str(args.rounds)]
        command += ["--backend", args.backend, "--hidden", str(args.hidden)]
        proc = subprocess.run(command, capture_output=True, text=True, check=True)
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    model_mb = rows[0]["model_mb"]
    print(f"\nFedAvg, {args.backend}, 100 clients per round, {args.rounds} timed rounds; model {model_mb:.1f} MiB")
    print(
        f"{'clients':>8} {'s/round':>8} {'cpu s/round':>11} {'data MiB':>9} {'RSS data':>9} "
        f"{'RSS sim+round 1':>16} {'peak in rounds - warm':>22}"
    )
    for r in rows:
        loaded = r["rss_data_mb"] - r["rss_base_mb"]
        sim_mb = r["rss_warm_mb"] - r["rss_data_mb"]
        working = r["peak_rss_rounds_mb"] - r["rss_warm_mb"]
        print(
            f"{r['clients']:>8} {r['seconds_per_round']:8.3f} {r['cpu_seconds_per_round']:11.3f} {r['data_mb']:9.1f} "
            f"{loaded:9.1f} {sim_mb:16.1f} {working:12.1f} ({working / model_mb:.1f}x model)"
        )
    print(
        "(MiB. 'RSS data': the federation in memory (tensors, client index lists); 'RSS sim+round 1': the\n"
        " simulation after its first round (models, optimizer and aggregator buffers, lazy imports);\n"
        " 'peak in rounds - warm': the most a timed round adds on top of that)"
    )


if __name__ == "__main__":
    main()
