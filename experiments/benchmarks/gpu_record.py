"""The GPU record: the floor, fedtorch sequential, fedtorch vectorized and pfl-research 0.6 side by side.

Three workloads on MNIST-shaped data (McMahan et al. 2017: 100 clients of 600 samples, IID, E=1,
plain SGD lr 0.05, FedAvg):

  2nn_b10   the 2NN (784-200-200-10), 100 clients per round, B=10: 6000 small steps per round
  2nn_b50   the 2NN, 100 clients per round, B=50: 1200 steps per round
  cnn_b10   McMahan's CNN (1,663,370 parameters), 10 clients per round, B=10: 600 steps per round

The data is real MNIST when `--data mnist` finds it ($FEDTORCH_DATA), else fedtorch's generated
images of MNIST's shape (`fedtorch.data.generated.SyntheticImages`, 60,000 train samples, resident
on the device like MNIST would be): the GPU machine needs no data files. The floor (the hand-written
torch loop of `floor.py`), sequential and vectorized run round by round in a rotating order, in one
process, from the same initial weights, clients and batches (`floor.bench`). pfl runs afterwards in
its own block of rounds (it owns its loop), timed per central iteration by a pfl callback, from the
same initial weights, with its users' data pre-sliced on the device (`PyTorchTensorDataset`), its
own uniform user sampling and its own in-order batches: pfl's best case. Every timing synchronizes
the device first.

Goals (issue 14): vectorized >= 3x faster than pfl on the 2NN and >= 2x on the CNN; sequential
within 1.05x the floor. The table prints each ratio and whether the goal holds.

    python experiments/benchmarks/gpu_record.py                         # on a GPU: all workloads
    python experiments/benchmarks/gpu_record.py --device cpu --rounds 1 --workloads 2nn_b50
    experiments/benchmarks/gpu_record.sh run --rounds 5                 # installs pfl's wheels first

pfl is optional: when it cannot be imported the record runs without it and says why. Results go to
stdout and, with `--out FILE`, one JSON line per workload.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import types
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE))


def stub_tensorboard_if_missing() -> str | None:
    """fedtorch's callbacks import torch.utils.tensorboard, which needs the tensorboard package; the
    record logs nothing there, so a GPU machine without it gets a stub. Returns a note, or None."""
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        module = types.ModuleType("torch.utils.tensorboard")
        module.SummaryWriter = object  # type: ignore[attr-defined]
        summary = types.ModuleType("torch.utils.tensorboard.summary")
        summary.hparams = None  # type: ignore[attr-defined]
        module.summary = summary  # type: ignore[attr-defined]
        sys.modules["torch.utils.tensorboard"] = module
        sys.modules["torch.utils.tensorboard.summary"] = summary
        return "tensorboard is not installed: a stub stands in for it (the record logs nothing there)"
    return None


TB_NOTE = stub_tensorboard_if_missing()

import floor  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from fedtorch.data.base import DatasetSplits  # noqa: E402
from fedtorch.data.partitions import iid_partition  # noqa: E402
from fedtorch.models import CNN, MLP  # noqa: E402
from fedtorch.seeding import numpy_rng  # noqa: E402

WORKLOADS = {
    "2nn_b10": floor.Workload("2nn_b10", lambda: MLP((1, 28, 28), 10, hidden=(200, 200)), 100, 10, rounds=5),
    "2nn_b50": floor.Workload("2nn_b50", lambda: MLP((1, 28, 28), 10, hidden=(200, 200)), 100, 50, rounds=5),
    "cnn_b10": floor.Workload("cnn_b10", lambda: CNN((1, 28, 28), 10), 10, 10, rounds=5),
}
#: (workload prefix, contestant, goal): "faster" goals are pfl's time / vectorized's time.
GOALS = {"2nn": 3.0, "cnn": 2.0}
SEQUENTIAL_GOAL = 1.05


def mnist_shaped(kind: str) -> DatasetSplits:
    """Real MNIST (when asked for and present), else 100 x 600 generated images of MNIST's shape."""
    if kind == "mnist":
        return floor.load_data("mnist")
    from fedtorch.data.generated import GeneratedFederation, SyntheticImages

    fed = GeneratedFederation.create(
        SyntheticImages(num_clients=100, samples_per_client=600, test_samples_per_client=100)
    )
    eager = fed.materialize()
    return DatasetSplits("synthetic_images", eager.train_x, eager.train_y, eager.test_x, eager.test_y, num_classes=10)


