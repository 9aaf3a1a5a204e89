"""The server-optimizer family (Reddi et al. 2021, "Adaptive Federated Optimization").

Every member is FedAvg's client side plus a different torch optimizer stepping the global model
on the pseudo-gradient -Delta_t (Delta_t the weighted mean of the client deltas):

    FedAvgM     SGD with momentum beta                (Hsu et al. 2019, "Measuring the Effects of
                                                      Non-Identical Data Distribution ...")
    FedAdam     Adam(betas, eps = tau)
    FedYogi     Yogi(betas, eps = tau)                (fedtorch.optim.Yogi)
    FedAdagrad  Adagrad(eps = tau, v_0 = tau^2)

Reddi et al.'s Algorithm 2 prints the adaptive updates without bias correction and with
v_{-1} = tau^2: x += eta * m_t / (sqrt(v_t) + tau). FedAdam and FedYogi offer both forms
(`bias_correction`): True is the bias-corrected form of `torch.optim.Adam`, x += eta * m_hat /
(sqrt(v_hat) + tau) with m_hat = m_t / (1 - beta1^t), v_hat = v_t / (1 - beta2^t) (FLSim's
choice); False is Algorithm 2 as written (`fedtorch.optim.AdamNoBiasCorrection`, and Yogi's
option). The Keras/TensorFlow Adam of Reddi et al.'s experiments is a third variant: it scales the
learning rate by sqrt(1 - beta2^t) / (1 - beta1^t) and adds eps to sqrt(v_t) *before* that
scaling, so its effective tau is tau * sqrt(1 - beta2^t), not tau; the two agree only as tau -> 0.
The optimizer's `state_dict()` carries the moments, so a checkpoint resumes the server exactly.
"""

from __future__ import annotations

import functools

import torch

from fedtorch.aggregators import Aggregator
from fedtorch.errors import OptionError, check_number
from fedtorch.optim import AdagradMomentum, AdamNoBiasCorrection, Yogi
from fedtorch.strategies.base import Strategy


def _check_adaptive(beta1: float, beta2: float, tau: float) -> None:
    check_number("strategy.beta1", beta1, 0.0, 1.0, high_open=True)
    check_number("strategy.beta2", beta2, 0.0, 1.0, high_open=True)
    check_number("strategy.tau", tau, 0.0, low_open=True)


class FedAvgM(Strategy):
    """FedAvg with server momentum: v = beta * v + (-Delta); x -= server_lr * v (torch SGD).

    The effective step is about server_lr / (1 - beta); momentum 0 is exactly FedAvg.

    Args:
        server_lr: eta.
        momentum: beta in [0, 1).
        nesterov: Nesterov momentum (needs momentum > 0).
    """

    name = "fedavgm"

    def __init__(
        self,
        server_lr: float = 1.0,
        momentum: float = 0.9,
        nesterov: bool = False,
        aggregator: Aggregator | None = None,
        weighted: bool = True,
    ) -> None:
        check_number("strategy.momentum", momentum, 0.0, 1.0, high_open=True)
        if nesterov and momentum <= 0:
            raise OptionError("strategy.nesterov", nesterov, "true only with strategy.momentum > 0")
        factory = functools.partial(torch.optim.SGD, momentum=momentum, nesterov=nesterov)
        super().__init__(factory, server_lr=server_lr, aggregator=aggregator, weighted=weighted)


