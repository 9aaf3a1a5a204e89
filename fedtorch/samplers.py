"""Client samplers: which clients take part in a round.

A sampler is told the clients' sizes once (`setup`) and then answers `sample(round_idx, rng)`
with an array of distinct client ids. The simulation hands it a fresh generator derived from
(seed, "sampler", round), so the choice is a function of the seed and the round alone: every
backend and a resumed run pick the same clients.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class ClientSampler:
    """Base class: full participation."""

    def setup(self, client_sizes: np.ndarray) -> None:
        self.client_sizes = np.asarray(client_sizes)
        self.num_clients = len(self.client_sizes)

    def sample(self, round_idx: int, rng: np.random.Generator) -> np.ndarray:
        return np.arange(self.num_clients)

    def expected_cohort_size(self) -> float:
        """Expected clients per round (DP's normalization needs it)."""
        return float(self.num_clients)

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class FullParticipation(ClientSampler):
    """Every client every round (cross-silo federations such as hospitals)."""


def cohort_size(num_clients: int, clients_per_round: int | None, fraction: float | None) -> int:
    """Clients per round from a fixed count or McMahan et al.'s fraction C: max(floor(C*K), 1)."""
    if fraction is not None:
        # round() first so that 0.29 * 100 = 28.999999999999996 counts as 29
        return max(int(np.floor(round(fraction * num_clients, 9))), 1)
    if clients_per_round is None:
        raise ValueError("sampler needs clients_per_round or fraction")
    return clients_per_round


class UniformSampler(ClientSampler):
    """A fixed-size cohort drawn uniformly without replacement (McMahan et al. 2017).

    Args:
        clients_per_round: cohort size m; ignored when `fraction` is set.
        fraction: McMahan's C: the cohort is max(floor(C * K), 1) of the K clients.
    """

    def __init__(self, clients_per_round: int | None = 10, fraction: float | None = None) -> None:
        self.clients_per_round = clients_per_round
        self.fraction = fraction

    def setup(self, client_sizes: np.ndarray) -> None:
        super().setup(client_sizes)
        self.cohort = cohort_size(self.num_clients, self.clients_per_round, self.fraction)
        if not 1 <= self.cohort <= self.num_clients:
            raise ValueError(
                f"sampler.clients_per_round={self.cohort} must be between 1 and the number of clients "
                f"({self.num_clients})"
            )

    def sample(self, round_idx: int, rng: np.random.Generator) -> np.ndarray:
        return np.sort(rng.choice(self.num_clients, size=self.cohort, replace=False))

    def expected_cohort_size(self) -> float:
        return float(self.cohort)
