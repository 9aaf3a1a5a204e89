"""fedtorch against the floor: the same local SGD in a bare torch loop, timed in the same process run.

The floor is what a researcher would write by hand: one model, `torch.optim.SGD`, a loop over the
sampled clients, their epochs and their minibatches (index gathers from resident tensors), and the
weighted average of the local models. It uses the same initial weights, the same sampled clients
and the same batch order as fedtorch, so both reach the same model (checked after round 1: max |dw|).

Workloads (McMahan et al. 2017, MNIST, IID split into 100 clients of 600 samples, E=1):
  cnn   the CNN (1,663,370 parameters), 10 clients per round, B=10: compute-bound
  2nn   the 2NN (199,210 parameters), 50 clients per round, B=50: overhead-dominated

Round r of every contestant runs back to back (their order rotating each round), so load from
other processes hits all of them alike; the first round is a warm-up and is not timed. The floor
runs twice ("floor-again"): its ratio to the floor is the noise of the measurement on this machine.

    python experiments/benchmarks/floor.py                                  # both workloads
    python experiments/benchmarks/floor.py --workload 2nn --rounds 10 --threads 2
    python experiments/benchmarks/floor.py --device cuda --backends floor,sequential,vectorized
    torchrun --nproc_per_node=2 experiments/benchmarks/floor.py --backends distributed
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from fedtorch.backends import DistributedBackend, SequentialBackend, VectorizedBackend  # noqa: E402
from fedtorch.backends import distributed as dist_helpers  # noqa: E402
from fedtorch.client import LocalTrainer  # noqa: E402
from fedtorch.data.base import DatasetSplits, FederatedDataset  # noqa: E402
from fedtorch.data.partitions import iid_partition  # noqa: E402
from fedtorch.models import CNN, MLP  # noqa: E402
from fedtorch.samplers import UniformSampler  # noqa: E402
from fedtorch.seeding import numpy_rng, torch_generator  # noqa: E402
from fedtorch.simulation import Simulation  # noqa: E402
from fedtorch.strategies import FedAvg  # noqa: E402


@dataclass(frozen=True)
class Workload:
    name: str
    model: Callable[[], nn.Module]
    clients_per_round: int
    batch_size: int
    rounds: int  # default timed rounds (kept small for a 2-core CPU)
    lr: float = 0.05
    epochs: int = 1
    num_clients: int = 100


WORKLOADS = {
    "cnn": Workload("cnn", lambda: CNN((1, 28, 28), 10), clients_per_round=10, batch_size=10, rounds=2),
    "2nn": Workload(
        "2nn", lambda: MLP((1, 28, 28), 10, hidden=(200, 200)), clients_per_round=50, batch_size=50, rounds=3
    ),
}


def load_data(kind: str) -> DatasetSplits:
    """Real MNIST from ../shared/data (or $FEDTORCH_DATA) when present, else random tensors of its shape."""
    root = Path(os.environ.get("FEDTORCH_DATA", REPO.parent / "shared" / "data"))
    if kind in ("auto", "mnist") and (root / "MNIST" / "raw").is_dir():
        from fedtorch.data.mnist import load_mnist

        return load_mnist(str(root))
    if kind == "mnist":
        raise SystemExit(f"--data mnist: no MNIST under {root}/MNIST/raw")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(70_000, 1, 28, 28, generator=gen)
    y = torch.randint(0, 10, (70_000,), generator=gen)
    return DatasetSplits("synthetic_mnist_shape", x[:60_000], y[:60_000], x[60_000:], y[60_000:], num_classes=10)


# -- the floor ------------------------------------------------------------------------------------
class Floor:
    """FedAvg by hand: no framework, just torch."""

    name = "floor"

    def __init__(self, w: Workload, fed: FederatedDataset, init: dict[str, Tensor], seed: int, device: torch.device):
        self.w, self.seed = w, seed
        self.x, self.y = fed.train_x.to(device), fed.train_y.to(device)
        self.clients = [ix.to(device) for ix in fed.client_indices]
        self.model = w.model().to(device)
        self.model.load_state_dict(init)
        self.global_params = [p.detach().clone() for p in self.model.parameters()]

    def run_round(self, round_idx: int) -> None:
        w = self.w
        ids = np.sort(numpy_rng(self.seed, "sampler", round_idx).choice(w.num_clients, w.clients_per_round, False))
        total = sum(len(self.clients[k]) for k in ids)
        new = [torch.zeros_like(p) for p in self.global_params]
        params = list(self.model.parameters())
        for k in ids:
            with torch.no_grad():
                for p, g in zip(params, self.global_params):
                    p.copy_(g)
            opt = torch.optim.SGD(params, lr=w.lr)
            idx = self.clients[k]
            n = len(idx)
            gen = torch_generator(self.seed, "batches", round_idx, int(k))
            for _ in range(w.epochs):
                order = idx[torch.randperm(n, generator=gen).to(idx.device)]
                for start in range(0, n, w.batch_size):
                    b = order[start : start + w.batch_size]
                    opt.zero_grad()
                    loss = F.cross_entropy(self.model(self.x[b]), self.y[b])
                    loss.backward()
                    opt.step()
            with torch.no_grad():
                for acc, p in zip(new, params):
                    acc.add_(p, alpha=n / total)
        self.global_params = new

    def weights(self) -> Tensor:
        return torch.cat([p.reshape(-1) for p in self.global_params])


class Fedtorch:
    """A fedtorch Simulation with the given backend, timed by `run_round` (evaluation switched off)."""

    def __init__(self, backend, w: Workload, fed: FederatedDataset, init: dict[str, Tensor], seed: int, device):
        self.name = backend.name
        model = w.model()
        model.load_state_dict(init)
        trainer = LocalTrainer(functools.partial(torch.optim.SGD), lr=w.lr, epochs=w.epochs, batch_size=w.batch_size)
        self.sim = Simulation(
            fed, model, FedAvg(), UniformSampler(w.clients_per_round), trainer,
            rounds=10**9, seed=seed, device=device, eval_every=10**9, backend=backend,
        )  # fmt: skip

    def run_round(self, round_idx: int) -> None:
        self.sim.run_round(round_idx)

    def weights(self) -> Tensor:
        return self.sim.global_vector


def make(name: str, w: Workload, fed, init, seed, device, chunk_size):
    if name in ("floor", "floor-again"):
        floor = Floor(w, fed, init, seed, device)
        floor.name = name  # a second floor measures the noise of the measurement itself
        return floor
    backend = {
        "sequential": SequentialBackend,
        "vectorized": functools.partial(VectorizedBackend, chunk_size),
        "distributed": DistributedBackend,
    }[name]()
    return Fedtorch(backend, w, fed, init, seed, device)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    if dist_helpers.world_size() > 1:
        torch.distributed.barrier()  # a distributed round ends when its slowest rank does


def bench(w: Workload, data: DatasetSplits, names: list[str], rounds: int, device, chunk_size) -> dict:
    seed = 0
    fed = FederatedDataset.from_partition(data, iid_partition(len(data.train_y), w.num_clients, numpy_rng(seed, "p")))
    torch.manual_seed(seed)
    init = {k: v.clone() for k, v in w.model().state_dict().items()}
    contestants = [make(n, w, fed, init, seed, device, chunk_size) for n in names]
    wall: dict[str, list[float]] = {c.name: [] for c in contestants}
    cpu: dict[str, list[float]] = {c.name: [] for c in contestants}
    for round_idx in range(1, rounds + 2):
        shift = round_idx % len(contestants)
        for c in contestants[shift:] + contestants[:shift]:
            sync(device)
            start, start_cpu = time.perf_counter(), time.process_time()
            c.run_round(round_idx)
            sync(device)
            if round_idx > 1:  # round 1 warms up (allocations, lazy imports, vmap set-up)
                wall[c.name].append(time.perf_counter() - start)
                cpu[c.name].append(time.process_time() - start_cpu)
        if round_idx == 1:
            # Same work: after one round every contestant holds (nearly) the floor's model. Later
            # rounds drift apart chaotically (a ReLU or max-pool tie flipped by a rounding
            # difference of 1e-7), so the check is made here.
            first = contestants[0].weights()
            same_work = {c.name: float((c.weights() - first).abs().max()) for c in contestants}
    result = {"workload": w.name, "data": data.name, "rounds": rounds, "threads": torch.get_num_threads()}
    result["world_size"] = dist_helpers.world_size()
    result["max_abs_diff_round1"] = same_work
    result["seconds_per_round"] = {name: float(np.median(t)) for name, t in wall.items()}
    result["cpu_seconds_per_round"] = {name: float(np.median(t)) for name, t in cpu.items()}
    if "floor" in wall:
        # Per-round ratios (the contestants of a round ran back to back), then their median:
        # robust to a burst of load from other processes during one round. CPU time (of this
        # process) is the steadier measure on a shared machine when it runs one thread.
        for key, times in (("x_floor", wall), ("cpu_x_floor", cpu)):
            floor = np.asarray(times["floor"])
            result[key] = {name: float(np.median(np.asarray(t) / floor)) for name, t in times.items()}
    return result


def report(result: dict) -> None:
    ratios, cpu_ratios = result.get("x_floor", {}), result.get("cpu_x_floor", {})
    print(f"\n{result['workload']} on {result['data']}: {result['rounds']} timed rounds, {result['threads']} thread(s)")
    print(f"{'':12} {'s/round':>9} {'x floor':>8} {'cpu s/round':>12} {'cpu x floor':>12} {'round-1 max|dw|':>16}")
    for name, seconds in result["seconds_per_round"].items():
        ratio = f"{ratios[name]:8.3f}" if name in ratios else f"{'-':>8}"
        cpu_ratio = f"{cpu_ratios[name]:12.3f}" if name in cpu_ratios else f"{'-':>12}"
        cpu_seconds = result["cpu_seconds_per_round"][name]
        diff = result["max_abs_diff_round1"][name]
        print(f"{name:12} {seconds:9.3f} {ratio} {cpu_seconds:12.3f} {cpu_ratio} {diff:16.2e}")
    print("(medians over rounds; ratios are medians of per-round ratios)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", choices=["cnn", "2nn", "all"], default="all")
    parser.add_argument("--data", choices=["auto", "mnist", "synthetic"], default="auto")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds (default: 2 for cnn, 3 for 2nn)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1: stable on shared CPUs)")
    parser.add_argument(
        "--backends",
        default="floor,floor-again,sequential,vectorized",
        help="contestants; floor-again (the floor run twice) shows how much of a ratio is noise",
    )
    parser.add_argument("--chunk-size", type=int, default=None, help="vectorized backend's chunk (default: round)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", action="store_true", help="also print each result as one JSON line")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    names = args.backends.split(",")
    if dist_helpers.launched_by_torchrun():
        device = dist_helpers.init_process_group(device)
        names = ["distributed"]
    data = load_data(args.data)
    workloads = list(WORKLOADS) if args.workload == "all" else [args.workload]
    for name in workloads:
        w = WORKLOADS[name]
        result = bench(w, data, names, args.rounds or w.rounds, device, args.chunk_size)
        if dist_helpers.is_main_process():
            report(result)
            if args.json:
                print("JSON " + json.dumps(result), flush=True)
    dist_helpers.shutdown()


if __name__ == "__main__":
    main()
