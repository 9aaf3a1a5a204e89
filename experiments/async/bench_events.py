"""Scheduling must never be the bottleneck: the event handling of an asynchronous server against
the local training it schedules, with 10,000 clients and 100 training at once.

    python experiments/async/bench_events.py [--clients 10000] [--concurrency 100] [--buffer 10]
                                             [--steps 200] [--samples 50] [--hidden 200] [--threads 1]

FedBuff on a generated federation of `--clients` clients (`--samples` samples of 60 features each,
10 classes), an MLP 60-hidden-hidden-10, one local epoch of batch 10, log-normal device speeds
and bandwidths with per-job noise. The run is timed part by part, by wrapping the components:

    train      backend.train: the clients' local SGD (the floor any FL simulator pays)
    pipeline   pipeline.begin / accept / result / step_metrics, strategy.apply, the training
               statistics: aggregation and the server step (a synchronous round does the same)
    eval       the one evaluation after the last step
    events     everything else in the server loop: the event queue, dispatching (drawing idle
               clients, timing their jobs on the clock), staleness bookkeeping, the per-step clock
               metrics (utilization, idle time)

and prints events / train (the target is < 5%), with the per-event cost in microseconds. A
benchmark, not a test: the ratio depends on the machine and on how heavy local training is (the
second line shows a lighter model's worst case).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from fedtorch.asynchronous import AsynchronousSimulation
from fedtorch.client import LocalTrainer
from fedtorch.clock import distribution_clock
from fedtorch.data.base import DatasetSplits, FederatedDataset
from fedtorch.models import MLP
from fedtorch.servers import FedBuff
from fedtorch.simulation import RoundStats
from fedtorch.strategies import FedAvg


def federation(clients: int, samples: int) -> FederatedDataset:
    gen = torch.Generator().manual_seed(0)
    n = clients * samples
    x = torch.randn(n, 60, generator=gen)
    y = torch.randint(0, 10, (n,), generator=gen)
    data = DatasetSplits("generated", x, y, x[:1000], y[:1000], num_classes=10)
    order = np.arange(n).reshape(clients, samples)
    return FederatedDataset.from_partition(data, list(order))


class Timer:
    """Accumulated seconds of the wrapped calls (generators: the time spent producing their items)."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start

        return timed

    def wrap_generator(self, fn: Callable[..., Iterator[Any]]) -> Callable[..., Iterator[Any]]:
        def timed(*args: Any, **kwargs: Any) -> Iterator[Any]:
            iterator = fn(*args, **kwargs)
            while True:
                start = time.perf_counter()
                try:
                    item = next(iterator)
                except StopIteration:
                    self.seconds += time.perf_counter() - start
                    return
                self.seconds += time.perf_counter() - start
                yield item

        return timed


def measure(args: argparse.Namespace, hidden: int) -> dict[str, float]:
    torch.manual_seed(0)
    lognormal = {"kind": "lognormal", "median": 2.0, "sigma": 1.0}
    clock = distribution_clock(args.clients, 0, speed=lognormal, download=1.25e6, upload=2.5e5, noise=0.2)
    sim = AsynchronousSimulation(
        federation(args.clients, args.samples),
        MLP((60,), 10, hidden=[hidden, hidden]),
        FedAvg(),
        LocalTrainer(lr=0.05, epochs=1, batch_size=10),
        server=FedBuff(concurrency=args.concurrency, buffer_size=args.buffer),
        clock=clock,
        rounds=args.steps,
        eval_every=10**9,  # one evaluation, after the last step
    )
    train, pipeline, evaluation = Timer(), Timer(), Timer()
    sim.backend.train = train.wrap_generator(sim.backend.train)
    # What a synchronous round does as well: the pipeline's step, the server step, the statistics.
    for name in ("begin", "accept", "result", "step_metrics"):
        setattr(sim.pipeline, name, pipeline.wrap(getattr(sim.pipeline, name)))
    sim.strategy.apply = pipeline.wrap(sim.strategy.apply)
    sim.backend.reduce = pipeline.wrap(sim.backend.reduce)
    sim.training_metrics = pipeline.wrap(sim.training_metrics)
    sim.evaluate = evaluation.wrap(sim.evaluate)
    add, zeros = RoundStats.add, RoundStats.zeros
    RoundStats.add, RoundStats.zeros = pipeline.wrap(add), pipeline.wrap(zeros)
    try:
        start = time.perf_counter()
        for step in range(1, args.steps + 1):
            sim.run_round(step)
            sim.state.round = step
        total = time.perf_counter() - start
    finally:
        RoundStats.add, RoundStats.zeros = add, zeros
    events = total - train.seconds - pipeline.seconds - evaluation.seconds
    arrivals = args.steps * args.buffer
    return {
        "total": total,
        "train": train.seconds,
        "pipeline": pipeline.seconds,
        "eval": evaluation.seconds,
        "events": events,
        "ratio": events / train.seconds,
        "per_event_us": events / (2 * arrivals) * 1e6,  # an arrival and a dispatch per client update
        "per_client_ms": train.seconds / sim.dispatched * 1e3,
        "params": sim.flat.layout.num_params,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--buffer", type=int, default=10)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--samples", type=int, default=50)
    parser.add_argument("--hidden", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"FedBuff, {args.clients} clients, concurrency {args.concurrency}, buffer {args.buffer}, {args.steps} steps, "
        f"{args.samples} samples per client, batch 10, {args.threads} thread(s)"
    )
    for hidden in (args.hidden, 32):
        m = measure(args, hidden)
        print(
            f"MLP 60-{hidden}-{hidden}-10 ({m['params']:,} parameters): train {m['train']:.2f} s "
            f"({m['per_client_ms']:.2f} ms a client), pipeline {m['pipeline']:.2f} s, eval {m['eval']:.2f} s, "
            f"events {m['events']:.3f} s ({m['per_event_us']:.0f} us an event): events / train = {m['ratio']:.2%}"
        )


if __name__ == "__main__":
    main()
