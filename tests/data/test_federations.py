"""Lazy federations: the CSR index, generated clients and prepared folders give exactly the data and the
training of their eager, in-memory twins; huge federations cost their sizes only; bad folders are refused
in one line."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch

from fedtorch.backends import SequentialBackend, VectorizedBackend
from fedtorch.client import LocalTrainer
from fedtorch.data.base import DatasetSplits, FederatedDataset, Partition
from fedtorch.data.generated import (
    FedProxSynthetic,
    GeneratedFederation,
    LinearRegressionClients,
    SyntheticImages,
    load_synthetic_images,
)
from fedtorch.data.index import ClientIndex, IndexCSR
from fedtorch.data.prepared import HEADER, load_prepared, write_prepared
from fedtorch.data.synthetic import load_fedprox_synthetic
from fedtorch.errors import OptionError
from fedtorch.experiment import PARTITION_RECORD_MAX_CLIENTS, partition_record
from fedtorch.models import MLP, LinearRegression, LogisticRegression
from fedtorch.provenance import partition_hash
from fedtorch.samplers import UniformSampler
from fedtorch.simulation import Simulation
from fedtorch.strategies import FedAvg

# ----------------------------------------------------------------------------- the CSR index


def test_csr_index_reads_as_the_list_of_client_arrays_it_replaces() -> None:
    rng = np.random.default_rng(0)
    lists = [rng.permutation(50)[: rng.integers(0, 8)] for _ in range(40)]
    csr = IndexCSR.from_lists(lists)
    assert len(csr) == 40 and csr.sizes().tolist() == [len(a) for a in lists]
    for k, a in enumerate(lists):
        assert csr[k].tolist() == sorted(a.tolist())  # each client's run sorted
    owners = np.full(50, -1)
    for k, a in enumerate(lists[:5]):  # disjoint only for the first few: build an owner array from them
        owners[a[~np.isin(a, np.concatenate(lists[:k]) if k else [])]] = k
    by_owner = IndexCSR.from_owners(owners, 5)
    assert all(by_owner[k].tolist() == np.flatnonzero(owners == k).tolist() for k in range(5))
    picked = csr.select([7, 3, 3])
    assert [a.tolist() for a in picked] == [csr[7].tolist(), csr[3].tolist(), csr[3].tolist()]
    index = ClientIndex.from_csr(csr)
    assert [t.tolist() for t in index] == [a.tolist() for a in csr]
    # The hash without a loop over clients is provenance.partition_hash of the same lists.
    assert index.sha256() == partition_hash([torch.tensor(a) for a in csr])


def test_million_client_partition_is_built_and_checked_in_seconds() -> None:
    from fedtorch.data.partitions import iid_partition, label_count_matrix

    start = time.perf_counter()
    partition = iid_partition(3_000_000, 1_000_000, np.random.default_rng(0))
    counts = label_count_matrix(partition, np.random.default_rng(1).integers(0, 10, 3_000_000), 10)
    seconds = time.perf_counter() - start
    assert partition.num_clients == 1_000_000 and (partition.sizes() == 3).all()
    assert counts.sum() == 3_000_000 and (counts.sum(1) == 3).all()
    assert seconds < 20, f"{seconds:.1f} s: a partition is whole-array work, not a loop over clients"


# ----------------------------------------------------------------------------- generated federations


def _run(fed, model, backend, rounds=3, cohort=6, seed=0):
    sim = Simulation(fed, model, FedAvg(), UniformSampler(cohort), LocalTrainer(lr=0.05, batch_size=8),
                     rounds=rounds, seed=seed, backend=backend)  # fmt: skip
    sim.run()
    return sim.global_vector.clone(), sim.state.history[-1]


@pytest.mark.parametrize(
    "generator, model",
    [
        (lambda: FedProxSynthetic(num_devices=40, max_samples_per_device=40, seed=3), LogisticRegression),
        (lambda: LinearRegressionClients(num_clients=30, samples_per_client=12, heterogeneity=0.5), None),
        (lambda: SyntheticImages(num_clients=20, samples_per_client=30, test_samples_per_client=5, alpha=0.5), None),
    ],
    ids=["fedprox_synthetic", "linear_regression", "synthetic_images"],
)
def test_lazy_federation_trains_exactly_like_its_eager_twin_on_every_backend(generator, model) -> None:
    lazy = GeneratedFederation.create(generator())
    eager = lazy.materialize()
    assert eager.num_clients == lazy.num_clients and (eager.client_sizes() == lazy.client_sizes()).all()
    for k in range(lazy.num_clients):  # every client: the same samples in the same order
        x, y, ix = lazy.client_data(k)
        ex, ey, eix = eager.client_data(k)
        assert torch.equal(x[ix], ex[eix]) and torch.equal(y[ix], ey[eix])
    assert lazy.partition_sha256() == lazy.partition_sha256() and lazy.client_names[3] == eager.client_names[3]

    def build(fed):
        torch.manual_seed(0)
        if lazy.num_classes is None:
            return LinearRegression(fed.input_shape)
        return (model or (lambda s, c: MLP(s, c, hidden=(16,))))(fed.input_shape, fed.num_classes)

    for backend in (SequentialBackend, VectorizedBackend):
        w_lazy, row_lazy = _run(lazy, build(lazy), backend())
        w_eager, row_eager = _run(eager, build(eager), backend())
        assert torch.equal(w_lazy, w_eager), backend.__name__
        assert {k: v for k, v in row_lazy.items() if k != "round/seconds"} == {
            k: v for k, v in row_eager.items() if k != "round/seconds"
        }


def test_a_million_devices_cost_their_sizes_not_their_data() -> None:
    start = time.perf_counter()
    fed = load_fedprox_synthetic(num_devices=1_000_000)  # lazy: auto, ~4.5e8 samples if eager
    setup = time.perf_counter() - start
    assert isinstance(fed, GeneratedFederation) and fed.num_clients == 1_000_000
    assert fed.client_sizes().sum() > 10**8  # what eager generation would have had to hold
    assert len(fed.test_y) == fed.generator.test_sizes()[fed.test_clients].sum()  # 1000 devices' test splits
    assert setup < 30
    x, y, ix = fed.client_data(999_999)  # any device, alone, on demand: the same every time
    again = fed.client_data(999_999)
    assert len(ix) == fed.client_sizes()[999_999] and torch.equal(x, again[0]) and torch.equal(y, again[1])
    small = load_fedprox_synthetic(num_devices=30)  # at or below 1000 devices: the eager stream, as always
    assert isinstance(small, DatasetSplits)


def test_materialized_synthetic_images_are_resident_and_learnable() -> None:
    fed = load_synthetic_images(num_clients=4, samples_per_client=50, test_samples_per_client=10, materialize=True)
    assert isinstance(fed, FederatedDataset) and fed.train_x.shape == (200, 1, 28, 28)
    torch.manual_seed(0)
    w, row = _run(fed, MLP(fed.input_shape, 10, hidden=(32,)), SequentialBackend(), rounds=5, cohort=4)
    assert row["eval/accuracy"] > 0.5  # templates + noise: well above chance (0.1)


# ----------------------------------------------------------------------------- prepared folders


def _mnist_like(num_clients=12):
    rng = np.random.default_rng(0)
    n = 240
    data = DatasetSplits(
        "toy_images",
        torch.tensor(rng.normal(size=(n, 1, 4, 4)), dtype=torch.float32),
        torch.tensor(rng.integers(0, 3, n)),
        torch.tensor(rng.normal(size=(30, 1, 4, 4)), dtype=torch.float32),
        torch.tensor(rng.integers(0, 3, 30)),
        num_classes=3,
    )
    owner = rng.integers(0, num_clients, n)
    test_owner = rng.integers(-1, num_clients, 30)
    train, test = IndexCSR.from_owners(owner, num_clients), IndexCSR.from_owners(test_owner, num_clients)
    partition = Partition(train, n, test=test, num_test_samples=30)
    return FederatedDataset.from_partition(data, partition)


def test_prepared_folder_trains_exactly_like_the_in_memory_federation(tmp_path) -> None:
    fed = _mnist_like()
    write_prepared(fed, tmp_path / "prep")
    mapped = load_prepared(str(tmp_path / "prep"), verify=True)
    assert mapped.num_clients == fed.num_clients and (mapped.client_sizes() == fed.client_sizes()).all()
    assert mapped.partition_sha256() == fed.partition_sha256()  # provenance names the source split
    assert (mapped.label_counts() == fed.label_counts()).all() and (
        mapped.label_counts([4, 2]) == fed.label_counts([4, 2])
    ).all()
    assert [t.tolist() for t in mapped.client_test_indices] == [t.tolist() for t in fed.client_test_indices]
    for backend in (SequentialBackend, VectorizedBackend):
        results = []
        for f in (fed, mapped):
            torch.manual_seed(0)
            results.append(_run(f, MLP(f.input_shape, 3, hidden=(8,)), backend(), cohort=4))
        assert torch.equal(results[0][0], results[1][0])
        assert results[0][1]["eval/clients/accuracy_mean"] == results[1][1]["eval/clients/accuracy_mean"]


def test_prepared_client_reads_only_its_rows(tmp_path) -> None:
    fed = _mnist_like()
    write_prepared(fed, tmp_path / "prep", checksum=False)
    mapped = load_prepared(str(tmp_path / "prep"))
    # The memory map is the whole file; a client's tensors are a copy of its contiguous rows only.
    x, y = mapped.client_tensors(5)
    start, end = mapped.offsets[5], mapped.offsets[6]
    assert torch.equal(x, torch.from_numpy(np.array(mapped.train_x[start:end])))
    assert torch.equal(x, fed.train_x[fed.client_indices[5]]) and len(x) == end - start


def test_bad_prepared_folders_are_refused_in_one_line(tmp_path) -> None:
    def refused(path, match):
        with pytest.raises(OptionError, match=match) as error:
            load_prepared(str(path))
        assert str(error.value).startswith("dataset.path=") and "\n" not in str(error.value)

    refused(tmp_path / "nowhere", "no such folder")
    (tmp_path / "empty").mkdir()
    refused(tmp_path / "empty", "not prepared, or interrupted")
    folder = write_prepared(_mnist_like(), tmp_path / "prep", checksum=False)
    header = json.loads((folder / HEADER).read_text())
    with open(folder / "train_x.npy", "r+b") as handle:  # truncated
        handle.truncate(header["arrays"]["train_x"]["bytes"] - 64)
    refused(folder, "truncated")
    other = write_prepared(_mnist_like(), tmp_path / "v2", checksum=False)
    header = json.loads((other / HEADER).read_text())
    (other / HEADER).write_text(json.dumps({**header, "version": 2}))
    refused(other, "format version 2, this fedtorch reads 1")
    corrupt = write_prepared(_mnist_like(), tmp_path / "corrupt")
    with open(corrupt / "train_y.npy", "r+b") as handle:
        handle.seek(-8, 2)
        handle.write(b"\x07" * 8)
    load_prepared(str(corrupt))  # sizes are fine: opening is O(1)
    with pytest.raises(OptionError, match="sha256"):
        load_prepared(str(corrupt), verify=True)


def test_prepare_command_writes_a_folder_the_cli_trains_on(tmp_path) -> None:
    from fedtorch.data.prepare import main

    out = tmp_path / "prep"
    assert main([f"out={out}", "dataset=linear_regression", "partition=iid", "partition.num_clients=7"]) == 0
    mapped = load_prepared(str(out), verify=True)
    assert mapped.num_clients == 7 and mapped.client_sizes().sum() == 1000
    assert main(["dataset=linear_regression"]) == 2  # no out=: one line, status 2


# ----------------------------------------------------------------------------- run-folder summaries


def test_partition_record_lists_clients_up_to_the_threshold_then_summarizes() -> None:
    small = _mnist_like()
    record = partition_record(small)
    assert len(record["clients"]) == small.num_clients
    assert record["clients"]["3"]["label_counts"] == small.label_counts()[3].tolist()
    big = load_synthetic_images(
        num_clients=PARTITION_RECORD_MAX_CLIENTS * 3, samples_per_client=2, test_samples_per_client=0
    )
    record = partition_record(big)
    assert "clients" not in record and record["clients_listed"] is False
    assert record["num_samples"] == 2 * big.num_clients and record["size_quantiles"]["0.5"] == 2.0
    assert sum(record["size_histogram"]["counts"]) == big.num_clients
    assert record["label_sample"]["clients"] == PARTITION_RECORD_MAX_CLIENTS
    assert sum(record["label_totals_in_sample"]) == 2 * PARTITION_RECORD_MAX_CLIENTS
    assert len(json.dumps(record)) < 5000  # a few kilobytes at any size


def test_a_federation_with_its_own_clients_refuses_a_partitioner_and_data_poisoning() -> None:
    from fedtorch.attacks import LabelFlip
    from fedtorch.data.partitions import IID, Natural
    from fedtorch.experiment import federate

    fed = GeneratedFederation.create(SyntheticImages(num_clients=5, samples_per_client=4, test_samples_per_client=1))
    assert federate(fed, Natural(), seed=0) is fed
    with pytest.raises(OptionError, match=r"partition='iid' is invalid: .* has its own 5 clients") as error:
        federate(fed, IID(5), seed=0)
    assert "\n" not in str(error.value)
    with pytest.raises(OptionError, match="data poisoning needs an in-memory federation"):
        LabelFlip(fraction=0.4, num_clients=5, seed=0).poison(fed)
