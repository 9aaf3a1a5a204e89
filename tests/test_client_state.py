"""Per-client state: kept off the accelerator, synchronized across processes, and checkpointed so a
resumed run continues exactly."""

from __future__ import annotations

import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from fedtorch.client import LocalTrainer
from fedtorch.client_state import ClientStateStore
from fedtorch.samplers import UniformSampler
from fedtorch.strategies import Ditto, FedDyn, FedPer, FedYogi, Scaffold
from tests.strategies._federations import classification_federation, mlp_model, simulate


def test_store_keeps_copies_on_the_storage_device():
    store = ClientStateStore()
    value = torch.arange(3.0)
    store.put(4, "c", value)
    value += 1  # the store holds a copy
    assert torch.equal(store.get(4, "c", "cpu"), torch.arange(3.0)) and store.get(4, "c", "cpu").device.type == "cpu"
    assert store.get(5, "c", "cpu") is None and torch.equal(
        store.get(5, "c", "cpu", default=lambda: torch.ones(1)), torch.ones(1)
    )
    assert store.has(4, "c") and not store.has(5, "c") and not store.has(4, "head") and store.clients("c") == [4]
    # One client's handle sees its own entries only.
    store.put(5, "head", torch.zeros(2))
    mine = store.of(4, "cpu")
    assert "c" in mine and "head" not in mine and list(mine) == ["c"] and mine.get("head") is None


def _sync_worker(rank: int, port: int, folder: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        store = ClientStateStore()
        store.put(0, "c", torch.tensor([-1.0]))  # both processes knew client 0 before the round
        store._written.clear()
        store.put(10 + rank, "c", torch.tensor([float(rank)]))  # this round: client 10 on rank 0, 11 on rank 1
        if rank == 1:
            store.put(0, "c", torch.tensor([7.0]))  # and client 0 on rank 1
        store.merge()
        torch.save(store.state_dict(), f"{folder}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_sync_gives_every_process_the_entries_written_elsewhere(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_sync_worker, args=(port, str(tmp_path)), nprocs=2, join=True, start_method="fork")
    for rank in (0, 1):
        state = torch.load(tmp_path / f"rank{rank}.pt")["entries"]["c"]
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
    a, b = straight.runner.state, resumed.runner.state
    assert a.names() == b.names()
    for name in a.names():
        assert a.clients(name) == b.clients(name) and a.clients(name)
        assert all(torch.equal(a.get(k, name, "cpu"), b.get(k, name, "cpu")) for k in a.clients(name))