class FedAdam(Strategy):
    """FedAdam: Adam on the pseudo-gradient.

    Args:
        server_lr: eta (Reddi et al. tune it on a grid; 1e-2 is a common start).
        beta1, beta2: Adam's betas (paper: 0.9, 0.99).
        tau: adaptivity, Adam's eps (paper: 1e-3).
        bias_correction: True: torch.optim.Adam (bias-corrected moments, v_0 = 0); False: Reddi et
            al.'s Algorithm 2 as written (no bias correction, v_{-1} = tau^2).
    """

    name = "fedadam"

    def __init__(
        self,
        server_lr: float = 1e-2,
        beta1: float = 0.9,
        beta2: float = 0.99,
        tau: float = 1e-3,
        bias_correction: bool = True,
        aggregator: Aggregator | None = None,
        weighted: bool = True,
    ) -> None:
        _check_adaptive(beta1, beta2, tau)
        if bias_correction:
            factory = functools.partial(torch.optim.Adam, betas=(beta1, beta2), eps=tau)
        else:
            factory = functools.partial(
                AdamNoBiasCorrection, betas=(beta1, beta2), eps=tau, initial_accumulator_value=tau * tau
            )
        super().__init__(factory, server_lr=server_lr, aggregator=aggregator, weighted=weighted)
        self.bias_correction = bool(bias_correction)


class FedYogi(Strategy):
    """FedYogi: Yogi on the pseudo-gradient.

    Args:
        server_lr: eta.
        beta1, beta2: the moments' decay (paper: 0.9, 0.99).
        tau: adaptivity (paper: 1e-3).
        initial_accumulator_value: v_0 (1e-6 as in Zaheer et al.).
        bias_correction: as Adam (True) or as printed in Reddi et al.'s Algorithm 2 (False).
    """

    name = "fedyogi"

    def __init__(
        self,
        server_lr: float = 1e-2,
        beta1: float = 0.9,
        beta2: float = 0.99,
        tau: float = 1e-3,
        initial_accumulator_value: float = 1e-6,
        bias_correction: bool = True,
        aggregator: Aggregator | None = None,
        weighted: bool = True,
    ) -> None:
        _check_adaptive(beta1, beta2, tau)
        check_number("strategy.initial_accumulator_value", initial_accumulator_value, 0.0)
        factory = functools.partial(
            Yogi,
            betas=(beta1, beta2),
            eps=tau,
            initial_accumulator_value=initial_accumulator_value,
            bias_correction=bias_correction,
        )
        super().__init__(factory, server_lr=server_lr, aggregator=aggregator, weighted=weighted)


class FedAdagrad(Strategy):
    """FedAdagrad: v += Delta^2; x += eta * Delta / (sqrt(v) + tau), with v_0 = tau^2.

    With beta1 = 0 (the default) this is Reddi et al.'s Algorithm 2 without its first moment,
    exactly: torch's Adagrad with initial_accumulator_value = tau^2 and eps = tau (the Keras
    Adagrad of their experiments has no momentum either). beta1 > 0 adds Algorithm 2's first
    moment m = beta1 m + (1 - beta1) Delta, stepping x += eta * m / (sqrt(v) + tau)
    (`fedtorch.optim.AdagradMomentum`; FLamby's FedAdagrad uses beta1 = 0.9).

    Args:
        server_lr: eta.
        tau: adaptivity (paper: 1e-3 .. 1e-1).
        beta1: decay of the first moment, in [0, 1); 0 for none.
        initial_accumulator_value: v_0; None is Algorithm 2's tau^2. Reddi et al.'s experiments
            (Keras Adagrad) and FLamby start from 0.
    """

    name = "fedadagrad"

    def __init__(
        self,
        server_lr: float = 1e-1,
        tau: float = 1e-3,
        aggregator: Aggregator | None = None,
        weighted: bool = True,
        beta1: float = 0.0,
        initial_accumulator_value: float | None = None,
    ) -> None:
        check_number("strategy.tau", tau, 0.0, low_open=True)
        check_number("strategy.beta1", beta1, 0.0, 1.0, high_open=True)
        v0 = check_number("strategy.initial_accumulator_value", initial_accumulator_value, 0.0, none=True)
        v0 = tau * tau if v0 is None else v0
        if beta1 == 0:
            factory = functools.partial(torch.optim.Adagrad, eps=tau, initial_accumulator_value=v0)
        else:
            factory = functools.partial(AdagradMomentum, beta1=beta1, eps=tau, initial_accumulator_value=v0)
        super().__init__(factory, server_lr=server_lr, aggregator=aggregator, weighted=weighted)
