"""The server-optimizer family (Reddi et al. 2021, "Adaptive Federated Optimization").

Every member is FedAvg's client side plus a different torch optimizer stepping the global model
on the pseudo-gradient -Delta_t (Delta_t the weighted mean of the client deltas):

    FedAvgM     SGD with momentum beta                (Hsu et al. 2019, "Measuring the Effects of
                                                      Non-Identical Data Distribution ...")
    FedAdam     Adam(betas, eps = tau)
    FedYogi     Yogi(betas, eps = tau)                (fedtorch.optim.Yogi)
    FedAdagrad  Adagrad(eps = tau, v_0 = tau^2)

Reddi et al.'s Algorithm 2 prints the adaptive updates without bias correction; their
experiments (TensorFlow Federated, Keras optimizers) and FLSim use the bias-corrected Adam that
`torch.optim.Adam` implements, which is what FedAdam does here; FedYogi offers both. The
adaptivity tau is the optimizer's eps: x += eta * m / (sqrt(v) + tau). The optimizer's
`state_dict()` carries the moments, so a checkpoint resumes the server exactly.
"""

from __future__ import annotations

import functools

import torch

from fedtorch.aggregators import Aggregator
from fedtorch.optim import Yogi
from fedtorch.strategies.base import Strategy


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
        factory = functools.partial(torch.optim.SGD, momentum=momentum, nesterov=nesterov)
        super().__init__(factory, server_lr=server_lr, aggregator=aggregator, weighted=weighted)


class FedAdam(Strategy):
    """FedAdam: Adam on the pseudo-gradient (bias-corrected, torch.optim.Adam).

    Args:
        server_lr: eta (Reddi et al. tune it on a grid; 1e-2 is a common start).
        beta1, beta2: Adam's betas (paper: 0.9, 0.99).
        tau: adaptivity, Adam's eps (paper: 1e-3).
    """

    name = "fedadam"

    def __init__(
        self,
        server_lr: float = 1e-2,
        beta1: float = 0.9,
        beta2: float = 0.99,
        tau: float = 1e-3,
        aggregator: Aggregator | None = None,
        weighted: bool = True,
    ) -> None:
        factory = functools.partial(torch.optim.Adam, betas=(beta1, beta2), eps=tau)
        super().__init__(factory, server_lr=server_lr, aggregator=aggregator, weighted=weighted)


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

    This is Reddi et al.'s Algorithm 2 with beta1 = 0 (torch.optim.Adagrad has no first moment),
    exactly: torch's Adagrad with initial_accumulator_value = tau^2 and eps = tau.

    Args:
        server_lr: eta.
        tau: adaptivity (paper: 1e-3 .. 1e-1).
    """

    name = "fedadagrad"

    def __init__(
        self,
        server_lr: float = 1e-1,
        tau: float = 1e-3,
        aggregator: Aggregator | None = None,
        weighted: bool = True,
    ) -> None:
        factory = functools.partial(torch.optim.Adagrad, eps=tau, initial_accumulator_value=tau * tau)
        super().__init__(factory, server_lr=server_lr, aggregator=aggregator, weighted=weighted)