# -- pfl-research ------------------------------------------------------------------------------------
def import_pfl(device: torch.device) -> tuple[object | None, str | None]:
    """pfl's modules, or (None, why not)."""
    os.environ["PFL_PYTORCH_DEVICE"] = str(device)  # pfl picks its device from this variable
    try:
        import pfl
        from pfl.aggregate.simulate import SimulatedBackend
        from pfl.algorithm import FederatedAveraging, NNAlgorithmParams
        from pfl.callback.base import TrainingProcessCallback
        from pfl.data.federated_dataset import FederatedDataset
        from pfl.data.pytorch import PyTorchTensorDataset
        from pfl.data.sampling import get_user_sampler
        from pfl.hyperparam import NNEvalHyperParams, NNTrainHyperParams
        from pfl.metrics import Metrics, Weighted
        from pfl.model.pytorch import PyTorchModel
    except Exception as error:  # ImportError, or a dependency that fails to load
        why = f"{type(error).__name__}: {error}"
        return None, (
            f"pfl-research is not importable ({why}); install pfl==0.6.* (on a machine without a registry: "
            "experiments/benchmarks/gpu_record.sh download, then gpu_record.sh run)"
        )
    version = getattr(pfl, "__version__", "?")
    if not str(version).startswith("0.6"):
        return None, f"pfl-research {version} is installed; the record compares against 0.6"
    modules = types.SimpleNamespace(
        SimulatedBackend=SimulatedBackend,
        FederatedAveraging=FederatedAveraging,
        NNAlgorithmParams=NNAlgorithmParams,
        TrainingProcessCallback=TrainingProcessCallback,
        FederatedDataset=FederatedDataset,
        PyTorchTensorDataset=PyTorchTensorDataset,
        get_user_sampler=get_user_sampler,
        NNEvalHyperParams=NNEvalHyperParams,
        NNTrainHyperParams=NNTrainHyperParams,
        Metrics=Metrics,
        Weighted=Weighted,
        PyTorchModel=PyTorchModel,
        version=version,
    )
    return modules, None


class PflModule(nn.Module):
    """A fedtorch model with the `loss` and `metrics` methods pfl's PyTorchModel requires."""

    def __init__(self, inner: nn.Module, weighted: type) -> None:
        super().__init__()
        self.inner, self._weighted = inner, weighted

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)

    def loss(self, x: torch.Tensor, y: torch.Tensor, eval: bool = False) -> torch.Tensor:  # noqa: A002
        return F.cross_entropy(self(x), y)

    @torch.no_grad()
    def metrics(self, x: torch.Tensor, y: torch.Tensor, eval: bool = False) -> dict:  # noqa: A002
        return {"loss": self._weighted(float(F.cross_entropy(self(x), y, reduction="sum")), len(y))}


def run_pfl(pfl, w: floor.Workload, data: DatasetSplits, rounds: int, device: torch.device) -> list[float]:
    """Seconds of each of `rounds` central iterations of pfl's FedAvg (after one warm-up iteration)."""
    import logging

    logging.getLogger("pfl").setLevel(logging.WARNING)
    partition = iid_partition(len(data.train_y), w.num_clients, numpy_rng(0, "p"))
    x, y = data.train_x.to(device), data.train_y.to(device)
    users = []
    for k, ix in enumerate(partition):
        rows = torch.tensor(ix, device=device)  # a copy: the partition's arrays are read-only
        users.append(pfl.PyTorchTensorDataset((x[rows], y[rows]), user_id=str(k)))
    np.random.seed(0)  # pfl's 'random' user sampler draws from numpy's global stream
    federation = pfl.FederatedDataset(lambda uid: users[uid], pfl.get_user_sampler("random", list(range(len(users)))))
    torch.manual_seed(0)
    inner = w.model()  # the same initial weights as the floor (floor.bench seeds 0 too)
    module = PflModule(inner, pfl.Weighted).to(device)
    model = pfl.PyTorchModel(
        module, local_optimizer_create=torch.optim.SGD, central_optimizer=torch.optim.SGD(module.parameters(), lr=1.0)
    )
    stamps: list[float] = []

    def sync_time() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter()

    class Timer(pfl.TrainingProcessCallback):
        def on_train_begin(self, *, model):  # noqa: ANN001, ANN202
            stamps.append(sync_time())
            return pfl.Metrics()

        def after_central_iteration(self, aggregate_metrics, model, *, central_iteration):  # noqa: ANN001, ANN202
            stamps.append(sync_time())
            return False, pfl.Metrics()

    pfl.FederatedAveraging().run(
        algorithm_params=pfl.NNAlgorithmParams(
            central_num_iterations=rounds + 1,
            evaluation_frequency=10**9,
            train_cohort_size=w.clients_per_round,
            val_cohort_size=None,
        ),
        backend=pfl.SimulatedBackend(training_data=federation, val_data=None),
        model=model,
        model_train_params=pfl.NNTrainHyperParams(
            local_num_epochs=w.epochs, local_learning_rate=w.lr, local_batch_size=w.batch_size
        ),
        model_eval_params=pfl.NNEvalHyperParams(local_batch_size=1000),
        callbacks=[Timer()],
        send_metrics_to_platform=False,
    )
    return np.diff(stamps)[1:].tolist()  # the first iteration warms up


