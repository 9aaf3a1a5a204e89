"""Model-poisoning attacks: malicious clients train honestly, then send a different update.

- Sign flipping: -scale * Delta (Damaskinos et al. 2018; used as a baseline Byzantine attack in
  e.g. Li et al. 2019, "RSA", and Karimireddy et al. 2021, "Learning from History for Byzantine
  Robust Optimization"). With a fraction f of attackers the mean moves by (1 - f - f*scale) Delta
  in expectation: scale > (1 - f) / f turns FedAvg's step around.
- Gaussian: an update of i.i.d. N(0, std^2) noise (Blanchard et al. 2017, "Machine Learning with
  Adversaries: Byzantine Tolerant Gradient Descent", Krum's paper).
- Scaling / model replacement (Bagdasaryan et al. 2020, "How To Backdoor Federated Learning"):
  the attacker boosts its update by gamma = E[W] / (eta * w) (the expected total aggregation
  weight over the server learning rate and its own weight; m / eta for a uniform mean) so that,
  after averaging, the global model is replaced by the attacker's local model.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fedtorch.attacks.base import Attack, replacement_scale
from fedtorch.client import ClientUpdate
from fedtorch.errors import check_number
from fedtorch.seeding import torch_generator


class SignFlip(Attack):
    """Send -scale * Delta."""

    def __init__(
        self, fraction: float = 0.2, scale: float = 1.0, num_clients: int | None = None, seed: int | None = None
    ) -> None:
        super().__init__(fraction, num_clients, seed)
        self.scale = check_number("attack.scale", scale, 0.0, low_open=True)

    def tamper(self, step: int, update: ClientUpdate) -> Tensor:
        return update.delta * -self.scale


class GaussianAttack(Attack):
    """Send N(0, std^2 I), drawn from (seed, "attack_gaussian", round, client)."""

    def __init__(
        self, fraction: float = 0.2, std: float = 1.0, num_clients: int | None = None, seed: int | None = None
    ) -> None:
        super().__init__(fraction, num_clients, seed)
        self.std = check_number("attack.std", std, 0.0, low_open=True)

    def tamper(self, step: int, update: ClientUpdate) -> Tensor:
        generator = torch_generator(self.seed, "attack_gaussian", step, update.client_id)
        noise = torch.randn(update.delta.shape, generator=generator) * self.std
        return noise.to(device=update.delta.device, dtype=update.delta.dtype)


class Scaling(Attack):
    """Send gamma * Delta; gamma = None means model replacement (see `replacement_scale`).

    Args:
        scale: gamma; None derives it, per update, from the expected total aggregation weight, the
            attacker's own weight and the strategy's server learning rate.
    """

    def __init__(
        self, fraction: float = 0.2, scale: float | None = None, num_clients: int | None = None, seed: int | None = None
    ) -> None:
        super().__init__(fraction, num_clients, seed)
        self.scale = check_number("attack.scale", scale, 0.0, low_open=True, none=True)

    def tamper(self, step: int, update: ClientUpdate) -> Tensor:
        scale = self.scale if self.scale is not None else replacement_scale(self.context, update)
        return update.delta * scale
