"""The client side of a simulation: one client's turn, from the weights it downloaded to its update.

`ClientRunner` owns what every client's turn shares: the federation's data (resident on the
device), one worker model whose parameters are views into a flat vector (loaded in place for
every client: no deepcopy), the local trainer, the loss, the per-client state store and the
random streams derived from the root seed. `run(job, start, payload)` hands the strategy's client
half a `ClientContext` for that client and returns the `ClientUpdate` it produces.

A strategy's client half (`Strategy.local_update`) sees only the `ClientContext`: its own data
(`train`, `loss`), what the server sent (`payload`), its own state (`state`) and the local
optimizer's settings. It never sees the server, the simulation or other clients.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch import Tensor, nn

from fedtorch.client import ClientHooks, ClientUpdate, LocalTrainer, OptimizerSettings, default_loss, epoch_orders
from fedtorch.client_state import ClientState, ClientStateStore
from fedtorch.data.base import Federation
from fedtorch.errors import OptionError
from fedtorch.evaluation import mean_loss
from fedtorch.params import FlatModel, VectorLayout
from fedtorch.seeding import derive_seed, torch_generator

Payload = Mapping[str, Tensor]


@dataclass(frozen=True)
class ClientJob:
    """One client's turn: who trains, for which round (or server step), with which step budget.

    Attributes:
        client_id: the client's index in the federation.
        round: the round (synchronous) or the model version the client downloaded (asynchronous);
            the client's random streams derive from (seed, round, client).
        max_steps: a straggler's budget of local steps (None: all its local work).
    """

    client_id: int
    round: int
    max_steps: int | None = None


class ClientAlgorithm(Protocol):
    """The client half of a strategy (`fedtorch.strategies.base.Strategy`)."""

    name: str
    #: False when `local_update` is plain local training (a batched backend may then do it).
    changes_local_training: bool

    def local_update(self, client: ClientContext) -> ClientUpdate: ...


def seed_torch(seed: int, device: torch.device) -> None:
    """`torch.manual_seed` for the streams local training on `device` draws from: the CPU one and
    the device's. (`torch.manual_seed` also queues the seed for every accelerator type not yet
    initialized, formatting a stack trace each time: ~0.3 ms per client on a CPU-only machine.)"""
    torch.default_generator.manual_seed(seed)
    if device.type == "cuda":
        with torch.cuda.device(device):
            torch.cuda.manual_seed(seed)
    elif device.type != "cpu":
        torch.manual_seed(seed)


class ClientRunner:
    """Turns (job, downloaded weights, payload) into a `ClientUpdate`, for any client.

    Args:
        federation: the clients' data (its resident tensors moved to `device` once; a lazy
            federation's clients are materialized there when they train).
        model: a freshly built module; it becomes the worker (and evaluation) model.
        trainer: local training on one client.
        algorithm: the strategy's client half (`local_update`).
        seed: the root seed.
        device: where the model and the data live.
        loss_fn: the training loss; default from the task (cross-entropy or MSE).
        state: the per-client state store (a fresh in-memory one by default).
    """

    def __init__(
        self,
        federation: Federation,
        model: nn.Module,
        trainer: LocalTrainer,
        algorithm: ClientAlgorithm,
        seed: int = 0,
        device: torch.device | str = "cpu",
        loss_fn: Callable[..., Tensor] | None = None,
        state: ClientStateStore | None = None,
    ) -> None:
        self.device = torch.device(device)
        self.federation = federation.to(self.device)
        self.model = model.to(self.device)
        self.flat = FlatModel(self.model)
        self.trainer = trainer
        self.algorithm = algorithm
        self.seed = seed
        self.loss_fn = loss_fn or default_loss(federation.num_classes)
        self.state = state if state is not None else ClientStateStore()
        self.optimizer = trainer.optimizer_settings()
        self._sizes = federation.client_sizes()
        # The client whose data was materialized last: a turn that reads its data twice (q-FFL's
        # loss, then training) generates or maps a lazy client once.
        self._last_client: tuple[int, tuple[Tensor, Tensor, Tensor]] | None = None

    @property
    def layout(self) -> VectorLayout:
        return self.flat.layout

    @property
    def num_clients(self) -> int:
        return self.federation.num_clients

    def client_sizes(self) -> np.ndarray:
        return self._sizes

    def client_data(self, client_id: int) -> tuple[Tensor, Tensor, Tensor]:
        """(x, y, indices): train tensors and the positions of this client's samples in them (the
        whole resident tensors of an in-memory federation; a lazy client's own, materialized now)."""
        if self._last_client is not None and self._last_client[0] == client_id:
            return self._last_client[1]
        data = self.federation.client_data(client_id)
        self._last_client = (client_id, data)
        return data

    def num_steps(self, job: ClientJob) -> int:
        """Local steps `job` takes (its straggler budget included): the trainer's closed form."""
        return self.trainer.num_steps(int(self._sizes[job.client_id]), job.max_steps)

    def run(self, job: ClientJob, start: Tensor, payload: Payload | None = None) -> ClientUpdate:
        """The strategy's client half on `job`'s client, from the weights `start` it downloaded."""
        # Dropout and other stochastic layers draw from the global torch stream: pin it to
        # (seed, round, client) so results do not depend on the order clients are trained in.
        seed_torch(derive_seed(self.seed, "client_torch", job.round, job.client_id), self.device)
        context = ClientContext(self, job, start, payload or {})
        return self.algorithm.local_update(context)


