"""Scale: a round's cost, the memory and the set-up time of a run with 100 to 10,000,000 clients.

Every client holds the same work whatever the size K of the federation (10 train samples of 60
features, one local step of B=10), 100 clients train per round, and only K changes. Three kinds of
federation, each K in a fresh process (so its peak RSS is its own):

  generated  FedProx Synthetic(1, 1) generated device by device when sampled (`lazy=true`,
             `max_samples_per_device=13`: 10 train + 3 test); up to 1e7 clients
  index      an in-memory tensor dataset of 10 K samples, IID-partitioned into K clients (CSR index);
             the data is resident, so it is all "touched"
  mapped     the same kind of data written once by `write_prepared` (the `prepare` step, timed
             apart) and memory-mapped: a round reads its cohort's rows only

A round should cost the same for any K (sampling O(cohort), clients materialized when sampled,
nothing in the loop touches all clients), memory should be the data touched plus a fixed overhead
plus a small multiple of the model (the worker model, the global vector, the float64 running sum,
one client delta), never a model per client, and set-up (generation or mapping, partition, index,
simulation) should stay under 30 s at a million clients on 2 CPU cores.

`--strategy scaffold` runs SCAFFOLD with its control variates in a `ClientStateStore` that spills to
disk beyond `--state-mb` of memory, and prints the store's disk footprint.

    python experiments/benchmarks/scale.py                                     # generated, K = 1e2 .. 1e7
    python experiments/benchmarks/scale.py --kind index,mapped --clients 100,10000,100000,1000000
    python experiments/benchmarks/scale.py --clients 1000000 --strategy scaffold --hidden 200 --rounds 10
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SAMPLES = 10  # train samples per client
FEATURES = 60


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


def rss_file_mb() -> float:
    """The file-backed part of the RSS (MiB): pages of memory-mapped files (a prepared folder, the
    client-state row files) that the kernel may drop at any time, unlike the heap."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("RssFile:"):
                return int(line.split()[1]) / 1024
    return 0.0


def reset_peak_rss() -> None:
    """Start a new peak-RSS window (Linux: writing 5 to clear_refs resets VmHWM)."""
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")


def trim() -> None:
    """Hand freed heap back to the OS, so RSS shows what is held, not what was once allocated."""
    ctypes.CDLL("libc.so.6").malloc_trim(0)


def in_memory(num_clients: int, seed: int = 0):
    """10 K samples of 60 features with labels from a random linear teacher, IID over K clients."""
    import numpy as np
    import torch

    from fedtorch.data.base import DatasetSplits, FederatedDataset
    from fedtorch.data.partitions import iid_partition

    gen = torch.Generator().manual_seed(seed)
    n = SAMPLES * num_clients
    x = torch.randn(n + 2000, FEATURES, generator=gen)
    teacher = torch.randn(FEATURES, 10, generator=gen)
    y = (x @ teacher).argmax(1)
    data = DatasetSplits("scale_index", x[:n], y[:n], x[n:], y[n:], num_classes=10)
    return FederatedDataset.from_partition(data, iid_partition(n, num_clients, np.random.default_rng(seed)))


def generated(num_clients: int):
    from fedtorch.data.synthetic import load_fedprox_synthetic

    return load_fedprox_synthetic(num_devices=num_clients, lazy=True, max_samples_per_device=SAMPLES + 3)


def prepare_folder(num_clients: int, folder: Path) -> dict:
    """The prepared folder of the `index` data of K clients (written client by client)."""
    from fedtorch.data.prepared import write_prepared

    start = time.perf_counter()
    fed = in_memory(num_clients)
    write_prepared(fed, folder, checksum=False)
    size = sum(p.stat().st_size for p in folder.iterdir())
    return {"prepare_seconds": time.perf_counter() - start, "prepared_bytes": size}


