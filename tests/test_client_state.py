"""Per-client state: kept off the accelerator, synchronized across processes, and checkpointed so a
resumed run continues exactly."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from fedtorch.client import LocalTrainer
from fedtorch.client_state import ClientStateStore
from fedtorch.errors import OptionError
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


# -- the store on disk: bounded memory, memory-mapped spill, checkpoints that survive a crash ----------


def _rows(n: int, size: int = 6, seed: int = 0) -> dict[int, torch.Tensor]:
    """n distinct float32 rows for distinct, sparse client ids (up to ~1e6)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randperm(1_000_000, generator=g)[:n].tolist()
    return {k: torch.randn(size, generator=g) for k in ids}


def test_disk_store_keeps_memory_bounded_and_reads_back_every_row_exactly(tmp_path):
    rows = _rows(300)
    row_bytes = 6 * 4
    store = ClientStateStore(path=tmp_path / "state", memory_bytes=20 * row_bytes)
    for k, v in rows.items():
        store.put(k, "c", v)
        assert store._memory_used <= 20 * row_bytes  # never more than the budget in memory
    assert len(store._memory) == 20 and (tmp_path / "state" / "overlay" / "c.rows").is_file()
    assert store.clients("c") == sorted(rows) and len(store) == 300 and store.names() == ["c"]
    for k, v in rows.items():
        assert store.has(k, "c") and torch.equal(store.get(k, "c", "cpu"), v)
    assert not store.has(1_000_001, "c") and store.get(1_000_001, "c", "cpu") is None
    # Client ids up to 1e6 cost a slot table of 8 bytes per id, allocated sparsely, plus one row each.
    assert store.disk_bytes() < 300 * row_bytes + 8 * 1_000_000
    with pytest.raises(ValueError, match="fixed-size rows"):
        store.put(5, "c", torch.zeros(7))


def _scaffold_sim(fed, store, rounds):
    trainer = LocalTrainer(lr=0.1, epochs=1, batch_size=8)
    sim = simulate(fed, mlp_model(fed), Scaffold(), trainer, rounds=rounds, sampler=UniformSampler(3), run=False)
    sim.runner.state = store  # the store the strategy's clients read and write
    return sim


