"""pFedMe (T. Dinh, Tran and Nguyen 2020, "Personalized Federated Learning with Moreau Envelopes",
Algorithm 1).

Client k's personalized model is the proximal point of its loss around the global model,

    theta_k(w) = argmin_theta  f_k(theta) + (lambda / 2) ||theta - w||^2,

and the federation minimizes the average Moreau envelope F_k(w) = min_theta (...). Its gradient is
lambda (w - theta_k(w)), so a client's local step on a minibatch D is

    theta <- K steps of  theta - personal_lr (grad f_k(theta; D) + lambda (theta - w))   (from theta)
    w     <- w - eta lambda (w - theta)

for the trainer's number of steps R (eta the trainer's lr), after which it sends w - w_t; the
server moves by beta times the mean change, w_{t+1} = (1 - beta) w_t + beta mean_k w_k
(`server_lr` is beta; beta = 1 is averaging). theta is warm-started across the turn's minibatches
(the paper's code) from the downloaded w. The paper's MNIST setting: lambda = 15, K = 5,
personal_lr = 0.1, eta = 0.005, batches of 20, R = 20.

Each client keeps its last theta (the `personal` entry) and predicts with it; a client not yet
sampled, and an unseen client, solve the inner problem around the current global model for
`finetune_steps` minibatches of K steps each. BatchNorm statistics of the sent model are those of
theta's forward passes.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fedtorch.aggregators import Aggregator
from fedtorch.client import ClientUpdate
from fedtorch.errors import check_int, check_number
from fedtorch.runner import ClientContext
from fedtorch.strategies.base import StrategyContext
from fedtorch.strategies.local_steps import StepStats, finish, require_plain_sgd
from fedtorch.strategies.personalization import PersonalizedStrategy

PERSONAL = "personal"


class PFedMe(PersonalizedStrategy):
    """Moreau-envelope personalization: inner proximal problems, outer steps on w.

    Args:
        lam: lambda, the strength of the pull between theta_k and w (paper: 15 on MNIST).
        inner_steps: K, gradient steps on the inner problem per minibatch (paper: 5).
        personal_lr: the inner problem's learning rate (paper: 0.1 on MNIST).
        finetune_steps: minibatches of the inner solver for a client without a theta.
        server_lr: beta (1: averaging; the paper also runs 2).
        aggregator, weighted: FedAvg's server half.
    """

    name = "pfedme"

    def __init__(
        self,
        lam: float = 15.0,
        inner_steps: int = 5,
        personal_lr: float = 0.1,
        finetune_steps: int = 20,
        server_lr: float = 1.0,
        aggregator: Aggregator | None = None,
        weighted: bool = True,
    ) -> None:
        super().__init__(None, finetune_steps, server_lr=server_lr, aggregator=aggregator, weighted=weighted)
        self.lam = check_number("strategy.lam", lam, 0.0, low_open=True)
        self.inner_steps = check_int("strategy.inner_steps", inner_steps, 1)
        self.personal_lr = check_number("strategy.personal_lr", personal_lr, 0.0, low_open=True)

    def setup(self, context: StrategyContext, global_vector: Tensor) -> None:
        super().setup(context, global_vector)
        require_plain_sgd(self.name, context.local_optimizer)
        self.lr = context.local_optimizer.lr

    def solve_inner(self, client: ClientContext, w: Tensor, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """K steps on f_k(theta; (x, y)) + lambda/2 ||theta - w||^2 from the worker model's weights
        (theta, updated in place); returns the first step's loss and output (the step's statistics)."""
        params, model = client.parameters, client.model
        anchors = client.parameter_views(w)
        first: tuple[Tensor, Tensor] | None = None
        for _ in range(self.inner_steps):
            out = model(x)
            loss = client.loss_fn(out, y)
            grads = torch.autograd.grad(loss, params)
            if first is None:
                first = (loss.detach(), out.detach())
            with torch.no_grad():
                for p, g, a in zip(params, grads, anchors):
                    p -= self.personal_lr * (g + self.lam * (p - a))
        assert first is not None
        return first

    # -- client half ------------------------------------------------------------------------------
    def local_update(self, client: ClientContext) -> ClientUpdate:
        start = client.start
        n = client.layout.num_params
        w = start.clone()  # the local copy of the global model; theta lives in the worker model
        client.load(start)
        client.model.train()
        stats = StepStats()
        for x, y in client.batches():
            loss, out = self.solve_inner(client, w, x, y)
            theta = client.trained_weights()
            w[:n] -= self.lr * self.lam * (w[:n] - theta[:n])
            stats.add(loss, out, y)
        theta = client.trained_weights()
        client.state.put(PERSONAL, theta)
        w[n:] = theta[n:]  # buffers (BatchNorm statistics): theta's
        return finish(client, start, w, stats)

    # -- personalization ------------------------------------------------------------------------
    def personal_model(self, client: ClientContext) -> Tensor:
        stored = client.state.get(PERSONAL)
        return self.adapt(client) if stored is None else stored

    def adapt(self, client: ClientContext) -> Tensor:
        """theta(w_t) by the inner solver on `finetune_steps` minibatches, w fixed at the global model."""
        client.load(client.start)
        client.model.train()
        for x, y in client.batches(stream="finetune", steps=self.finetune_steps):
            self.solve_inner(client, client.start, x, y)
        return client.trained_weights().clone()
