"""Per-client state that lives off the accelerator between a client's turns.

SCAFFOLD's control variates, FedDyn's gradient corrections, Ditto's personal models and
FedPer's heads are one vector per client. With thousands of clients those vectors must not all
sit on the GPU: `ClientStateStore` keeps them on the CPU (or another storage device) and hands
a device copy to the client's turn, so accelerator memory holds one client's state at a time.
Only clients that have taken part hold an entry; the others read as a default.

With the distributed backend each process trains a share of the round's clients, and a client
need not land on the same process every round: `sync()` (called from the strategy's `merge`)
gives every process the entries the others wrote this round, so all stores stay identical.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor


class ClientStateStore:
    """client id -> one tensor, stored on `storage` (default the CPU).

    Args:
        storage: where idle state lives.
        pin_memory: pin the stored tensors (faster host-to-device copies when CUDA is used).
    """

    def __init__(self, storage: torch.device | str = "cpu", pin_memory: bool = False) -> None:
        self.storage = torch.device(storage)
        self.pin_memory = pin_memory and self.storage.type == "cpu" and torch.cuda.is_available()
        self._state: dict[int, Tensor] = {}
        self._written: set[int] = set()  # entries written since the last sync

    def __contains__(self, client_id: int) -> bool:
        return int(client_id) in self._state

    def __len__(self) -> int:
        return len(self._state)

    def __iter__(self) -> Iterator[int]:
        return iter(sorted(self._state))

    def get(
        self, client_id: int, device: torch.device | str, default: Callable[[], Tensor] | None = None
    ) -> Tensor | None:
        """A copy of the client's state on `device`; `default()` (or None) for a client without one."""
        stored = self._state.get(int(client_id))
        if stored is None:
            return None if default is None else default()
        return stored.to(device, copy=True, non_blocking=self.pin_memory)

    def put(self, client_id: int, value: Tensor) -> None:
        """Store a copy of `value` as the client's state (one device-to-host copy per client turn)."""
        stored = value.detach().to(self.storage, copy=True)
        if self.pin_memory:
            stored = stored.pin_memory()
        self._state[int(client_id)] = stored
        self._written.add(int(client_id))

    def sync(self, group: dist.ProcessGroup | None = None) -> None:
        """Exchange the entries written since the last sync with every process of `group`."""
        mine = {k: self._state[k] for k in sorted(self._written)}
        gathered: list[dict[int, Tensor] | None] = [None] * dist.get_world_size(group)
        dist.all_gather_object(gathered, mine, group=group)
        for entries in gathered:
            for k, value in (entries or {}).items():
                self._state[k] = value.to(self.storage)
        self._written.clear()

    def state_dict(self) -> dict[str, Any]:
        return {"state": {k: v.clone() for k, v in self._state.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._state = {int(k): v.to(self.storage) for k, v in state["state"].items()}
