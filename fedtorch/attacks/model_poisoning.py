"""Model-poisoning attacks: malicious clients train honestly, then send a different update.

- Sign flipping: -scale * Delta (Damaskinos et al. 2018; used as a baseline Byzantine attack in
  e.g. Li et al. 2019, "RSA", and Karimireddy et al. 2021, "Learning from History for Byzantine
  Robust Optimization"). With a fraction f of attackers the mean moves by (1 - f - f*scale) Delta
  in expectation: scale > (1 - f) / f turns FedAvg's step around.
- Gaussian: an update of i.i.d. N(0, std^2) noise (Blanchard et al. 2017, "Machine Learning with
  Adversaries: Byzantine Tolerant Gradient Descent", Krum's paper).
- Scaling / model replacement (Bagdasaryan et al. 2020, "How To Backdoor Federated Learning"):
  the attacker boosts its update by gamma = m / eta (cohort size over server learning rate) so
  that, after averaging, the global model is replaced by the attacker's local model.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fedtorch.attacks.base import Attack
from fedtorch.client import ClientUpdate
from fedtorch.seeding import torch_generator
from fedtorch.strategies.base import Strategy


class SignFlip(Attack):
    """Send -scale * Delta."""

    def __init__(self, num_clients: int, fraction: float = 0.2, scale: float = 1.0, seed: int = 0) -> None:
        super().__init__(num_clients, fraction, seed)
        if scale <= 0:
            raise ValueError(f"attack.scale={scale} must be > 0")
        self.scale = scale

    def tamper(self, round_idx: int, update: ClientUpdate) -> Tensor:
        return update.delta * -self.scale


class GaussianAttack(Attack):
    """Send N(0, std^2 I), drawn from (seed, "attack_gaussian", round, client)."""

    def __init__(self, num_clients: int, fraction: float = 0.2, std: float = 1.0, seed: int = 0) -> None:
        super().__init__(num_clients, fraction, seed)
        if std <= 0:
            raise ValueError(f"attack.std={std} must be > 0")
        self.std = std

    def tamper(self, round_idx: int, update: ClientUpdate) -> Tensor:
        generator = torch_generator(self.seed, "attack_gaussian", round_idx, update.client_id)
        noise = torch.randn(update.delta.shape, generator=generator) * self.std
        return noise.to(device=update.delta.device, dtype=update.delta.dtype)


class Scaling(Attack):
    """Send gamma * Delta; gamma = None means model replacement, gamma = E[m] / server_lr.

    Args:
        scale: gamma; None derives it from the cohort size and the strategy's server lr.
        expected_cohort_size: E[m] (from the sampler), needed when `scale` is None.
    """

    def __init__(
        self,
        num_clients: int,
        fraction: float = 0.2,
        scale: float | None = None,
        expected_cohort_size: float | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(num_clients, fraction, seed)
        if scale is None and expected_cohort_size is None:
            raise ValueError("attack.scale=None (model replacement) needs the expected cohort size")
        if scale is not None and scale <= 0:
            raise ValueError(f"attack.scale={scale} must be > 0 or null")
        self.scale = scale
        self.expected_cohort_size = expected_cohort_size

    def setup(self, strategy: Strategy) -> None:
        if self.scale is None:
            # FedAvg moves the model by server_lr * mean(Delta); this boost makes the attacker's
            # share of that step its whole update (Bagdasaryan et al.'s gamma = n / eta).
            self.scale = float(self.expected_cohort_size) / float(getattr(strategy, "server_lr", 1.0))

    def tamper(self, round_idx: int, update: ClientUpdate) -> Tensor:
        return update.delta * self.scale
