"""APFL (Deng, Kamani and Mahdavi 2020, "Adaptive Personalized Federated Learning", Algorithm 1).

Every client keeps a local model v_k and a mixing weight alpha_k, and predicts with the mixture

    vbar_k = alpha_k v_k + (1 - alpha_k) w.

At every local step on a minibatch xi, with g = grad F_k(vbar_k; xi) and learning rate eta:

    w       <- w - eta grad F_k(w; xi)                    (plain local SGD: what the server gets)
    v_k     <- v_k - eta alpha_k g                        (grad of F_k(vbar) in v is alpha g)
    alpha_k <- clip_[0,1](alpha_k - eta_alpha <v_k - w, g>)    (only with `adaptive_alpha`)

all from the values before the step. The server averages w as FedAvg does, so the global model is
FedAvg's bit for bit (the w steps are the trainer's steps, on the same batches); with alpha = 0 and
no adaptation the personal model is the global model. v_k and alpha_k are client state; a first
turn starts v_k at the global model and alpha_k at `alpha`.

Evaluation scores the mixture of the client's v_k and alpha_k with the *current* global model (the
w a client holds after downloading it), the model the paper personalizes with. An unseen client
runs the v and alpha steps for `finetune_steps` steps against the frozen global model.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fedtorch.aggregators import Aggregator
from fedtorch.client import ClientUpdate
from fedtorch.errors import check_number
from fedtorch.runner import ClientContext
from fedtorch.strategies.base import StrategyContext
from fedtorch.strategies.local_steps import StepStats, finish, grad_at
from fedtorch.strategies.personalization import PersonalizedStrategy

PERSONAL, ALPHA = "personal", "alpha"


class APFL(PersonalizedStrategy):
    """Adaptive mixtures of a local and the global model.

    Args:
        alpha: the mixing weight a client starts with (the paper: 0.25 or adaptive from 0.01).
        adaptive_alpha: learn alpha_k by gradient descent (the paper's adaptive APFL).
        alpha_lr: alpha's learning rate (default: the trainer's lr).
        finetune_steps: an unseen client's v/alpha steps.
        server_lr, aggregator, weighted: FedAvg's server half.
    """

    name = "apfl"

    def __init__(
        self,
        alpha: float = 0.25,
        adaptive_alpha: bool = True,
        alpha_lr: float | None = None,
        finetune_steps: int = 20,
        server_lr: float = 1.0,
        aggregator: Aggregator | None = None,
        weighted: bool = True,
    ) -> None:
        super().__init__(None, finetune_steps, server_lr=server_lr, aggregator=aggregator, weighted=weighted)
        self.alpha = check_number("strategy.alpha", alpha, 0.0, 1.0)
        self.adaptive_alpha = bool(adaptive_alpha)
        self.alpha_lr = check_number("strategy.alpha_lr", alpha_lr, 0.0, none=True)

    def setup(self, context: StrategyContext, global_vector: Tensor) -> None:
        super().setup(context, global_vector)
        self.lr = context.local_optimizer.lr
        self.eta_alpha = self.lr if self.alpha_lr is None else self.alpha_lr

    def _state(self, client: ClientContext) -> tuple[Tensor, Tensor]:
        v = client.state.get(PERSONAL, default=lambda: client.start.clone())
        alpha = client.state.get(ALPHA, default=lambda: torch.tensor(self.alpha, dtype=torch.float64))
        return v, alpha.to(client.start.device, torch.float64)

    def _personal_step(
        self, client: ClientContext, v: Tensor, alpha: Tensor, w: Tensor, x: Tensor, y: Tensor
    ) -> Tensor:
        """One v (in place) and alpha step against the weights `w`; returns the new alpha."""
        n = client.layout.num_params
        a = alpha.to(v.dtype)
        vbar = a * v + (1 - a) * w
        _, _, g = grad_at(client, vbar, x, y)
        new_alpha = alpha
        if self.adaptive_alpha:
            dot = torch.dot((v[:n] - w[:n]).double(), g.double())
            new_alpha = (alpha - self.eta_alpha * dot).clamp(0.0, 1.0)
        v[:n] -= self.lr * a * g
        return new_alpha

    # -- client half ------------------------------------------------------------------------------
    def local_update(self, client: ClientContext) -> ClientUpdate:
        v, alpha = self._state(client)
        start = client.start
        client.load(start)
        model, params = client.model, client.parameters
        optimizer = client.make_optimizer(params)
        model.train()
        stats = StepStats()
        for x, y in client.batches():
            # The personal step reads w before its own step (the paper's simultaneous update).
            alpha = self._personal_step(client, v, alpha, client.trained_weights().detach(), x, y)
            out = model(x)  # w's step: exactly LocalTrainer's (same batches, same optimizer)
            loss = client.loss_fn(out, y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            stats.add(loss, out, y)
        client.state.put(PERSONAL, v)
        client.state.put(ALPHA, alpha)
        return finish(client, start, client.trained_weights(), stats)

    # -- personalization ------------------------------------------------------------------------
    def mixture(self, v: Tensor, alpha: Tensor, w: Tensor) -> Tensor:
        a = alpha.to(w.dtype)
        return a * v + (1 - a) * w

    def personal_model(self, client: ClientContext) -> Tensor:
        if PERSONAL not in client.state:
            return client.start
        v, alpha = self._state(client)
        return self.mixture(v, alpha, client.start)

    def adapt(self, client: ClientContext) -> Tensor:
        v, alpha = client.start.clone(), torch.tensor(self.alpha, dtype=torch.float64, device=client.start.device)
        for x, y in client.batches(stream="finetune", steps=self.finetune_steps):
            alpha = self._personal_step(client, v, alpha, client.start, x, y)
        return self.mixture(v, alpha, client.start)
