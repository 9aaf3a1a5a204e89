"""Optimizers torch lacks, as real `torch.optim.Optimizer`s (so their state checkpoints).

`Yogi` (Zaheer et al. 2018, "Adaptive Methods for Nonconvex Optimization") is FedYogi's server
optimizer, and `AdamNoBiasCorrection` FedAdam's in the form Reddi et al. 2021 ("Adaptive
Federated Optimization", Algorithm 2) print: no bias correction, v_{-1} = tau^2; `AdagradMomentum`
is FedAdagrad with Algorithm 2's first moment (torch's Adagrad has none). All three are one
adaptive step with a different second-moment rule (`_AdaptiveOptimizer`).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor
from torch.optim import Optimizer


class _AdaptiveOptimizer(Optimizer):
    """m_t = beta1 m + (1 - beta1) g; v_t by `second_moment`; x -= lr m_hat / (sqrt(v_hat) + eps).

    m_hat, v_hat are the bias-corrected moments (divided by 1 - beta^t) when `bias_correction`,
    else m_t, v_t themselves. v starts at `initial_accumulator_value`, m at 0.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict],
        lr: float,
        betas: tuple[float, float],
        eps: float,
        initial_accumulator_value: float,
        bias_correction: bool,
    ) -> None:
        name = type(self).__name__
        if lr <= 0:
            raise ValueError(f"{name} lr={lr} must be > 0")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"{name} betas={tuple(betas)} must be in [0, 1)")
        if eps <= 0:
            raise ValueError(f"{name} eps={eps} must be > 0")
        if initial_accumulator_value < 0:
            raise ValueError(f"{name} initial_accumulator_value={initial_accumulator_value} must be >= 0")
        defaults = dict(
            lr=lr,
            betas=(float(betas[0]), float(betas[1])),
            eps=eps,
            initial_accumulator_value=initial_accumulator_value,
            bias_correction=bias_correction,
        )
        super().__init__(params, defaults)

    @staticmethod
    def second_moment(v: Tensor, grad: Tensor, beta2: float) -> None:
        """Update v in place from the gradient."""
        raise NotImplementedError

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001 - torch's signature
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.full_like(p, group["initial_accumulator_value"])
                state["step"] += 1
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.mul_(beta1).add_(grad, alpha=1 - beta1)
                self.second_moment(v, grad, beta2)
                if group["bias_correction"]:
                    step = state["step"]
                    m_hat = m / (1 - beta1**step)
                    v_hat = v / (1 - beta2**step)
                else:
                    m_hat, v_hat = m, v
                p.addcdiv_(m_hat, v_hat.sqrt().add_(group["eps"]), value=-group["lr"])
        return loss


class Yogi(_AdaptiveOptimizer):
    """Adam with an additive second-moment update that cannot blow up the effective step.

    For gradient g (the server's pseudo-gradient in FedYogi), per coordinate:

        m_t = beta1 * m_{t-1} + (1 - beta1) * g
        v_t = v_{t-1} - (1 - beta2) * sign(v_{t-1} - g^2) * g^2
        x_t = x_{t-1} - lr * m_hat / (sqrt(v_hat) + eps)

    with m_hat = m_t / (1 - beta1^t) and v_hat = v_t / (1 - beta2^t) when `bias_correction`
    (as Adam, and as the TensorFlow optimizers of Reddi et al.'s experiments), else m_t and v_t
    as printed in Reddi et al.'s Algorithm 2. Adam's v_t = beta2 v + (1 - beta2) g^2 moves v by
    (1 - beta2)(g^2 - v), a multiplicative change; Yogi moves it by (1 - beta2) g^2 in the
    direction of g^2, so v shrinks slowly after a large gradient.

    Args:
        lr: learning rate (FedYogi's server learning rate eta).
        betas: (beta1, beta2).
        eps: added to sqrt(v_hat) (FedYogi's adaptivity tau).
        initial_accumulator_value: v_0 (Zaheer et al. use 1e-6).
        bias_correction: divide the moments by (1 - beta^t).
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict],
        lr: float = 1e-2,
        betas: tuple[float, float] = (0.9, 0.99),
        eps: float = 1e-3,
        initial_accumulator_value: float = 1e-6,
        bias_correction: bool = True,
    ) -> None:
        super().__init__(params, lr, betas, eps, initial_accumulator_value, bias_correction)

    @staticmethod
    def second_moment(v: Tensor, grad: Tensor, beta2: float) -> None:
        grad_sq = grad * grad
        v.addcmul_(torch.sign(v - grad_sq), grad_sq, value=-(1 - beta2))


class AdamNoBiasCorrection(_AdaptiveOptimizer):
    """Adam exactly as Reddi et al. 2021 print FedAdam (Algorithm 2), per coordinate:

        m_t = beta1 * m_{t-1} + (1 - beta1) * g
        v_t = beta2 * v_{t-1} + (1 - beta2) * g^2
        x_t = x_{t-1} - lr * m_t / (sqrt(v_t) + eps)

    with m_{-1} = 0 and v_{-1} = `initial_accumulator_value` (the paper's tau^2), and no bias
    correction (torch.optim.Adam divides by 1 - beta^t and starts v at 0).

    Args:
        lr: learning rate (FedAdam's server learning rate eta).
        betas: (beta1, beta2).
        eps: added to sqrt(v_t) (FedAdam's adaptivity tau).
        initial_accumulator_value: v_{-1}.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict],
        lr: float = 1e-2,
        betas: tuple[float, float] = (0.9, 0.99),
        eps: float = 1e-3,
        initial_accumulator_value: float = 1e-6,
    ) -> None:
        super().__init__(params, lr, betas, eps, initial_accumulator_value, bias_correction=False)

    @staticmethod
    def second_moment(v: Tensor, grad: Tensor, beta2: float) -> None:
        v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)


class AdagradMomentum(_AdaptiveOptimizer):
    """Adagrad with a first moment, as Reddi et al. 2021 print FedAdagrad (Algorithm 2), per coordinate:

        m_t = beta1 * m_{t-1} + (1 - beta1) * g
        v_t = v_{t-1} + g^2
        x_t = x_{t-1} - lr * m_t / (sqrt(v_t) + eps)

    with m_{-1} = 0 and v_{-1} = `initial_accumulator_value` (the paper's tau^2), no bias
    correction. beta1 = 0 is `torch.optim.Adagrad` (with lr_decay 0); FLamby's FedAdagrad uses
    beta1 = 0.9 and v_{-1} = 0.

    Args:
        lr: learning rate (FedAdagrad's server learning rate eta).
        beta1: decay of the first moment, in [0, 1).
        eps: added to sqrt(v_t) (FedAdagrad's adaptivity tau).
        initial_accumulator_value: v_{-1}.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict],
        lr: float = 1e-1,
        beta1: float = 0.9,
        eps: float = 1e-3,
        initial_accumulator_value: float = 1e-6,
    ) -> None:
        # beta2 is unused: Adagrad's second moment is a plain sum.
        super().__init__(params, lr, (beta1, 0.0), eps, initial_accumulator_value, bias_correction=False)

    @staticmethod
    def second_moment(v: Tensor, grad: Tensor, beta2: float) -> None:
        v.addcmul_(grad, grad)
