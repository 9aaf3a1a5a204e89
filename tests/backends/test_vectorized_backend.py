"""The vectorized backend against the sequential reference: same batches, same SGD, same model."""

from __future__ import annotations

import functools
import logging

import numpy as np
import pytest
import torch
from torch import nn

from fedtorch.backends import SequentialBackend, VectorizedBackend
from fedtorch.backends.vectorized import sgd_step
from fedtorch.client import ClientHooks, LocalTrainer, OptimizerSettings
from fedtorch.data.base import DatasetSplits, FederatedDataset
from fedtorch.models import CNN, MLP, LinearRegression
from fedtorch.runner import ClientJob
from fedtorch.samplers import UniformSampler
from fedtorch.simulation import Simulation
from fedtorch.strategies import FedAvg

# Unequal clients, so that clients take different numbers of steps, last batches are partial, and a
# client smaller than the batch size takes one short batch per epoch.
SIZES = (3, 7, 16, 23, 40, 9, 31, 12)

# The comparisons run in float64: batched and unbatched kernels round differently, and in float32 a
# difference of 1e-8 can flip a ReLU or a max-pool tie and grow to 1e-3 over tens of steps (seen
# with the MNIST CNN). In float64 the two backends agree to ~1e-15, so a tight tolerance catches
# any real difference (a wrong batch, mask or optimizer formula). One test checks float32 as well.
TOLERANCE = {torch.float64: {"rtol": 1e-10, "atol": 1e-12}, torch.float32: {"rtol": 1e-5, "atol": 1e-6}}


def federation(input_shape=(6,), num_classes: int | None = 4, sizes=SIZES, dtype=torch.float64) -> FederatedDataset:
    gen = torch.Generator().manual_seed(0)
    n = sum(sizes)
    x = torch.randn(n, *input_shape, generator=gen, dtype=dtype)
    if num_classes is None:
        y = x.flatten(1).sum(1) + 0.1 * torch.randn(n, generator=gen, dtype=dtype)
    else:
        y = torch.randint(0, num_classes, (n,), generator=gen)
    data = DatasetSplits("tiny", x, y, x[:20], y[:20], num_classes=num_classes)
    bounds = np.cumsum((0, *sizes))
    # Interleaved client indices (not contiguous ranges), as a real partition has.
    order = np.random.default_rng(0).permutation(n)
    return FederatedDataset.from_partition(data, [np.sort(order[a:b]) for a, b in zip(bounds[:-1], bounds[1:])])


def simulation(
    backend, fed, model_fn, rounds=2, clients=6, strategy=None, sampler=None, **trainer_options
) -> Simulation:
    torch.manual_seed(0)
    options = {"lr": 0.05, "epochs": 2, "batch_size": 5, **trainer_options}
    optimizer = options.pop("optimizer", None) or functools.partial(torch.optim.SGD, **options.pop("sgd", {}))
    trainer = LocalTrainer(optimizer, **options)
    sampler = sampler() if sampler else UniformSampler(clients)
    model = model_fn().to(fed.train_x.dtype)
    return Simulation(fed, model, strategy or FedAvg(), sampler, trainer, rounds=rounds, seed=3, backend=backend)


def run_both(fed, model_fn, chunk_size=None, **options):
    seq = simulation(SequentialBackend(), fed, model_fn, **options)
    vec = simulation(VectorizedBackend(chunk_size), fed, model_fn, **options)
    return seq, seq.run(), vec, vec.run()


def assert_same_run(seq, seq_summary, vec, vec_summary):
    assert vec_summary["backend"] == "vectorized"
    torch.testing.assert_close(vec.global_vector, seq.global_vector, **TOLERANCE[seq.global_vector.dtype])
    for row_s, row_v in zip(seq.state.history, vec.state.history):
        for key in ("round/local_steps", "round/samples", "round/clients"):
            assert row_v[key] == row_s[key], key
        for key in ("train/loss", "train/accuracy", "eval/loss"):  # loss sums are float32 in both
            if key in row_s:
                assert row_v[key] == pytest.approx(row_s[key], rel=1e-5, abs=1e-6), key


