"""Generated federations whose clients exist only when they are sampled.

A generated federation knows every client's size up front (one int64 array) and draws client k's
samples from a random stream of its own, derived from (dataset seed, generator name, k), when the
client is asked for: nothing else is generated before training. The same client therefore gets the
same samples on every backend, in every process and after a resume, whatever order clients are
asked for in, and a federation of a million devices costs its size array, not its data (FedProx
Synthetic with a million devices of ~450 samples would be ~100 GiB of float32 if generated
eagerly).

    FedProxSynthetic        Synthetic(alpha, beta) of Li et al. 2020, device by device
    LinearRegressionClients y = w x + b + noise, the founding example, client by client
    SyntheticImages         images of MNIST's shape (1, 28, 28), 10 classes, optional label skew

`GeneratedFederation` turns a generator into a `fedtorch.data.base.Federation`. Its central test
set is the union of the test splits of `test_clients` devices (all of them in a small federation,
else a fixed random sample): evaluation then costs the same for any federation size.
`materialize()` returns the same federation generated eagerly as an in-memory `FederatedDataset`
(the tests check that both train identically).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from fedtorch.data.base import FederatedDataset, Federation
from fedtorch.data.index import ClientIndex
from fedtorch.errors import OptionError, check_int, check_number
from fedtorch.seeding import numpy_rng

#: A federation of at most this many clients is evaluated on every client's test split; a larger
#: one on the test splits of a fixed random sample of this many (`GeneratedFederation.test_clients`).
DEFAULT_TEST_CLIENTS = 1000


class ClientGenerator(Protocol):
    """What a `GeneratedFederation` needs from a generator."""

    name: str
    num_classes: int | None
    input_shape: tuple[int, ...]

    @property
    def num_clients(self) -> int: ...

    def train_sizes(self) -> np.ndarray: ...

    def test_sizes(self) -> np.ndarray: ...

    def generate(self, client_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Client k's (train_x, train_y, test_x, test_y), a function of (seed, k) only."""
        ...

    def describe(self) -> dict[str, Any]:
        """The generator's parameters (what its data is a function of), for provenance."""
        ...


class ClientNames(Sequence[str]):
    """`prefix_0`, `prefix_1`, ...: client names computed when read, not stored per client."""

    def __init__(self, prefix: str, count: int) -> None:
        self.prefix, self.count = prefix, count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, k: int) -> str:  # type: ignore[override]
        if not 0 <= int(k) < self.count:
            raise IndexError(k)
        return f"{self.prefix}_{int(k)}"


def _tensor(array: np.ndarray, classification: bool, target: bool) -> Tensor:
    if target:
        return torch.from_numpy(np.ascontiguousarray(array, dtype=np.int64 if classification else np.float32))
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


