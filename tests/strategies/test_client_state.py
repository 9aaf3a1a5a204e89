"""Per-client state: kept off the accelerator, synchronized across processes, and checkpointed so a
resumed run continues exactly."""

from __future__ import annotations

import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from fedtorch.client import LocalTrainer
from fedtorch.samplers import UniformSampler
from fedtorch.strategies import Ditto, FedDyn, FedPer, FedYogi, Scaffold
from fedtorch.strategies.client_state import ClientStateStore
from tests.strategies._federations import classification_federation, mlp_model, simulate


def test_store_keeps_copies_on_the_storage_device():
    store = ClientStateStore()
    value = torch.arange(3.0)
    store.put(4, value)
    value += 1  # the store holds a copy
    assert torch.equal(store.get(4, "cpu"), torch.arange(3.0)) and store.get(4, "cpu").device.type == "cpu"
    assert store.get(5, "cpu") is None and torch.equal(
        store.get(5, "cpu", default=lambda: torch.ones(1)), torch.ones(1)
    )
    assert 4 in store and 5 not in store and list(store) == [4]


def _sync_worker(rank: int, port: int, folder: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        store = ClientStateStore()
        store.put(0, torch.tensor([-1.0]))  # both processes knew client 0 before the round
        store._written.clear()
        store.put(10 + rank, torch.tensor([float(rank)]))  # this round: client 10 on rank 0, 11 on rank 1
        if rank == 1:
            store.put(0, torch.tensor([7.0]))  # and client 0 on rank 1
        store.sync()
        torch.save(store.state_dict(), f"{folder}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_sync_gives_every_process_the_entries_written_elsewhere(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_sync_worker, args=(port, str(tmp_path)), nprocs=2, join=True, start_method="fork")
    for rank in (0, 1):
        state = torch.load(tmp_path / f"rank{rank}.pt")["state"]
        assert {k: v.tolist() for k, v in state.items()} == {0: [7.0], 10: [0.0], 11: [1.0]}


@pytest.mark.parametrize(
    "make", [Scaffold, lambda: FedDyn(alpha=0.1), lambda: Ditto(lam=0.5), FedPer, lambda: FedYogi(server_lr=0.05)]
)
def test_resumed_run_continues_exactly(make):
    fed = classification_federation()

    def build():
        trainer = LocalTrainer(lr=0.1, epochs=1, batch_size=8)
        return simulate(fed, mlp_model(fed), make(), trainer, rounds=4, sampler=UniformSampler(3), run=False)

    straight = build()
    straight.run()
    first = build()
    first.rounds = 2
    first.run()
    resumed = build()
    resumed.load_state_dict(first.state_dict())
    resumed.run()
    assert resumed.state.round == 4
    assert torch.equal(resumed.global_vector, straight.global_vector)
    stores = [name for name, value in vars(straight.strategy).items() if isinstance(value, ClientStateStore)]
    for name in stores:
        a, b = getattr(straight.strategy, name), getattr(resumed.strategy, name)
        assert list(a) == list(b) and all(torch.equal(a.get(k, "cpu"), b.get(k, "cpu")) for k in a)