# -- the record ---------------------------------------------------------------------------------------
def record(w: floor.Workload, data: DatasetSplits, rounds: int, device: torch.device, pfl, chunk: int | None) -> dict:
    result = floor.bench(w, data, ["floor", "sequential", "vectorized"], rounds, device, chunk)
    if pfl is not None:
        pfl_times = run_pfl(pfl, w, data, rounds, device)
        result["seconds_per_round"]["pfl"] = float(np.median(pfl_times))
        result["x_floor"]["pfl"] = result["seconds_per_round"]["pfl"] / result["seconds_per_round"]["floor"]
    return result


def goals(result: dict) -> list[str]:
    lines = []
    seconds = result["seconds_per_round"]
    sequential = result["x_floor"]["sequential"]
    met = "met" if sequential <= SEQUENTIAL_GOAL else "not met"
    lines.append(f"sequential {sequential:.3f}x the floor (goal <= {SEQUENTIAL_GOAL}): {met}")
    if "pfl" in seconds:
        goal = GOALS[result["workload"][:3]]
        speedup = seconds["pfl"] / seconds["vectorized"]
        lines.append(
            f"vectorized {speedup:.2f}x faster than pfl (goal >= {goal}): {'met' if speedup >= goal else 'not met'}"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--workloads", default=",".join(WORKLOADS), help=f"any of {', '.join(WORKLOADS)}")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds per contestant (default 5)")
    parser.add_argument("--data", choices=["synthetic", "mnist"], default="synthetic")
    parser.add_argument("--no-pfl", action="store_true", help="skip pfl-research")
    parser.add_argument("--chunk-size", type=int, default=None, help="vectorized backend's chunk (default: the round)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--out", default=None, help="append one JSON line per workload to this file")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    pfl, why = (None, "--no-pfl") if args.no_pfl else import_pfl(device)
    environment = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "pfl": None if pfl is None else pfl.version,
    }
    print(
        f"GPU record on {device} ({environment['device']}), torch {torch.__version__}, Python {environment['python']}"
    )
    for note in (TB_NOTE, None if pfl is not None else f"pfl-research skipped: {why}"):
        if note:
            print(f"note: {note}")
    data = mnist_shaped(args.data)
    for name in args.workloads.split(","):
        w = WORKLOADS[name]
        result = record(w, data, args.rounds or w.rounds, device, pfl, args.chunk_size)
        result["environment"] = environment
        floor_seconds = result["seconds_per_round"]["floor"]
        print(
            f"\n{name} on {data.name}: {result['rounds']} timed rounds, {w.clients_per_round} clients/round, "
            f"B={w.batch_size}"
        )
        print(f"{'':12} {'s/round':>9} {'x floor':>8} {'floor / it':>11}")
        for contestant, seconds in result["seconds_per_round"].items():
            print(f"{contestant:12} {seconds:9.4f} {seconds / floor_seconds:8.3f} {floor_seconds / seconds:11.2f}")
        for line in goals(result):
            print(f"  {line}")
        if args.out:
            with open(args.out, "a") as handle:
                handle.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
