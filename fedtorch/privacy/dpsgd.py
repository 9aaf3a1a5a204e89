"""Local (sample-level) differential privacy: DP-SGD on every client.

DP-SGD (Abadi et al. 2016, "Deep Learning with Differential Privacy"): each step samples a
batch, computes one gradient *per sample*, clips each to L2 norm C, sums them, adds Gaussian noise
with std sigma*C and divides by the expected batch size. Per-sample gradients come from
`torch.func` (`vmap` over `grad` of the single-sample loss, with `functional_call` on the client's
model), so no extra dependency is needed.

The batches are Poisson-sampled (each of the client's n samples independently with probability
q = B / n; empty batches still take a noise-only step), because that is the sampling the
subsampled-Gaussian accountant analyses; a shuffled fixed-size batch would be accounted wrongly.
`LocalDPAccounting` composes, per client, one `PoissonSampled(q_k, Gaussian(sigma))` event per
local step, and reports the worst client's epsilon: each client's dataset is protected at the
sample level (not the user level, which is what central DP-FedAvg protects).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from fedtorch.client import ClientHooks, ClientUpdate, LocalTrainer, OptimizerFactory
from fedtorch.errors import OptionError
from fedtorch.params import FlatModel
from fedtorch.pipeline import PipelineContext, StepRecord, UpdateTransform
from fedtorch.privacy.accounting import Sampling, compute_epsilon


class DPSGDTrainer(LocalTrainer):
    """`LocalTrainer` with DP-SGD steps: Poisson batches, per-sample clipping, Gaussian noise.

    Args:
        noise_multiplier: sigma; the noise std is sigma * max_grad_norm.
        max_grad_norm: C, the per-sample gradient clipping norm.
        optimizer, lr, epochs, batch_size, max_steps: as `LocalTrainer`; `batch_size` is the
            *expected* batch size B (the sampling rate is B / n), and an epoch is ceil(n / B) steps.
    """

    vectorizable = False  # per-sample clipping and Poisson batches: no batched backend reproduces it

    def __init__(
        self,
        noise_multiplier: float = 1.0,
        max_grad_norm: float = 1.0,
        optimizer: OptimizerFactory | None = None,
        lr: float = 0.01,
        epochs: int = 1,
        batch_size: int = 10,
        max_steps: int | None = None,
    ) -> None:
        super().__init__(optimizer=optimizer, lr=lr, epochs=epochs, batch_size=batch_size, max_steps=max_steps)
        if noise_multiplier < 0:
            raise ValueError(f"noise_multiplier={noise_multiplier} must be >= 0")
        if max_grad_norm <= 0:
            raise ValueError(f"max_grad_norm={max_grad_norm} must be > 0")
        self.noise_multiplier = float(noise_multiplier)
        self.max_grad_norm = float(max_grad_norm)

    @classmethod
    def from_trainer(cls, trainer: LocalTrainer, noise_multiplier: float, max_grad_norm: float) -> DPSGDTrainer:
        """The DP-SGD version of a plain `LocalTrainer` (same optimizer, lr, epochs, batch size)."""
        if type(trainer) is not LocalTrainer:
            raise ValueError(f"local DP-SGD replaces the plain LocalTrainer; cannot convert {type(trainer).__name__}")
        return cls(
            noise_multiplier=noise_multiplier,
            max_grad_norm=max_grad_norm,
            optimizer=trainer.optimizer,
            lr=trainer.lr,
            epochs=trainer.epochs,
            batch_size=trainer.batch_size,
            max_steps=trainer.max_steps,
        )

    def sampling_rate(self, num_samples: int) -> float:
        """q = B / n, the Poisson inclusion probability of each sample in each step."""
        batch = num_samples if self.batch_size == -1 else min(self.batch_size, num_samples)
        return batch / num_samples

    def train(
        self,
        flat: FlatModel,
        global_vector: Tensor,
        x: Tensor,
        y: Tensor,
        indices: Tensor,
        generator: torch.Generator,
        loss_fn: Callable[[Tensor, Tensor], Tensor],
        client_id: int = 0,
        hooks: ClientHooks | None = None,
        max_steps: int | None = None,
    ) -> ClientUpdate:
        hooks = hooks or ClientHooks()
        model: nn.Module = flat.module
        if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
            raise ValueError("DP-SGD needs per-sample gradients; BatchNorm mixes samples (use GroupNorm)")
        flat.load(global_vector)
        params = flat.params
        names = [name for name, _ in model.named_parameters()]
        buffers = dict(model.named_buffers())
        global_params = flat.layout.split(global_vector)[: len(params)]
        optimizer = self.optimizer(params, lr=self.lr)
        model.train()
        hooks.on_train_start(params, global_params)

        n = len(indices)
        q = self.sampling_rate(n)
        expected_batch = q * n
        budget = self.num_steps(n, max_steps)
        clip, std = self.max_grad_norm, self.noise_multiplier * self.max_grad_norm
        # Noise has its own stream, derived from the client's (seed, round, client) generator.
        noise_gen = torch.Generator().manual_seed(int(torch.randint(2**62, (1,), generator=generator)))

        def sample_loss(weights: dict[str, Tensor], xs: Tensor, ys: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor]]:
            out = functional_call(model, (weights, buffers), (xs.unsqueeze(0),))
            loss = loss_fn(out, ys.unsqueeze(0))
            return loss, (loss.detach(), out.detach().squeeze(0))

        per_sample_grads = vmap(grad(sample_loss, has_aux=True), in_dims=(None, 0, 0))
        classify = y.dtype == torch.int64
        loss_sum = torch.zeros((), device=x.device)
        correct = torch.zeros((), device=x.device, dtype=torch.int64)
        seen = 0
        for _ in range(budget):
            chosen = torch.rand(n, generator=generator) < q
            batch_ix = indices[chosen.to(indices.device)]
            summed = [torch.zeros_like(p) for p in params]
            if len(batch_ix) > 0:
                weights = {name: p.detach() for name, p in zip(names, params)}
                grads, (losses, outs) = per_sample_grads(weights, x[batch_ix], y[batch_ix])
                per_sample = [grads[name] for name in names]
                norms = torch.sqrt(sum(g.reshape(len(batch_ix), -1).pow(2).sum(1) for g in per_sample))
                factor = torch.clamp(clip / torch.clamp(norms, min=1e-12), max=1.0)
                summed = [torch.einsum("b,b...->...", factor, g) for g in per_sample]
                seen += len(batch_ix)
                loss_sum += losses.sum()
                if classify:
                    correct += (outs.argmax(-1) == y[batch_ix]).sum()
            for p, s in zip(params, summed):
                noise = torch.randn(p.shape, generator=noise_gen).to(device=p.device, dtype=p.dtype) * std
                p.grad = (s + noise) / expected_batch
            if hooks.adjusts_gradients:
                hooks.after_backward(params, [p.grad for p in params], global_params)
            optimizer.step()

        metrics = {"loss_sum": loss_sum, "samples_seen": torch.tensor(seen)}
        if classify:
            metrics["correct"] = correct
        update = ClientUpdate(
            client_id=client_id,
            delta=flat.vector - global_vector,
            num_samples=n,
            num_steps=budget,
            metrics=metrics,
        )
        hooks.on_train_end(update)
        return update


class LocalDPAccounting(UpdateTransform):
    """Per-client accounting of local DP-SGD: the epsilon of the worst client so far.

    Client k's local steps are `PoissonSampled(q_k, Gaussian(sigma))` events with q_k = B / n_k;
    its epsilon after s steps is one library call. Epsilon grows with both q and s, so the worst
    client is among the Pareto-maximal (q_k, s_k) pairs, and only those are computed (cached).
    The transform counts steps (`update.num_steps`); it does not change the update.

    Args:
        trainer: the DP-SGD trainer (its sigma and sampling rates).
        client_sizes: n_k of every client (the next-round bound covers clients yet to train);
            None: the pipeline context's, at set-up.
        delta: the target delta of every client's sample-level guarantee.
        method: "rdp" or "pld".
    """

    group = "privacy"

    def __init__(
        self,
        trainer: DPSGDTrainer,
        client_sizes: Sequence[int] | None = None,
        delta: float = 1e-5,
        method: str = "rdp",
        target_epsilon: float | None = None,
    ) -> None:
        if not 0.0 < delta < 1.0:
            raise ValueError(f"delta={delta} must be in (0, 1)")
        self.trainer = trainer
        self.delta = float(delta)
        self.method = method
        self.target_epsilon = target_epsilon
        self.sizes: list[int] = []
        self.steps: list[int] = []
        if client_sizes is not None:
            self._set_sizes(client_sizes)
        self._round: dict[int, int] = {}
        self._cache: dict[tuple[float, int], float] = {}

    def _epsilon(self, rate: float, steps: int) -> float:
        key = (rate, steps)
        if key not in self._cache:
            sampling = Sampling.poisson(rate)
            self._cache[key] = compute_epsilon(sampling, self.trainer.noise_multiplier, steps, self.delta, self.method)
        return self._cache[key]

    def _worst(self, pairs: set[tuple[float, int]]) -> float:
        dominated = lambda q, s: any(q2 >= q and s2 >= s and (q2, s2) != (q, s) for q2, s2 in pairs)  # noqa: E731
        front = [(q, s) for q, s in pairs if s > 0 and not dominated(q, s)]
        return max((self._epsilon(q, s) for q, s in front), default=0.0)

    def _set_sizes(self, client_sizes: Sequence[int]) -> None:
        self.sizes = [int(n) for n in client_sizes]
        self.steps = [0] * len(self.sizes)

    def setup(self, context: PipelineContext) -> None:
        if not self.sizes:
            self._set_sizes(context.client_sizes.tolist())
        if self.target_epsilon is not None and self.next_epsilon() > self.target_epsilon:
            raise OptionError(
                "privacy.target_epsilon",
                self.target_epsilon,
                f"one round of local DP-SGD already costs epsilon {self.next_epsilon():.4g}: raise "
                "privacy.noise_multiplier, lower trainer.epochs or trainer.batch_size, or raise the target",
            )

    def begin(self, record: StepRecord) -> None:
        self._round = {}

    def on_update(self, update: ClientUpdate, record: StepRecord) -> ClientUpdate:
        self.steps[update.client_id] += update.num_steps
        self._round[update.client_id] = update.num_steps
        return update

    def merge(self, group: dist.ProcessGroup | None = None) -> None:
        # Add the steps of the clients the other processes trained this round.
        parts: list[Any] = [None] * dist.get_world_size(group)
        dist.all_gather_object(parts, self._round, group=group)
        mine = self._round
        for part in parts:
            for k, steps in part.items():
                if k not in mine:
                    self.steps[k] += steps

    @property
    def epsilon(self) -> float:
        """The largest epsilon of any client so far."""
        return self._worst({(self.trainer.sampling_rate(n), s) for n, s in zip(self.sizes, self.steps)})

    def next_epsilon(self) -> float:
        """The largest epsilon any client could have after one more round of full local work."""
        return self._worst(
            {(self.trainer.sampling_rate(n), s + self.trainer.num_steps(n)) for n, s in zip(self.sizes, self.steps)}
        )

    def step_metrics(self) -> dict[str, float]:
        epsilon = self.epsilon
        return {"privacy/epsilon": epsilon, "privacy/delta": self.delta} if math.isfinite(epsilon) else {}

    def state_dict(self) -> dict[str, Any]:
        return {"steps": list(self.steps)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps = [int(s) for s in state["steps"]]