def _checkpoint(sim) -> dict:
    """What a checkpoint file holds: the state dict, serialized and read back."""
    import io

    buffer = io.BytesIO()
    torch.save(sim.state_dict(), buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def test_disk_store_resumes_bit_exact_after_a_crash_between_checkpoints(tmp_path):
    fed = classification_federation(num_clients=8)
    straight = _scaffold_sim(fed, ClientStateStore(), rounds=7)
    straight.run()

    # The run to kill: every row spills (memory 0); a checkpoint after round 3, then rounds 4-5 write
    # new rows to the files, then the process dies (the object is abandoned, nothing is flushed).
    folder = tmp_path / "client_state"
    doomed = _scaffold_sim(fed, ClientStateStore(path=folder, memory_bytes=0), rounds=3)
    doomed.run()
    saved = _checkpoint(doomed)
    assert "generation" in saved["client_state"]  # the disk form: only the rows since the last commit
    doomed.rounds = 5
    doomed.run()
    del doomed

    resumed = _scaffold_sim(fed, ClientStateStore(path=folder, memory_bytes=0, fresh=False), rounds=7)
    resumed.load_state_dict(saved)
    resumed.run()
    assert torch.equal(resumed.global_vector, straight.global_vector)
    a, b = straight.runner.state, resumed.runner.state
    assert a.clients("c") == b.clients("c") and a.clients("c")
    assert all(torch.equal(a.get(k, "c", "cpu"), b.get(k, "c", "cpu")) for k in a.clients("c"))


def test_disk_store_resumes_after_a_crash_in_the_middle_of_a_commit(tmp_path, monkeypatch):
    from fedtorch import client_state

    fed = classification_federation(num_clients=8)
    straight = _scaffold_sim(fed, ClientStateStore(), rounds=6)
    straight.run()
    folder = tmp_path / "client_state"
    doomed = _scaffold_sim(fed, ClientStateStore(path=folder, memory_bytes=0), rounds=2)
    doomed.run()
    _checkpoint(doomed)  # checkpoint at round 2 (its commit happens at round 3's first write)
    doomed.rounds = 4
    doomed.run()
    saved = _checkpoint(doomed)  # checkpoint at round 4; round 5's first write commits it ...
    calls = {"n": 0}
    original = client_state.RowFile.put

    def dies_half_way(self, client, value):
        if self.folder.name == "base":
            calls["n"] += 1
            if calls["n"] == 2:
                raise KeyboardInterrupt("killed during the commit")
        original(self, client, value)

    monkeypatch.setattr(client_state.RowFile, "put", dies_half_way)
    doomed.rounds = 6
    with pytest.raises(KeyboardInterrupt):
        doomed.run()  # ... which dies after one of the base rows was copied
    monkeypatch.setattr(client_state.RowFile, "put", original)
    assert '"generation": 1, "committing": 2' in (folder / "base.json").read_text()  # half-copied

    resumed = _scaffold_sim(fed, ClientStateStore(path=folder, memory_bytes=0, fresh=False), rounds=6)
    resumed.load_state_dict(saved)
    resumed.run()
    assert torch.equal(resumed.global_vector, straight.global_vector)


def test_disk_store_refuses_a_checkpoint_older_than_its_files(tmp_path):
    fed = classification_federation(num_clients=8)
    folder = tmp_path / "client_state"
    sim = _scaffold_sim(fed, ClientStateStore(path=folder, memory_bytes=0), rounds=2)
    sim.run()
    old = _checkpoint(sim)
    sim.rounds = 3
    sim.run()
    _checkpoint(sim)
    sim.rounds = 4
    sim.run()  # the round-3 checkpoint is committed: the files are past `old`
    again = _scaffold_sim(fed, ClientStateStore(path=folder, memory_bytes=0, fresh=False), rounds=4)
    with pytest.raises(ValueError, match="resume from the latest checkpoint") as error:
        again.load_state_dict(old)
    assert "\n" not in str(error.value)


def test_store_path_that_is_not_writable_is_refused_in_one_line(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(OptionError, match=r"client_state\.dir=.* is invalid: .*a_file is a file") as error:
        ClientStateStore(path=blocker / "state")
    assert "\n" not in str(error.value)
    if os.geteuid() != 0:  # root writes anywhere: the permission case needs an ordinary user
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(OptionError, match="not writable"):
            ClientStateStore(path=locked / "state")
    assert not list(tmp_path.glob("**/.fedtorch_write_probe_*"))  # the check leaves no trace


def test_cli_run_killed_between_checkpoints_resumes_scaffold_from_disk_bit_exact(tmp_path, compose_config):
    """SIGKILL after round 5 (checkpoint at round 3, every row of client state on disk), then the same
    command again: model.pt is the uninterrupted run's, bit for bit."""
    from fedtorch.experiment import run_experiment
    from tests.test_checkpoint import finish, start_cli

    run_args = ("strategy=scaffold", "rounds=6", "checkpoint_every=3", "client_state.memory_mb=0")
    run_args += ("sampler.clients_per_round=5", "num_threads=1", "logging.progress=false", "logging.tensorboard=false")
    ref, run = tmp_path / "ref", tmp_path / "run"
    first = start_cli(*run_args, f"hydra.run.dir={run}", kill_at="round:5")
    threads = torch.get_num_threads()
    try:
        run_experiment(compose_config(*run_args), ref)  # the uninterrupted reference, meanwhile
    finally:
        torch.set_num_threads(threads)
    code, out = finish(first)
    assert code == -9, out
    assert (run / "client_state" / "base.json").is_file()  # the rows spilled to the run folder's disk
    code, out = finish(start_cli(*run_args, f"hydra.run.dir={run}"))
    assert code == 0, out
    assert "resuming from round 3" in out
    assert (run / "model.pt").read_bytes() == (ref / "model.pt").read_bytes()
