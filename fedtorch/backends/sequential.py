"""The reference backend: the round's clients, one after another, in one process."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from fedtorch.simulation import RoundAccumulator, Simulation


class SequentialBackend:
    """Train each sampled client in turn on the simulation's single worker model.

    Updates stream into the strategy's aggregator as they are produced, so memory holds one
    client update at a time, not one per client.
    """

    name = "sequential"
    world_size = 1

    def setup(self, sim: Simulation) -> None:
        pass

    def train_round(self, sim: Simulation, round_idx: int, client_ids: np.ndarray, stats: RoundAccumulator) -> None:
        for client_id in client_ids:
            update = sim.train_client(round_idx, int(client_id))
            stats.add(update)
            sim.strategy.accept(round_idx, update)