def mlp():
    return MLP((6,), 4, hidden=[16])


@pytest.mark.parametrize(
    "sgd",
    [
        {},
        {"momentum": 0.9, "weight_decay": 1e-2},
        {"momentum": 0.9, "nesterov": True},
        {"momentum": 0.5, "dampening": 0.3, "maximize": True},
    ],
    ids=["plain", "momentum-wd", "nesterov", "dampening-maximize"],
)
def test_matches_sequential_for_sgd_options(sgd):
    # maximize=True ascends the loss: a small lr keeps it finite over two rounds.
    lr = 0.01 if sgd.get("maximize") else 0.05
    assert_same_run(*run_both(federation(), mlp, sgd=sgd, lr=lr))


def test_float32_matches_sequential():
    fed = federation(dtype=torch.float32)
    seq, seq_summary, vec, vec_summary = run_both(fed, mlp, sgd={"momentum": 0.9})
    assert vec.global_vector.dtype == torch.float32
    assert_same_run(seq, seq_summary, vec, vec_summary)


@pytest.mark.parametrize("chunk_size", [1, 4])
def test_chunks_and_step_caps_match_sequential(chunk_size):
    # Several chunks; a trainer-wide step cap (max_steps) makes most budgets equal, some smaller.
    assert_same_run(*run_both(federation(), mlp, chunk_size=chunk_size, max_steps=5, sgd={"momentum": 0.9}))


def test_full_batch_regression_matches_sequential():
    # batch_size=-1: every client one batch of its own size, padded to the largest in the chunk; MSE loss.
    fed = federation(num_classes=None)
    assert_same_run(*run_both(fed, lambda: LinearRegression((6,)), batch_size=-1, epochs=3, lr=0.1))


def test_conv_net_matches_sequential():
    fed = federation(input_shape=(1, 8, 8), sizes=(6, 11, 4, 9))
    assert_same_run(
        *run_both(fed, lambda: CNN((1, 8, 8), 4, channels=(3, 4), hidden=8), clients=4, sgd={"momentum": 0.9})
    )


def test_straggler_sampler_matches_sequential():
    # The sampler's stragglers do a random share of their steps (their jobs' max_steps).
    sampler = functools.partial(UniformSampler, 6, stragglers=0.5, dropout=0.2)
    seq, seq_summary, vec, vec_summary = run_both(federation(), mlp, chunk_size=4, sampler=sampler, rounds=3)
    assert any(row["round/stragglers"] > 0 for row in seq.state.history)
    assert_same_run(seq, seq_summary, vec, vec_summary)


def test_per_client_step_caps_match_the_sequential_trainer():
    # Stragglers: per-client max_steps give the same updates as LocalTrainer with the same cap.
    fed = federation()
    sim = simulation(VectorizedBackend(chunk_size=3), fed, mlp, sgd={"momentum": 0.9})
    ids, caps = [0, 2, 3, 4, 6], [None, 1, 4, 0, 2]
    jobs = [ClientJob(client, 1, cap) for client, cap in zip(ids, caps)]
    updates = {u.client_id: u for u in sim.backend.train(jobs, sim.global_vector, {})}
    assert sorted(updates) == ids
    for job in jobs:
        update = updates[job.client_id]
        expected = sim.runner.run(job, sim.global_vector)
        assert update.num_steps == expected.num_steps
        assert int(update.metrics["samples_seen"]) == int(expected.metrics["samples_seen"])
        torch.testing.assert_close(update.delta, expected.delta, **TOLERANCE[torch.float64])
        torch.testing.assert_close(update.metrics["loss_sum"], expected.metrics["loss_sum"], rtol=1e-5, atol=1e-5)
    assert updates[4].num_steps == 0 and not updates[4].delta.any()


