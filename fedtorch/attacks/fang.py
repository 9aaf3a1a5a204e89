"""Fang et al.'s full-knowledge attacks (Fang, Cao, Jia and Gong, USENIX Security 2020, "Local
Model Poisoning Attacks to Byzantine-Robust Federated Learning"), written for updates (deltas):
the global model before the step is the zero update.

Both start from s, the direction each coordinate of the global model would move without attack,
estimated from the benign updates: s = sign(mean(benign)).

Trimmed mean and median (Section 3.3, "full knowledge"): per coordinate j, with w_max and w_min
the largest and smallest benign values and b > 1 (the paper uses b = 2), every attacker sends a
value drawn uniformly from

    s_j = -1 (the coordinate would decrease):  [w_max, b * w_max]  if w_max > 0, else [w_max, w_max / b]
    s_j = +1 (it would increase):              [w_min / b, w_min]  if w_min > 0, else [b * w_min, w_min]

that is, just beyond the benign extreme on the side opposite to s_j, so the sorted values the
rule keeps are all shifted against the benign direction. (s_j = 0 is treated as +1.) The draws
come from the (seed, "attack_fang", step, client) stream.

Krum (Section 3.2): the attackers send w'_1 = -lambda * s (all the same), with the largest lambda
for which Krum still selects it. The search starts from the paper's upper bound

    lambda <= 1 / ((n - 2c - 1) sqrt(d)) * min_i sum_{l in Gamma_i} ||x_l - x_i||
              + 1 / sqrt(d) * max_i ||x_i||

(i over the benign updates, Gamma_i the n - c - 2 benign updates closest to x_i, n updates in the
step of which c are malicious, d the dimension) and halves lambda until Krum, run with f = c (the
paper's server knows c; `f` overrides it), picks w'_1, or lambda falls below `threshold` (then the
attackers send the last lambda tried).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from fedtorch.aggregators import Krum, pairwise_sq_distances
from fedtorch.attacks.omniscient import OmniscientAttack
from fedtorch.errors import check_int, check_number
from fedtorch.seeding import torch_generator


def benign_direction(benign: Tensor) -> Tensor:
    """s = sign(mean of the benign updates): where each coordinate moves without attack."""
    return torch.sign(benign.mean(dim=0))


class FangTrimmedMean(OmniscientAttack):
    """Fang et al.'s full-knowledge attack on the trimmed mean and the median.

    Args:
        fraction: share of the clients that are malicious.
        b: how far beyond the benign extreme the values may go (> 1; the paper uses 2).
    """

    def __init__(
        self, fraction: float = 0.2, b: float = 2.0, num_clients: int | None = None, seed: int | None = None
    ) -> None:
        super().__init__(fraction, num_clients, seed)
        self.b = check_number("attack.b", b, 1.0, low_open=True)

    def interval(self, benign: Tensor) -> tuple[Tensor, Tensor]:
        """Per coordinate, the low and high ends of the interval the attackers draw from."""
        s = benign_direction(benign)
        w_max, w_min = benign.max(dim=0).values, benign.min(dim=0).values
        b = self.b
        # s = -1: beyond the largest benign value; s = +1 (or 0): beneath the smallest.
        up_low, up_high = w_max, torch.where(w_max > 0, b * w_max, w_max / b)
        down_low, down_high = torch.where(w_min > 0, w_min / b, b * w_min), w_min
        decreasing = s < 0
        return torch.where(decreasing, up_low, down_low), torch.where(decreasing, up_high, down_high)

    def craft(self, step: int, benign: Tensor, honest: Tensor, clients: list[int]) -> Tensor:
        low, high = self.interval(benign)
        rows = []
        for client in clients:
            generator = torch_generator(self.seed, "attack_fang", step, client)
            u = torch.rand(low.shape, generator=generator, dtype=torch.float64).to(low.device)
            rows.append(low + u * (high - low))
        return torch.stack(rows)


class FangKrum(OmniscientAttack):
    """Fang et al.'s full-knowledge attack on Krum (and Multi-Krum's first pick).

    Args:
        fraction: share of the clients that are malicious.
        f: the f of the Krum the attackers simulate; None = the step's number of attackers.
        threshold: the smallest lambda tried.
    """

    def __init__(
        self,
        fraction: float = 0.2,
        f: int | None = None,
        threshold: float = 1e-5,
        num_clients: int | None = None,
        seed: int | None = None,
    ) -> None:
        super().__init__(fraction, num_clients, seed)
        self.f = check_int("attack.f", f, 0, none=True)
        self.threshold = check_number("attack.threshold", threshold, 0.0, low_open=True)

    @staticmethod
    def lambda_bound(benign: Tensor, num_updates: int, num_malicious: int) -> float:
        """The paper's upper bound on lambda (see the module docstring)."""
        n, c = num_updates, num_malicious
        d = benign.shape[1]
        norms = torch.linalg.vector_norm(benign, dim=1)
        bound = float(norms.max()) / math.sqrt(d)
        neighbours = n - c - 2
        if n - 2 * c - 1 > 0 and neighbours > 0 and benign.shape[0] > 1:
            distances = pairwise_sq_distances(benign).sqrt()
            distances.fill_diagonal_(math.inf)  # the closest *other* benign updates
            k = min(neighbours, benign.shape[0] - 1)
            closest = torch.topk(distances, k, dim=1, largest=False).values.sum(dim=1)
            bound += float(closest.min()) / ((n - 2 * c - 1) * math.sqrt(d))
        return bound

    def craft(self, step: int, benign: Tensor, honest: Tensor, clients: list[int]) -> Tensor:
        m = honest.shape[0]
        observed = benign is not honest
        n = m + (benign.shape[0] if observed else 0)
        s = benign_direction(benign)
        lam = self.lambda_bound(benign, n, m)
        f = m if self.f is None else self.f
        krum = Krum(f=f)
        if observed and n >= krum.min_updates and float(s.abs().sum()) > 0:
            # Halve lambda until Krum, over the benign updates and the m copies, picks a copy.
            while True:
                stack = torch.cat([benign, (-lam * s).expand(m, -1)])
                if int(krum.select(stack)[0]) >= benign.shape[0] or lam / 2 < self.threshold:
                    break
                lam /= 2
        self.note(fang_lambda=lam)
        return (-lam * s).expand(m, -1)
