"""IPM, inner-product manipulation (Xie, Koyejo and Gupta, UAI 2020, "Fall of Empires: Breaking
Byzantine-tolerant SGD by Inner Product Manipulation").

The attackers send the benign updates' mean scaled by -epsilon,

    u_mal = -epsilon * mean(benign),

so that the inner product of the aggregate with the true descent direction turns negative. A
small epsilon (0.1 in the paper against Krum, and in Karimireddy et al. 2022's experiments) makes
the attackers' identical updates the closest pair in the set, so Krum and its relatives select
them; a large one (the paper's epsilon = 100 against the median and trimmed mean) drags
coordinate-wise rules.
"""

from __future__ import annotations

from torch import Tensor

from fedtorch.attacks.omniscient import OmniscientAttack
from fedtorch.errors import check_number


class IPM(OmniscientAttack):
    """Send -epsilon times the mean of the step's benign updates.

    Args:
        fraction: share of the clients that are malicious.
        epsilon: the scale, > 0.
    """

    def __init__(
        self, fraction: float = 0.2, epsilon: float = 0.1, num_clients: int | None = None, seed: int | None = None
    ) -> None:
        super().__init__(fraction, num_clients, seed)
        self.epsilon = check_number("attack.epsilon", epsilon, 0.0, low_open=True)

    def craft(self, step: int, benign: Tensor, honest: Tensor, clients: list[int]) -> Tensor:
        return (-self.epsilon * benign.mean(dim=0)).expand(honest.shape[0], -1)