@pytest.mark.parametrize(
    "sgd",
    [
        {},
        {"momentum": 0.9, "weight_decay": 0.1},
        {"momentum": 0.8, "dampening": 0.5, "maximize": True},
        {"momentum": 0.9, "nesterov": True, "weight_decay": 0.1},
        {"momentum": 0.9, "nesterov": True, "maximize": True},
    ],
)
def test_sgd_step_is_torch_sgd_bit_for_bit(sgd):
    gen = torch.Generator().manual_seed(1)
    shapes = [(3, 4), (5,)]
    start = [torch.randn(2, *s, generator=gen) for s in shapes]  # 2 clients stacked
    grads_per_step = [[torch.randn(2, *s, generator=gen) for s in shapes] for _ in range(4)]
    stacked = [p.clone() for p in start]
    bufs = [torch.empty_like(p) for p in stacked]
    config = OptimizerSettings(name="SGD", lr=0.1, **sgd)
    for t, grads in enumerate(grads_per_step):
        sgd_step(stacked, grads, bufs, config, first=t == 0)
    for client in range(2):
        params = [nn.Parameter(p[client].clone()) for p in start]
        opt = torch.optim.SGD(params, lr=0.1, **sgd)
        for grads in grads_per_step:
            for p, g in zip(params, grads):
                p.grad = g[client].clone()
            opt.step()
        for p, q in zip(params, stacked):
            assert torch.equal(p.detach(), q[client])


class _Proximal(ClientHooks):
    adjusts_gradients = True

    def after_backward(self, params, grads, global_params):
        for p, g, g0 in zip(params, grads, global_params):
            g.add_(p.detach() - g0, alpha=0.1)


class _HookedFedAvg(FedAvg):
    changes_local_training = True

    def local_update(self, client):
        return client.train(hooks=_Proximal())


class _BatchNormNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 4))

    def forward(self, x):
        return self.net(x)


@pytest.mark.parametrize(
    "case, reason",
    [
        ("hooks", "changes local training"),
        ("batchnorm", "BatchNorm"),
        ("adam", "Adam"),
        ("dropout", "dropout"),
    ],
)
def test_unsupported_setups_fall_back_to_sequential(case, reason, caplog):
    fed = federation()
    model_fn = mlp
    options: dict = {}
    if case == "hooks":
        options["strategy"] = _HookedFedAvg()
    elif case == "batchnorm":
        model_fn = _BatchNormNet
        options["batch_size"] = -1  # BatchNorm cannot train on a batch of one sample
    elif case == "dropout":
        model_fn = lambda: nn.Sequential(nn.Linear(6, 8), nn.Dropout(0.5), nn.Linear(8, 4))  # noqa: E731
    seq = simulation(SequentialBackend(), fed, model_fn, rounds=1, **options)
    if case == "hooks":
        options["strategy"] = _HookedFedAvg()
    with caplog.at_level(logging.WARNING, logger="fedtorch"):
        vec = simulation(VectorizedBackend(), fed, model_fn, rounds=1, **options)
    if case == "adam":
        options["optimizer"] = torch.optim.Adam
        seq = simulation(SequentialBackend(), fed, model_fn, rounds=1, **options)
        with caplog.at_level(logging.WARNING, logger="fedtorch"):
            vec = simulation(VectorizedBackend(), fed, model_fn, rounds=1, **options)
    assert any("falls back to sequential" in r.message and reason in r.message for r in caplog.records)
    assert vec.backend.name == "sequential"
    seq.run()
    assert vec.run()["backend"] == "sequential"
    assert torch.equal(vec.global_vector, seq.global_vector)  # it *is* the sequential path


class _DataDependent(nn.Module):
    """A forward pass with Python control flow on a tensor's value: vmap cannot batch it."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(6, 4)

    def forward(self, x):
        out = self.linear(x)
        return out * 2 if out.sum().item() > 1e9 else out


def test_a_model_torch_func_cannot_batch_falls_back_during_the_round(caplog):
    fed = federation()
    seq = simulation(SequentialBackend(), fed, _DataDependent, rounds=2)
    with caplog.at_level(logging.WARNING, logger="fedtorch"):
        vec = simulation(VectorizedBackend(chunk_size=2), fed, _DataDependent, rounds=2)
        summary = vec.run()
    assert any("torch.func could not train" in r.message for r in caplog.records)
    assert summary["backend"] == "sequential"
    seq.run()
    assert torch.equal(vec.global_vector, seq.global_vector)
    assert [r["round/clients"] for r in vec.state.history] == [6, 6]