class ClientContext:
    """One client's turn, as the strategy's client half sees it.

    Attributes:
        client_id, round: who trains, and for which round (or downloaded model version).
        start: the global weights the client downloaded (a flat vector; do not modify it).
        payload: what the server sent besides the model (SCAFFOLD's control variate, ...).
        optimizer: the local optimizer's settings (lr, momentum, ...).
        layout: where each parameter lives in a flat weight vector.

    What a client can do: `train` (the trainer's local work, optionally of some parameters only or
    with another loss), `fine_tune` (exactly k steps: a personalization step), `loss`; and, for a
    strategy that runs its own local steps (pFedMe, Per-FedAvg, APFL, MOON), `batches` (the
    trainer's minibatches), `model`, `parameters`, `load`, `make_optimizer`, `loss_fn`. Evaluation
    builds a context too, for a client's personal model and an unseen client's personalization.
    """

    def __init__(self, runner: ClientRunner, job: ClientJob, start: Tensor, payload: Payload) -> None:
        self._runner = runner
        self.job = job
        self.client_id = job.client_id
        self.round = job.round
        self.start = start
        self.payload = payload
        self.optimizer: OptimizerSettings = runner.optimizer
        self.layout: VectorLayout = runner.layout
        self.device = runner.device
        self._state: ClientState | None = None

    @property
    def num_samples(self) -> int:
        return int(self._runner.client_sizes()[self.client_id])

    @property
    def epoch_steps(self) -> int:
        """Local steps of one pass over this client's data (ceil(n / B); 1 with B = -1, 0 without data)."""
        n, batch = self.num_samples, self._runner.trainer.batch_size
        return 0 if n == 0 else (1 if batch == -1 else -(-n // batch))

    @property
    def state(self) -> ClientState:
        """This client's entries in the per-client state store (read on the device)."""
        if self._state is None:
            self._state = self._runner.state.of(self.client_id, self.device)
        return self._state

    def parameter_views(self, vector: Tensor) -> list[Tensor]:
        """Views of `vector` shaped like the model's parameters (in parameter order)."""
        return self.layout.split(vector)[: len(self._runner.flat.params)]

    def _budget(self, max_steps: int | None) -> int | None:
        budget = self.job.max_steps
        if max_steps is not None:
            budget = max_steps if budget is None else min(budget, max_steps)
        return budget

    def train(
        self,
        start: Tensor | None = None,
        hooks: ClientHooks | None = None,
        stream: str = "batches",
        max_steps: int | None = None,
        trainable: Sequence[int] | None = None,
        loss_fn: Callable[..., Tensor] | None = None,
    ) -> ClientUpdate:
        """Local training from `start` (default: the downloaded weights) on this client's data.

        The batch order comes from the (seed, `stream`, round, client) generator, so a second pass
        (Ditto's personal model) can have its own. The step budget is the job's (a straggler's)
        capped by `max_steps`. The update's delta is relative to `start`. `trainable` (indices into
        the model's parameters) trains only those: the others get no gradient, so no optimizer
        (weight decay, momentum) moves them (FedRep's head and body phases, FedBABU's frozen head).
        `loss_fn` replaces the training loss (FedLC's calibrated cross-entropy).
        """
        runner = self._runner
        x, y, indices = runner.client_data(self.client_id)
        if trainable is not None:
            self._require_plain_trainer("trains only some of the model's parameters")
            if not len(trainable):
                max_steps = 0  # nothing to train (a model that is all head): no step, a zero delta
        with self._only(trainable):
            return runner.trainer.train(
                runner.flat,
                self.start if start is None else start,
                x,
                y,
                indices,
                torch_generator(runner.seed, stream, self.round, self.client_id),
                loss_fn or runner.loss_fn,
                client_id=self.client_id,
                hooks=hooks,
                max_steps=self._budget(max_steps),
            )

    @contextlib.contextmanager
    def _only(self, trainable: Sequence[int] | None) -> Iterator[None]:
        """Freeze every parameter not in `trainable` (None: train all) for the duration."""
        params = self._runner.flat.params
        frozen = [] if trainable is None else [p for i, p in enumerate(params) if i not in set(trainable)]
        for p in frozen:
            p.requires_grad_(False)
        try:
            yield
        finally:
            for p in frozen:
                p.requires_grad_(True)

    def fine_tune(
        self,
        start: Tensor,
        steps: int,
        trainable: Sequence[int] | None = None,
        stream: str = "finetune",
        hooks: ClientHooks | None = None,
    ) -> Tensor:
        """`steps` local steps from `start` (more than one pass of local epochs if needed), training only
        `trainable`; returns the weights (a copy). The personalization step of FedAvg-FT, FedBABU and
        of unseen clients; batches from (seed, `stream`/pass, round, client)."""
        weights = start
        done, attempt = 0, 0
        if trainable is not None and not len(trainable):
            steps = 0  # nothing to train
        while done < steps:
            stream_pass = f"{stream}/{attempt}"
            update = self.train(weights, hooks, stream_pass, max_steps=steps - done, trainable=trainable)
            if update.num_steps == 0:
                break  # no data (or a zero budget): nothing to fine-tune on
            weights = self.trained_weights().clone()
            done += update.num_steps
            attempt += 1
        return weights if weights is not start else start.clone()

    def _require_plain_trainer(self, what: str) -> None:
        """Refuse, in one line, a trainer whose steps are not plain minibatch SGD (DP-SGD's are not)."""
        trainer = self._runner.trainer
        if not trainer.vectorizable:
            raise OptionError(
                "trainer",
                type(trainer).__name__,
                f"strategy={self._runner.algorithm.name} {what}; this trainer's steps (DP-SGD's clipped, noised "
                "Poisson batches over every parameter) cannot do that",
            )

    # -- what a strategy's own local loop needs (pFedMe, Per-FedAvg, APFL, MOON) -------------------
    @property
    def model(self) -> nn.Module:
        """The worker model; its parameters are views of the flat weights (`load` moves them)."""
        return self._runner.model

    @property
    def parameters(self) -> list[Tensor]:
        """The worker model's parameters (views of its flat weights), in layout order."""
        return self._runner.flat.params

    @property
    def loss_fn(self) -> Callable[..., Tensor]:
        return self._runner.loss_fn

    def load(self, vector: Tensor) -> None:
        """Copy flat weights into the worker model (in place)."""
        self._runner.flat.load(vector)

    def make_optimizer(self, params: Sequence[Tensor]) -> torch.optim.Optimizer:
        """A fresh local optimizer over `params`, as the trainer makes one (its factory and lr)."""
        return self._runner.trainer.optimizer(list(params), lr=self._runner.trainer.lr)

    def labels(self) -> Tensor:
        """This client's training labels (on the device)."""
        _, y, indices = self._runner.client_data(self.client_id)
        return y[indices]

    def batches(
        self, stream: str = "batches", max_steps: int | None = None, steps: int | None = None
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """The (x, y) minibatches of this client's local work, exactly as `LocalTrainer` draws them
        from the (seed, `stream`, round, client) generator, within the job's step budget capped by
        `max_steps`: for a strategy that runs its own local steps on plain minibatches. `steps`
        instead asks for exactly that many batches (as many epochs as it takes; a personalization
        step's budget)."""
        runner = self._runner
        trainer = runner.trainer
        self._require_plain_trainer("runs its own local steps on plain minibatches")
        x, y, indices = runner.client_data(self.client_id)
        n = len(indices)
        batch = n if trainer.batch_size == -1 else trainer.batch_size
        budget = trainer.num_steps(n, self._budget(max_steps)) if steps is None else (steps if n else 0)
        generator = torch_generator(runner.seed, stream, self.round, self.client_id)
        taken = 0
        for perm in epoch_orders(n, batch, budget, generator):
            order = indices[perm.to(indices.device)]
            for start in range(0, n, batch):
                if taken == budget:
                    return
                ix = order[start : start + batch]
                taken += 1
                yield x[ix], y[ix]

    def trained_weights(self) -> Tensor:
        """The worker model's weights after the last `train` (a view: copy it to keep it)."""
        return self._runner.flat.vector

    def loss(self, vector: Tensor | None = None) -> Tensor:
        """Mean training loss of the weights `vector` (default: the downloaded ones) on this
        client's whole training set, as a 0-d float64 tensor (q-FFL's F_k(w_t))."""
        runner = self._runner
        runner.flat.load(self.start if vector is None else vector)
        x, y, indices = runner.client_data(self.client_id)
        return mean_loss(runner.model, x, y, indices, runner.loss_fn)
