"""Per-client state: what a client keeps between its turns, held for it by the simulation.

SCAFFOLD's control variates, FedDyn's gradient corrections, Ditto's personal models, FedPer's
heads and a compressor's error-feedback residuals are tensors that belong to one client. A real
client stores them itself; the simulation keeps them in one `ClientStateStore`, keyed by
(client id, name), off the accelerator (so accelerator memory holds one client's state at a time),
and in every checkpoint. Only clients that have taken part hold an entry; the others read as a
default. A strategy reaches its clients' state only through the `ClientContext` of a client's
turn (`client.state`) and, for evaluation of personalized models, through `read`.

With the distributed backend each process trains a share of the round's clients, and a client
need not land on the same process every round: `merge()` (one of the things the backend reduces
at the end of a round) gives every process the entries the others wrote, so all stores stay
identical.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

Key = tuple[int, str]


class ClientStateStore:
    """(client id, name) -> one tensor, stored on `storage` (default the CPU).

    Args:
        storage: where idle state lives.
        pin_memory: pin the stored tensors (faster host-to-device copies when CUDA is used).
    """

    def __init__(self, storage: torch.device | str = "cpu", pin_memory: bool = False) -> None:
        self.storage = torch.device(storage)
        self.pin_memory = pin_memory and self.storage.type == "cpu" and torch.cuda.is_available()
        self._state: dict[Key, Tensor] = {}
        self._written: set[Key] = set()  # entries written since the last merge

    def __len__(self) -> int:
        return len(self._state)

    def clients(self, name: str) -> list[int]:
        """The clients that hold an entry `name`, in id order."""
        return sorted(k for k, n in self._state if n == name)

    def names(self) -> list[str]:
        return sorted({n for _, n in self._state})

    def has(self, client_id: int, name: str) -> bool:
        return (int(client_id), name) in self._state

    def get(
        self, client_id: int, name: str, device: torch.device | str, default: Callable[[], Tensor] | None = None
    ) -> Tensor | None:
        """A copy of the entry on `device`; `default()` (or None) for a client without one."""
        stored = self._state.get((int(client_id), name))
        if stored is None:
            return None if default is None else default()
        return stored.to(device, copy=True, non_blocking=self.pin_memory)

    def put(self, client_id: int, name: str, value: Tensor) -> None:
        """Store a copy of `value` (one device-to-host copy per client turn)."""
        stored = value.detach().to(self.storage, copy=True)
        if self.pin_memory:
            stored = stored.pin_memory()
        key = (int(client_id), name)
        self._state[key] = stored
        self._written.add(key)

    def of(self, client_id: int, device: torch.device | str) -> ClientState:
        """The handle one client's turn uses: this client's entries only."""
        return ClientState(self, int(client_id), torch.device(device))

    def merge(self, group: dist.ProcessGroup | None = None) -> None:
        """Exchange the entries written since the last merge with every process of `group`."""
        mine = {f"{k}/{n}": self._state[(k, n)] for k, n in sorted(self._written)}
        gathered: list[dict[str, Tensor] | None] = [None] * dist.get_world_size(group)
        dist.all_gather_object(gathered, mine, group=group)
        for entries in gathered:
            for key, value in (entries or {}).items():
                client, _, name = key.partition("/")
                self._state[(int(client), name)] = value.to(self.storage)
        self._written.clear()

    def state_dict(self) -> dict[str, Any]:
        """{name: {client id: tensor}}: the checkpoint's form (string/int keys only)."""
        out: dict[str, dict[int, Tensor]] = {}
        for (client, name), value in sorted(self._state.items()):
            out.setdefault(name, {})[client] = value.clone()
        return {"entries": out}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._state = {
            (int(client), name): value.to(self.storage)
            for name, entries in state.get("entries", {}).items()
            for client, value in entries.items()
        }
        self._written.clear()


class ClientState:
    """One client's entries in a `ClientStateStore`, moved to `device` on read."""

    def __init__(self, store: ClientStateStore, client_id: int, device: torch.device) -> None:
        self._store = store
        self.client_id = client_id
        self.device = device

    def get(self, name: str, default: Callable[[], Tensor] | None = None) -> Tensor | None:
        return self._store.get(self.client_id, name, self.device, default)

    def put(self, name: str, value: Tensor) -> None:
        self._store.put(self.client_id, name, value)

    def __contains__(self, name: str) -> bool:
        return self._store.has(self.client_id, name)

    def __iter__(self) -> Iterator[str]:
        return iter(n for n in self._store.names() if self._store.has(self.client_id, n))