def child(args: argparse.Namespace) -> dict:
    sys.path.insert(0, str(REPO))
    import numpy as np
    import torch

    from fedtorch.client import LocalTrainer
    from fedtorch.client_state import ClientStateStore
    from fedtorch.data.base import FederatedDataset
    from fedtorch.data.prepared import load_prepared
    from fedtorch.models import MLP
    from fedtorch.samplers import UniformSampler
    from fedtorch.simulation import Simulation
    from fedtorch.strategies import FedAvg, Scaffold

    torch.set_num_threads(1)
    trim()
    base, base_file = rss_mb(), rss_file_mb()
    start = time.perf_counter()
    if args.kind == "generated":
        fed = generated(args.clients)
    elif args.kind == "index":
        fed = in_memory(args.clients)
    else:
        fed = load_prepared(args.folder)
    federation_seconds = time.perf_counter() - start
    resident = 0
    if isinstance(fed, FederatedDataset):
        resident = sum(t.numel() * t.element_size() for t in (fed.train_x, fed.train_y))
        resident += fed.client_indices.values.numel() * 8 + fed.client_indices.offsets.nbytes
    resident += sum(t.numel() * t.element_size() for t in (fed.test_x, fed.test_y)) + fed.client_sizes().nbytes
    trim()
    loaded = rss_mb()

    torch.manual_seed(0)
    model = MLP(fed.input_shape, fed.num_classes, hidden=(args.hidden, args.hidden))
    trainer = LocalTrainer(lr=0.05, epochs=1, batch_size=10)
    state_dir = None
    if args.strategy == "scaffold":
        strategy = Scaffold()
        state_dir = Path(tempfile.mkdtemp(prefix="fedtorch_scale_state_", dir=args.state_root))
        store = ClientStateStore(path=state_dir, memory_bytes=int(args.state_mb * 2**20))
    else:
        strategy, store = FedAvg(), None
    backend = None
    if args.backend == "vectorized":
        from fedtorch.backends import VectorizedBackend

        backend = VectorizedBackend()
    sim_start = time.perf_counter()
    sim = Simulation(
        fed, model, strategy, UniformSampler(args.cohort), trainer, rounds=10**9, eval_every=10**9,
        backend=backend, client_state=store,
    )  # fmt: skip
    setup_seconds = time.perf_counter() - start
    sim_seconds = time.perf_counter() - sim_start
    del fed  # the simulation holds the federation
    wall, cpu = [], []
    for round_idx in range(1, args.rounds + 2):
        t0, c0 = time.perf_counter(), time.process_time()
        sim.run_round(round_idx)
        if round_idx == 1:  # a warm-up round: lazy imports, allocator pools; then a fresh peak window
            trim()
            warm = rss_mb()
            reset_peak_rss()
        else:
            wall.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
    model_bytes = sim.flat.layout.size * 4
    out = {
        "kind": args.kind,
        "clients": args.clients,
        "strategy": args.strategy,
        "backend": sim.backend.name,
        "seconds_per_round": float(np.median(wall)),
        "cpu_seconds_per_round": float(np.median(cpu)),
        "federation_seconds": federation_seconds,
        "simulation_seconds": sim_seconds,
        "setup_seconds": setup_seconds,
        "resident_mb": resident / 2**20,
        "touched_per_round_mb": args.cohort * SAMPLES * (FEATURES * 4 + 8) / 2**20,
        "model_mb": model_bytes / 2**20,
        "rss_base_mb": base,
        "rss_data_mb": loaded,
        "rss_warm_mb": warm,
        "peak_rss_rounds_mb": peak_rss_mb(),
        # Mapped pages the run added (set-up and rounds): on a freshly written file the page cache holds large
        # folios, and a page fault maps a whole folio, so reading a client's few rows can map
        # megabytes of file pages. They count in RSS but are reclaimable page cache, not memory the
        # run holds; the bound below is checked on the rest.
        "rss_file_growth_mb": max(rss_file_mb() - base_file, 0.0),
    }
    if store is not None:
        out["state_disk_mb"] = store.disk_bytes() / 2**20
        out["state_clients"] = len(store.clients("c"))
        out["state_memory_mb"] = store._memory_used / 2**20
        shutil.rmtree(state_dir, ignore_errors=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kind", default="generated", help="generated, index, mapped (comma-separated)")
    parser.add_argument("--clients", default=None, help="federation sizes (default: 1e2,1e4,1e5,1e6 (+1e7 generated))")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds (after one warm-up round)")
    parser.add_argument("--cohort", type=int, default=100, help="clients per round")
    parser.add_argument("--strategy", choices=["fedavg", "scaffold"], default="fedavg")
    parser.add_argument("--backend", choices=["sequential", "vectorized"], default="sequential")
    parser.add_argument("--hidden", type=int, default=1000, help="MLP width (1000: 1.07M parameters, 4 MiB)")
    parser.add_argument("--state-mb", type=float, default=64.0, help="SCAFFOLD: client state kept in memory")
    parser.add_argument("--state-root", default=None, help="SCAFFOLD: where the store spills (default: tmp)")
    parser.add_argument("--prepared-root", default=None, help="mapped: where prepared folders go (default: tmp)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--folder", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.clients = int(args.clients)
        print(json.dumps(child(args)))
        return

    rows = []
    for kind in args.kind.split(","):
        sizes = args.clients or ("100,10000,100000,1000000" + (",10000000" if kind == "generated" else ""))
        for k in (int(float(v)) for v in sizes.split(",")):
            command = [sys.executable, __file__, "--child", "--kind", kind, "--clients", str(k)]
            for flag in ("rounds", "cohort", "strategy", "backend", "hidden", "state_mb"):
                command += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
            if args.state_root:
                command += ["--state-root", args.state_root]
            extra: dict = {}
            folder = None
            if kind == "mapped":
                sys.path.insert(0, str(REPO))
                folder = Path(tempfile.mkdtemp(prefix="fedtorch_scale_prepared_", dir=args.prepared_root))
                extra = prepare_folder(k, folder)
                command += ["--folder", str(folder)]
            proc = subprocess.run(command, capture_output=True, text=True)
            if folder is not None:
                shutil.rmtree(folder, ignore_errors=True)
            if proc.returncode != 0:
                print(proc.stderr[-3000:], file=sys.stderr)
                raise SystemExit(f"{kind} K={k} failed")
            row = json.loads(proc.stdout.strip().splitlines()[-1]) | extra
            rows.append(row)
            print("JSON " + json.dumps(row), flush=True)
    report(rows, args)


def report(rows: list[dict], args: argparse.Namespace) -> None:
    model_mb = rows[0]["model_mb"]
    print(
        f"\n{args.strategy}, {args.backend}, {args.cohort} clients per round of {SAMPLES} samples, {args.rounds} "
        f"timed rounds; model {model_mb:.2f} MiB; 1 thread"
    )
    head = (
        f"{'kind':>9} {'clients':>9} {'s/round':>8} {'cpu s/rnd':>9} {'x K=min':>7} {'setup s':>8} "
        f"{'resident':>9} {'RSS data':>9} {'sim+rnd1':>9} {'peak-warm':>10} {'file':>7} {'bound':>7}"
    )
    print(head)
    first: dict[str, float] = {}
    for r in rows:
        first.setdefault(r["kind"], r["cpu_seconds_per_round"])
        data = r["rss_data_mb"] - r["rss_base_mb"]
        sim = r["rss_warm_mb"] - r["rss_data_mb"]
        working = r["peak_rss_rounds_mb"] - r["rss_warm_mb"]
        # The bound: data touched + 200 MiB + 4 x cohort x model (a generous "small multiple").
        touched = r["resident_mb"] + r["touched_per_round_mb"]
        bound = touched + 200 + 4 * model_mb
        file_growth = r.get("rss_file_growth_mb", 0.0)
        peak = r["peak_rss_rounds_mb"] - r["rss_base_mb"] - file_growth
        print(
            f"{r['kind']:>9} {r['clients']:>9} {r['seconds_per_round']:8.3f} {r['cpu_seconds_per_round']:9.3f} "
            f"{r['cpu_seconds_per_round'] / first[r['kind']]:7.3f} {r['setup_seconds']:8.2f} {r['resident_mb']:9.1f} "
            f"{data:9.1f} {sim:9.1f} {working:10.1f} {file_growth:7.1f} {'ok' if peak <= bound else 'OVER':>7}"
        )
        if "state_disk_mb" in r:
            print(
                f"{'':>9} SCAFFOLD state: {r['state_clients']} clients' control variates, "
                f"{r['state_memory_mb']:.1f} MiB in memory, {r['state_disk_mb']:.1f} MiB on disk"
            )
        if "prepare_seconds" in r:
            print(f"{'':>9} prepare step: {r['prepare_seconds']:.1f} s, {r['prepared_bytes'] / 2**20:.0f} MiB on disk")
    print(
        "(MiB. 'x K=min': CPU time per round against the smallest K of its kind; 'setup s': federation\n"
        " (generation / mapping, partition, index) + simulation set-up; 'resident': train data held in\n"
        " memory (index) + test set + sizes; 'RSS data': RSS the federation added; 'sim+rnd1': the\n"
        " simulation after a warm-up round; 'peak-warm': the most a timed round adds; 'file': the memory-\n"
        " mapped file pages the run added (reclaimable page cache, in the columns before); 'bound': peak RSS over\n"
        " the process's start, less those pages, <= resident + a round's data + 200 MiB + 4 x model)"
    )


if __name__ == "__main__":
    main()
