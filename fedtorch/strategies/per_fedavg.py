"""Per-FedAvg (Fallah, Mokhtari and Ozdaglar 2020, "Personalized Federated Learning with
Theoretical Guarantees: A Model-Agnostic Meta-Learning Approach", Algorithm 1).

The federation learns an initialization that performs well after one step of local gradient
descent: it minimizes the average of F_k(w - alpha grad f_k(w)). A local step on three independent
minibatches D, D', D'' (learning rates alpha inside, beta = the trainer's lr outside) is

    w' = w - alpha grad f_k(w; D)
    first order (FO):   w <- w - beta grad f_k(w'; D')
    Hessian-free (HF):  w <- w - beta (I - alpha H_k(w; D'')) grad f_k(w'; D'),

where the Hessian-vector product is the finite difference
H_k(w; D'') g ~ [grad f_k(w + delta g; D'') - grad f_k(w - delta g; D'')] / (2 delta) (exact for a
quadratic loss). D comes from the client's usual batch stream, D' and D'' from streams of their
own, one minibatch each per step; the trainer's step budget counts the outer steps. The server is
FedAvg.

Evaluation: every client (seen or unseen) adapts the global model by `adapt_steps` steps of SGD at
learning rate alpha on minibatches of its train data (the paper's one-step adaptation) and
predicts with the result. Nothing is kept between turns.
"""

from __future__ import annotations

import itertools

from torch import Tensor

from fedtorch.aggregators import Aggregator
from fedtorch.client import ClientUpdate
from fedtorch.errors import check_choice, check_int, check_number
from fedtorch.runner import ClientContext
from fedtorch.strategies.base import StrategyContext
from fedtorch.strategies.local_steps import StepStats, finish, grad_at, require_plain_sgd
from fedtorch.strategies.personalization import PersonalizedStrategy


class PerFedAvg(PersonalizedStrategy):
    """MAML-style FedAvg with one-step adaptation for evaluation.

    Args:
        alpha: the inner (adaptation) learning rate (the paper: 0.001 to 0.01 with beta larger).
        variant: `fo` (first order) or `hf` (Hessian-free).
        delta: the finite difference of the HF variant's Hessian-vector product.
        adapt_steps: SGD steps at rate alpha of the evaluation adaptation (the paper: 1).
        server_lr, aggregator, weighted: FedAvg's server half.
    """

    name = "per_fedavg"
    keeps_client_state = False

    def __init__(
        self,
        alpha: float = 0.01,
        variant: str = "fo",
        delta: float = 1e-3,
        adapt_steps: int = 1,
        server_lr: float = 1.0,
        aggregator: Aggregator | None = None,
        weighted: bool = True,
    ) -> None:
        super().__init__(None, adapt_steps, server_lr=server_lr, aggregator=aggregator, weighted=weighted)
        self.alpha = check_number("strategy.alpha", alpha, 0.0, low_open=True)
        self.variant = check_choice("strategy.variant", variant, ("fo", "hf"))
        self.delta = check_number("strategy.delta", delta, 0.0, low_open=True)
        self.adapt_steps = check_int("strategy.adapt_steps", adapt_steps, 0)

    def setup(self, context: StrategyContext, global_vector: Tensor) -> None:
        super().setup(context, global_vector)
        require_plain_sgd(self.name, context.local_optimizer)
        self.beta = context.local_optimizer.lr

    def meta_step(
        self, client: ClientContext, w: Tensor, batch: tuple[Tensor, Tensor], outer: tuple[Tensor, Tensor],
        hessian: tuple[Tensor, Tensor] | None,
    ) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
        """One Per-FedAvg step from `w` (a flat vector, updated in place); returns the loss and output
        on the inner batch at w, for the step's statistics."""
        n = client.layout.num_params
        loss, out, g1 = grad_at(client, w, *batch)
        inner = w.clone()
        inner[:n] -= self.alpha * g1
        _, _, g2 = grad_at(client, inner, *outer)
        direction = g2
        if hessian is not None:
            plus, minus = w.clone(), w.clone()
            plus[:n] += self.delta * g2
            minus[:n] -= self.delta * g2
            hvp = (grad_at(client, plus, *hessian)[2] - grad_at(client, minus, *hessian)[2]) / (2 * self.delta)
            direction = g2 - self.alpha * hvp
        w[:n] -= self.beta * direction
        return loss, out, direction

    # -- client half ------------------------------------------------------------------------------
    def local_update(self, client: ClientContext) -> ClientUpdate:
        start = client.start
        w = start.clone()
        client.model.train()
        stats = StepStats()
        outer = client.batches(stream="perfedavg_outer")
        hessian = client.batches(stream="perfedavg_hessian") if self.variant == "hf" else itertools.repeat(None)
        for batch, outer_batch, hessian_batch in zip(client.batches(), outer, hessian):
            loss, out, _ = self.meta_step(client, w, batch, outer_batch, hessian_batch)
            stats.add(loss, out, batch[1])
        return finish(client, start, w, stats)

    # -- personalization ------------------------------------------------------------------------
    def personal_model(self, client: ClientContext) -> Tensor:
        return self.adapt(client)

    def adapt(self, client: ClientContext) -> Tensor:
        """`adapt_steps` SGD steps at rate alpha from the global model on the client's minibatches."""
        n = client.layout.num_params
        w = client.start.clone()
        client.model.train()  # the mode of training's gradients (dropout, batch statistics)
        for x, y in client.batches(stream="perfedavg_adapt", steps=self.adapt_steps):
            w[:n] -= self.alpha * grad_at(client, w, x, y)[2]
        return w
