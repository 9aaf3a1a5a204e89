"""ALIE, "A Little Is Enough" (Baruch, Baruch and Goldberg, NeurIPS 2019, "A Little Is Enough:
Circumventing Defenses For Distributed Learning").

The attackers send, coordinate by coordinate, the benign updates' mean shifted by a small multiple
of their standard deviation,

    u_mal[j] = mu[j] - z_max * sigma[j],

small enough to hide among the honest updates (so median, trimmed mean and Krum keep it, or keep
something as far off) but in the same direction every round. The paper's z_max (its Algorithm 3)
is the largest shift for which the m attackers, with the honest updates that lie beyond them,
still form the majority a coordinate-wise rule follows: with n updates in the step,

    s = floor(n / 2 + 1) - m          (honest supporters the attackers need)
    z_max = Phi^{-1}((n - s) / n)     (Phi the standard normal CDF)

so that a share (n - s) / n of normally distributed honest values lie above mu - z_max * sigma.
With n = 20 and m = 4: s = 7 and z_max = Phi^{-1}(0.65) = 0.385. Where the attackers alone hold a
majority (s < 1) the formula has no finite z; s is then taken as 1 (z_max = Phi^{-1}((n-1)/n)).
`z` fixes the shift instead (the paper's ablations use z = 1, 1.5, ...).

sigma is the unbiased (n - 1) standard deviation of the benign updates (0 for a single one).
"""

from __future__ import annotations

import math
from statistics import NormalDist

from torch import Tensor

from fedtorch.attacks.omniscient import OmniscientAttack, benign_mean_std
from fedtorch.errors import check_number


def alie_z_max(num_updates: int, num_malicious: int) -> float:
    """Baruch et al.'s z_max = Phi^{-1}((n - s) / n), s = floor(n / 2 + 1) - m (at least 1)."""
    n, m = int(num_updates), int(num_malicious)
    supporters = max(math.floor(n / 2 + 1) - m, 1)
    return NormalDist().inv_cdf((n - supporters) / n)


class ALIE(OmniscientAttack):
    """Send mean - z * std of the step's benign updates (all attackers the same vector).

    Args:
        fraction: share of the clients that are malicious.
        z: the shift in standard deviations; None derives z_max from the step's n and m (the
            paper's formula, see the module docstring).
    """

    def __init__(
        self, fraction: float = 0.2, z: float | None = None, num_clients: int | None = None, seed: int | None = None
    ) -> None:
        super().__init__(fraction, num_clients, seed)
        self.z = check_number("attack.z", z, none=True)

    def craft(self, step: int, benign: Tensor, honest: Tensor, clients: list[int]) -> Tensor:
        mean, std = benign_mean_std(benign)
        m = honest.shape[0]
        # n: the step's updates; with no benign one observed, the attackers' own are all there is.
        n = m + (benign.shape[0] if benign is not honest else 0)
        z = self.z if self.z is not None else alie_z_max(n, m)
        self.note(z=z)
        return (mean - z * std).expand(m, -1)