@dataclass
class GeneratedFederation(Federation):
    """A federation whose clients are generated on demand (see the module docstring).

    Build it with `GeneratedFederation.create(generator, test_clients)`.
    """

    name: str
    generator: ClientGenerator
    num_classes: int | None
    test_x: Tensor
    test_y: Tensor
    client_test_indices: ClientIndex | None
    client_names: Sequence[str] | None = None
    partition_notes: dict[str, float] = field(default_factory=dict)
    test_clients: np.ndarray | None = None

    @classmethod
    def create(cls, generator: ClientGenerator, test_clients: int | None = DEFAULT_TEST_CLIENTS) -> GeneratedFederation:
        """The federation of `generator`; its central test set is the test splits of every client when
        there are at most `test_clients` (None: always every client), else of a fixed random sample
        of `test_clients` of them (drawn from the (0, "test_clients") stream, so every seed and
        every run of a sweep is scored on the same clients)."""
        num = generator.num_clients
        limit = check_int("dataset.test_devices", test_clients, 1, none=True)
        if limit is None or num <= limit:
            chosen = np.arange(num, dtype=np.int64)
        else:
            chosen = np.sort(numpy_rng(0, "test_clients").choice(num, size=limit, replace=False))
        classify = generator.num_classes is not None
        xs, ys = [], []
        for k in chosen.tolist():
            _, _, tx, ty = generator.generate(k)
            xs.append(tx)
            ys.append(ty)
        shape = generator.input_shape
        test_x = _tensor(np.concatenate(xs) if xs else np.zeros((0, *shape)), classify, target=False)
        test_y = _tensor(np.concatenate(ys) if ys else np.zeros(0), classify, target=True)
        sizes = np.zeros(num, dtype=np.int64)
        sizes[chosen] = generator.test_sizes()[chosen]
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        return cls(
            name=generator.name,
            generator=generator,
            num_classes=generator.num_classes,
            test_x=test_x.reshape(len(test_y), *shape),
            test_y=test_y,
            client_test_indices=ClientIndex(torch.arange(len(test_y)), offsets),
            client_names=ClientNames(getattr(generator, "client_prefix", "client"), num),
            test_clients=chosen,
        )

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.generator.input_shape)

    @property
    def num_clients(self) -> int:
        return self.generator.num_clients

    def client_sizes(self) -> np.ndarray:
        return self.generator.train_sizes()

    def client_tensors(self, client_id: int) -> tuple[Tensor, Tensor]:
        x, y, _, _ = self.generator.generate(int(client_id))
        classify = self.num_classes is not None
        return _tensor(x, classify, target=False).reshape(len(y), *self.input_shape), _tensor(y, classify, target=True)

    def partition_sha256(self) -> str:
        """sha256 over the generator's parameters and every client's train and test sizes."""
        digest = hashlib.sha256(json.dumps(self.generator.describe(), sort_keys=True).encode())
        digest.update(np.ascontiguousarray(self.client_sizes(), dtype="<i8").tobytes())
        digest.update(np.ascontiguousarray(self.generator.test_sizes(), dtype="<i8").tobytes())
        return digest.hexdigest()

    def materialize(self) -> FederatedDataset:
        """The same federation generated eagerly, in memory: client k holds exactly the samples
        `client_data(k)` gives, in the same order; the same central test set and client test
        splits. For tests and small federations (it generates every client)."""
        xs, ys = [], []
        for k in range(self.num_clients):
            x, y = self.client_tensors(k)
            xs.append(x)
            ys.append(y)
        sizes = self.client_sizes()
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        device = self.test_y.device
        return FederatedDataset(
            name=self.name,
            train_x=torch.cat(xs).to(device),
            train_y=torch.cat(ys).to(device),
            test_x=self.test_x,
            test_y=self.test_y,
            num_classes=self.num_classes,
            client_indices=ClientIndex(torch.arange(int(offsets[-1]), device=device), offsets),
            client_test_indices=self.client_test_indices,
            client_names=[self.client_names[k] for k in range(self.num_clients)] if self.client_names else None,
            partition_notes=dict(self.partition_notes),
        )


def train_split_sizes(sizes: np.ndarray, train_fraction: float) -> np.ndarray:
    """Train samples of a device of n: max(1, round(train_fraction * n)), half to even; the eager
    and the lazy FedProx generators both split by it."""
    return np.maximum(1, np.round(train_fraction * sizes)).astype(np.int64)


