"""Min-max and min-sum (Shejwalkar and Houmansadr, NDSS 2021, "Manipulating the Byzantine:
Optimizing Model Poisoning Attacks and Defenses for Federated Learning"), the
aggregation-agnostic attacks of its Section IV.

The attackers send the benign mean pushed as far as possible along a perturbation direction p,

    u_mal = mu + gamma * p,      mu = mean(benign),

with the largest gamma for which u_mal still looks like one of the benign updates:

    min-max:  max_i ||u_mal - x_i||   <= max_{i,j} ||x_i - x_j||        (its farthest benign
                                                                         neighbour is no farther
                                                                         than any two benign ones)
    min-sum:  sum_i ||u_mal - x_i||^2 <= max_i sum_j ||x_i - x_j||^2    (its total squared distance
                                                                         is no larger than any
                                                                         benign update's)

The perturbation (`direction`) is one of the paper's three: "unit" the inverse unit vector
-mu / ||mu||, "std" the inverse standard deviation -sigma, "sign" the inverse sign -sign(mu).
gamma = 0 always qualifies (the mean is the point closest to all the others), and the constraint
is monotone in gamma along a fixed direction, so the paper's Algorithm 1 finds the largest gamma
by a binary search: start at gamma_init with step gamma_init / 2; after a success move up, after a
failure move down; halve the step; stop once the last success and the current gamma differ by
less than tau. (The search never reaches past 2 * gamma_init: raise gamma_init for huge spreads.)
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from fedtorch.aggregators import pairwise_sq_distances
from fedtorch.attacks.omniscient import OmniscientAttack, benign_mean_std
from fedtorch.errors import check_choice, check_number

DIRECTIONS = ("unit", "std", "sign")


def perturbation(benign: Tensor, direction: str) -> Tensor:
    """The paper's perturbation vectors: -mu / ||mu||, -std or -sign(mu) of the benign updates."""
    mean, std = benign_mean_std(benign)
    if direction == "unit":
        norm = torch.linalg.vector_norm(mean)
        return -mean / norm if float(norm) > 0 else torch.zeros_like(mean)
    if direction == "std":
        return -std
    return -torch.sign(mean)


def largest_gamma(feasible: Callable[[float], bool], gamma_init: float, tau: float) -> float:
    """Shejwalkar and Houmansadr's Algorithm 1: the largest gamma (to within tau) that is feasible."""
    gamma, step, success = gamma_init, gamma_init / 2, 0.0
    while abs(success - gamma) > tau:
        if feasible(gamma):
            success = gamma
            gamma += step
        else:
            gamma -= step
        step /= 2
    return success


class _DistanceBounded(OmniscientAttack):
    """The shared search; subclasses give the distance statistic and its benign bound."""

    def __init__(
        self,
        fraction: float = 0.2,
        direction: str = "unit",
        gamma_init: float = 10.0,
        tau: float = 1e-5,
        num_clients: int | None = None,
        seed: int | None = None,
    ) -> None:
        super().__init__(fraction, num_clients, seed)
        self.direction = check_choice("attack.direction", direction, DIRECTIONS)
        self.gamma_init = check_number("attack.gamma_init", gamma_init, 0.0, low_open=True)
        self.tau = check_number("attack.tau", tau, 0.0, low_open=True)

    def statistic(self, candidate: Tensor, benign: Tensor) -> float:
        raise NotImplementedError

    def bound(self, benign: Tensor) -> float:
        raise NotImplementedError

    def gamma(self, benign: Tensor) -> tuple[float, Tensor]:
        """The largest feasible gamma and the malicious update mu + gamma * p it gives."""
        mean = benign.mean(dim=0)
        p = perturbation(benign, self.direction)
        bound = self.bound(benign)
        gamma = largest_gamma(lambda g: self.statistic(mean + g * p, benign) <= bound, self.gamma_init, self.tau)
        return gamma, mean + gamma * p

    def craft(self, step: int, benign: Tensor, honest: Tensor, clients: list[int]) -> Tensor:
        gamma, malicious = self.gamma(benign)
        self.note(gamma=gamma)
        return malicious.expand(honest.shape[0], -1)


def _sq_distances_to(candidate: Tensor, benign: Tensor) -> Tensor:
    return ((benign - candidate) ** 2).sum(dim=1)


class MinMax(_DistanceBounded):
    """Min-max: the malicious update's largest distance to a benign update stays within the
    largest distance between two benign updates.

    Args:
        fraction: share of the clients that are malicious.
        direction: the perturbation: "unit", "std" or "sign" (see the module docstring).
        gamma_init: the binary search's first gamma (its reach is 2 * gamma_init).
        tau: the search's stopping threshold.
    """

    def statistic(self, candidate: Tensor, benign: Tensor) -> float:
        return float(_sq_distances_to(candidate, benign).max())

    def bound(self, benign: Tensor) -> float:
        return float(pairwise_sq_distances(benign).max())


class MinSum(_DistanceBounded):
    """Min-sum: the malicious update's sum of squared distances to the benign updates stays within
    the largest such sum of a benign update (arguments as `MinMax`)."""

    def statistic(self, candidate: Tensor, benign: Tensor) -> float:
        return float(_sq_distances_to(candidate, benign).sum())

    def bound(self, benign: Tensor) -> float:
        return float(pairwise_sq_distances(benign).sum(dim=1).max())
