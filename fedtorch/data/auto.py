"""The default partition: the data's own clients where it has them, else an IID split.

A newcomer who picks `dataset=heart_disease` expects its 4 hospitals; one who picks `dataset=mnist`
(which has no client ids) expects it to run, not a traceback asking for a partition. `Auto`
chooses and logs its choice; any explicit `partition=` overrides it.
"""

from __future__ import annotations

import logging

import numpy as np

from fedtorch.data.base import DatasetSplits
from fedtorch.data.partitions import IID, Natural, Partition

log = logging.getLogger("fedtorch")


class Auto:
    """`Natural` when the dataset has client ids, else `IID(num_clients)`.

    Args:
        num_clients: clients of the IID split of a dataset without client ids.
    """

    def __init__(self, num_clients: int = 100) -> None:
        self.num_clients = num_clients

    def __call__(self, data: DatasetSplits, rng: np.random.Generator) -> Partition:
        if data.train_groups is not None:
            log.info("partition=auto: %s comes with its own clients (partition=natural)", data.name)
            return Natural()(data, rng)
        num_clients = min(self.num_clients, len(data.train_y))
        log.info("partition=auto: %s has no client ids; an IID split into %d clients", data.name, num_clients)
        return IID(num_clients)(data, rng)