def fedprox_device(
    rng: np.random.Generator,
    n: int,
    num_features: int,
    num_classes: int,
    alpha: float,
    beta: float,
    shared: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """One device of FedProx's Synthetic(alpha, beta): n samples (x, y) drawn from `rng` in the paper's
    order (u_k, B_k, W_k, b_k, v_k, x); `shared` = (W, b) for the IID variant (then x ~ N(0, Sigma)).
    Both the eager generator (one stream for all devices) and the lazy one (one per device) call it."""
    if shared is not None:
        (w, b), mean_x = shared, np.zeros(num_features)
    else:
        u_k = rng.normal(0, np.sqrt(alpha))
        b_k = rng.normal(0, np.sqrt(beta))
        w = rng.normal(u_k, 1, (num_features, num_classes))
        b = rng.normal(u_k, 1, num_classes)
        mean_x = rng.normal(b_k, 1, num_features)
    sigma = np.power(np.arange(1, num_features + 1, dtype=np.float64), -1.2)  # Sigma_jj = j^-1.2
    x = mean_x + rng.normal(0, 1, (n, num_features)) * np.sqrt(sigma)
    return x, np.argmax(x @ w + b, axis=1)  # softmax is monotone: argmax of the logits


class FedProxSynthetic:
    """FedProx's Synthetic(alpha, beta) (Li et al. 2020, Section 5.1), one device at a time.

    Device k draws u_k ~ N(0, alpha) and B_k ~ N(0, beta); its model is W_k ~ N(u_k, 1) (10 x 60)
    and b_k ~ N(u_k, 1); its inputs x ~ N(v_k, Sigma) with v_k[j] ~ N(B_k, 1) and Sigma_jj = j^-1.2;
    labels y = argmax(W_k x + b_k). Sizes follow the paper's code, lognormal(4, 2) + 50. The IID
    variant shares one W, b ~ N(0, 1) and draws x ~ N(0, Sigma). These are exactly the draws of
    `fedtorch.data.synthetic.load_fedprox_synthetic`, but from one stream per device
    ((seed, "fedprox_synthetic/device", k)) instead of one stream for all, so any device can be
    generated alone. The first `round(train_fraction * n)` samples are its train split.
    """

    client_prefix = "device"

    def __init__(
        self,
        alpha: float = 1.0,
        beta: float = 1.0,
        iid: bool = False,
        num_devices: int = 30,
        num_features: int = 60,
        num_classes: int = 10,
        train_fraction: float = 0.8,
        max_samples_per_device: int | None = None,
        seed: int = 0,
    ) -> None:
        self.alpha = check_number("dataset.alpha", alpha, 0.0)
        self.beta = check_number("dataset.beta", beta, 0.0)
        self.iid = bool(iid)
        self.count = check_int("dataset.num_devices", num_devices, 1)
        self.num_features = check_int("dataset.num_features", num_features, 1)
        self.num_classes = check_int("dataset.num_classes", num_classes, 2)
        self.train_fraction = check_number("dataset.train_fraction", train_fraction, 0.0, 1.0, low_open=True)
        self.max_samples = check_int("dataset.max_samples_per_device", max_samples_per_device, 2, none=True)
        self.seed = check_int("dataset.seed", seed, 0)
        self.name = "fedprox_synthetic_iid" if self.iid else f"fedprox_synthetic_{self.alpha:g}_{self.beta:g}"
        self.input_shape = (self.num_features,)
        sizes = numpy_rng(self.seed, "fedprox_synthetic/sizes").lognormal(4, 2, self.count).astype(np.int64) + 50
        if self.max_samples is not None:
            sizes = np.minimum(sizes, self.max_samples)
        self.sizes = sizes
        self.train = train_split_sizes(sizes, self.train_fraction)
        shared = numpy_rng(self.seed, "fedprox_synthetic/shared")
        self.shared_w = shared.normal(0, 1, (self.num_features, self.num_classes))
        self.shared_b = shared.normal(0, 1, self.num_classes)

    @property
    def num_clients(self) -> int:
        return self.count

    def train_sizes(self) -> np.ndarray:
        return self.train

    def test_sizes(self) -> np.ndarray:
        return self.sizes - self.train

    def generate(self, client_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        rng = numpy_rng(self.seed, "fedprox_synthetic/device", client_id)
        shared = (self.shared_w, self.shared_b) if self.iid else None
        x, y = fedprox_device(
            rng, int(self.sizes[client_id]), self.num_features, self.num_classes, self.alpha, self.beta, shared
        )
        cut = int(self.train[client_id])
        return x[:cut], y[:cut], x[cut:], y[cut:]

    def describe(self) -> dict[str, Any]:
        keys = ("alpha", "beta", "iid", "count", "num_features", "num_classes", "train_fraction", "max_samples", "seed")
        return {"generator": "fedprox_synthetic", **{k: getattr(self, k) for k in keys}}


class _FixedSizeClients:
    """Generators whose every client has `samples` train and `test_samples` test samples."""

    count: int
    samples: int
    test_samples: int

    @property
    def num_clients(self) -> int:
        return self.count

    def train_sizes(self) -> np.ndarray:
        return np.full(self.count, self.samples, dtype=np.int64)

    def test_sizes(self) -> np.ndarray:
        return np.full(self.count, self.test_samples, dtype=np.int64)


class LinearRegressionClients(_FixedSizeClients):
    """The founding document's regression, client by client: y = w_k x + b + N(0, noise_std^2),
    x ~ U[0, 1), with w_k = weight + heterogeneity * N(0, 1) (0: every client shares the line).

    Each client has `samples_per_client` train and `test_samples_per_client` test samples, drawn
    from the (seed, "linear_regression/client", k) stream.
    """

    num_classes = None
    input_shape = (1,)
    name = "linear_regression_clients"

    def __init__(
        self,
        num_clients: int = 100,
        samples_per_client: int = 10,
        test_samples_per_client: int = 2,
        weight: float = 2.0,
        bias: float = 1.0,
        noise_std: float = 1.0,
        heterogeneity: float = 0.0,
        seed: int = 0,
    ) -> None:
        self.count = check_int("dataset.num_clients", num_clients, 1)
        self.samples = check_int("dataset.samples_per_client", samples_per_client, 1)
        self.test_samples = check_int("dataset.test_samples_per_client", test_samples_per_client, 0)
        self.weight = check_number("dataset.weight", weight)
        self.bias = check_number("dataset.bias", bias)
        self.noise_std = check_number("dataset.noise_std", noise_std, 0.0)
        self.heterogeneity = check_number("dataset.heterogeneity", heterogeneity, 0.0)
        self.seed = check_int("dataset.seed", seed, 0)

    def generate(self, client_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        rng = numpy_rng(self.seed, "linear_regression/client", client_id)
        w = self.weight + self.heterogeneity * rng.normal()
        n = self.samples + self.test_samples
        x = rng.uniform(0.0, 1.0, size=(n, 1))
        y = w * x[:, 0] + self.bias + rng.normal(0.0, self.noise_std, size=n)
        return x[: self.samples], y[: self.samples], x[self.samples :], y[self.samples :]

    def describe(self) -> dict[str, Any]:
        keys = ("count", "samples", "test_samples", "weight", "bias", "noise_std", "heterogeneity", "seed")
        return {"generator": "linear_regression", **{k: getattr(self, k) for k in keys}}


class SyntheticImages(_FixedSizeClients):
    """Images of MNIST's shape, (1, 28, 28) in 10 classes, generated client by client.

    Class c has a fixed template T_c (a smooth random image: the sum of `strokes` Gaussian blobs,
    from the (seed, "synthetic_images/templates") stream); a sample of class c is
    T_c * contrast + N(0, 1) noise, so the classes overlap and a model has something to learn (a
    2NN reaches high accuracy in a few rounds). Client k draws its labels uniformly, or from its
    own Dir(alpha) label distribution when `alpha` is set (label skew as in Hsu et al. 2019), and
    `samples_per_client` train plus `test_samples_per_client` test samples from
    (seed, "synthetic_images/client", k). Values are float32, roughly standardized.

    For GPU timing against other frameworks on MNIST-shaped data without the MNIST files.
    """

    input_shape = (1, 28, 28)
    num_classes = 10
    name = "synthetic_images"

    def __init__(
        self,
        num_clients: int = 100,
        samples_per_client: int = 600,
        test_samples_per_client: int = 100,
        alpha: float | None = None,
        contrast: float = 1.0,
        strokes: int = 6,
        seed: int = 0,
    ) -> None:
        self.count = check_int("dataset.num_clients", num_clients, 1)
        self.samples = check_int("dataset.samples_per_client", samples_per_client, 1)
        self.test_samples = check_int("dataset.test_samples_per_client", test_samples_per_client, 0)
        self.alpha = check_number("dataset.alpha", alpha, 0.0, low_open=True, none=True)
        self.contrast = check_number("dataset.contrast", contrast, 0.0)
        self.strokes = check_int("dataset.strokes", strokes, 1)
        self.seed = check_int("dataset.seed", seed, 0)
        rng = numpy_rng(self.seed, "synthetic_images/templates")
        grid = np.stack(np.meshgrid(np.arange(28), np.arange(28), indexing="ij"), -1).astype(np.float64)
        templates = np.zeros((10, 28, 28))
        for c in range(10):
            for _ in range(self.strokes):
                center = rng.uniform(6, 22, size=2)
                width = rng.uniform(1.5, 4.0)
                templates[c] += np.exp(-((grid - center) ** 2).sum(-1) / (2 * width**2))
        templates -= templates.mean(axis=(1, 2), keepdims=True)
        templates /= templates.std(axis=(1, 2), keepdims=True)
        self.templates = (templates.reshape(10, -1) * self.contrast).astype(np.float32)

    def generate(self, client_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        rng = numpy_rng(self.seed, "synthetic_images/client", client_id)
        n = self.samples + self.test_samples
        if self.alpha is None:
            y = rng.integers(0, 10, size=n)
        else:
            y = rng.choice(10, size=n, p=rng.dirichlet(np.full(10, self.alpha)))
        x = rng.standard_normal((n, 784), dtype=np.float32)
        x += self.templates[y]
        x *= np.float32(1.0 / np.sqrt(1.0 + self.contrast**2))  # unit variance per pixel
        s = self.samples
        return x[:s], y[:s], x[s:], y[s:]

    def describe(self) -> dict[str, Any]:
        keys = ("count", "samples", "test_samples", "alpha", "contrast", "strokes", "seed")
        return {"generator": "synthetic_images", **{k: getattr(self, k) for k in keys}}


def load_linear_regression_clients(root: str | None = None, test_devices: int | None = DEFAULT_TEST_CLIENTS,
                                   **options: Any) -> GeneratedFederation:  # fmt: skip
    """`LinearRegressionClients(**options)` as a federation (conf/dataset/linear_regression_clients.yaml)."""
    return GeneratedFederation.create(LinearRegressionClients(**options), test_devices)


def load_synthetic_images(root: str | None = None, test_devices: int | None = DEFAULT_TEST_CLIENTS,
                          materialize: bool = False, **options: Any) -> Federation:  # fmt: skip
    """`SyntheticImages(**options)` as a federation (conf/dataset/synthetic_images.yaml); with
    `materialize=true` generated up front into memory (resident tensors, as MNIST would be)."""
    federation = GeneratedFederation.create(SyntheticImages(**options), test_devices)
    if materialize:
        if federation.num_clients * (federation.generator.samples) > 10_000_000:
            raise OptionError("dataset.materialize", materialize, "at most 10,000,000 train samples in memory")
        return federation.materialize()
    return federation
