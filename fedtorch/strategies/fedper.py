"""FedPer (Arivazhagan et al. 2019, "Federated Learning with Personalization Layers").

The model is split into a shared body (the base layers) and a personal head (the last layers).
Every client keeps its own head; in its turn it trains body and head together starting from the
global body and its head, and sends back only the body's change. The server averages bodies as
FedAvg does; the global head is never updated (it is only the starting head of a client's first
turn). Heads live on the CPU between a client's turns.

The head is chosen by parameter-name prefixes (`head`), by default the last module that has
parameters (e.g. `net.5` of fedtorch's MLP). With a one-layer model the whole model is the head
and FedPer degenerates to purely local training. Evaluation reports every client's
body-plus-own-head model on its own test split.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import Tensor

from fedtorch.aggregators import Aggregator
from fedtorch.client import ClientHooks, ClientUpdate
from fedtorch.params import VectorLayout
from fedtorch.strategies.base import Strategy
from fedtorch.strategies.client_state import ClientStateStore
from fedtorch.strategies.personalization import evaluate_per_client

if TYPE_CHECKING:
    from fedtorch.simulation import Simulation


def head_parameter_indices(layout: VectorLayout, num_param_tensors: int, head: Sequence[str] | None) -> list[int]:
    """Indices (in layout order) of the parameters whose name starts with one of the `head`
    prefixes (a prefix matches a whole dotted component); None: the last module with parameters."""
    names = layout.names[:num_param_tensors]
    if head is None:
        module = names[-1].rpartition(".")[0]
        prefixes = [module] if module else [names[-1]]
    else:
        prefixes = list(head)
    chosen = [i for i, n in enumerate(names) if any(n == p or n.startswith(p + ".") for p in prefixes)]
    if not chosen:
        raise ValueError(f"strategy.head={list(prefixes)} matches no parameter; parameters are {list(names)}")
    return chosen


class _FedPerHooks(ClientHooks):
    def __init__(self, strategy: FedPer, client_id: int) -> None:
        self.strategy = strategy
        self.client_id = client_id
        self.head_views: list[Tensor] = []

    def on_train_start(self, params: list[Tensor], global_params: list[Tensor]) -> None:
        self.head_views = [params[i] for i in self.strategy.head_indices]
        head = self.strategy.heads.get(self.client_id, params[0].device)
        if head is not None:
            with torch.no_grad():
                torch._foreach_copy_(self.head_views, self.strategy.split_head(head))

    def on_train_end(self, update: ClientUpdate) -> None:
        strategy = self.strategy
        strategy.heads.put(self.client_id, torch.cat([p.detach().reshape(-1) for p in self.head_views]))
        for start, stop in strategy.head_segments:
            update.delta[start:stop] = 0  # the head stays on the client


class FedPer(Strategy):
    """FedAvg on the body, personal heads.

    Args:
        head: parameter-name prefixes of the personal layers; None takes the last module with
            parameters.
        server_lr: FedAvg's server step (on the body).
        aggregator: reducer of the body deltas.
        weighted: sample-weighted (FedAvg) or uniform mean.
    """

    name = "fedper"

    def __init__(
        self,
        head: Sequence[str] | None = None,
        server_lr: float = 1.0,
        aggregator: Aggregator | None = None,
        weighted: bool = True,
    ) -> None:
        super().__init__(torch.optim.SGD, server_lr=server_lr, aggregator=aggregator, weighted=weighted)
        self.head = None if head is None else [str(h) for h in head]
        self.heads = ClientStateStore()

    def attach(self, sim: Simulation) -> None:
        self.sim = sim
        params = sim.flat.params
        self.head_indices = head_parameter_indices(self.layout, len(params), self.head)
        self.head_segments = [
            (self.layout.offsets[i], self.layout.offsets[i] + params[i].numel()) for i in self.head_indices
        ]
        self.head_shapes = [params[i].shape for i in self.head_indices]

    def split_head(self, head: Tensor) -> list[Tensor]:
        """A stored head (the head parameters concatenated) as tensors shaped like the parameters."""
        out, start = [], 0
        for shape in self.head_shapes:
            n = shape.numel()
            out.append(head[start : start + n].view(shape))
            start += n
        return out

    def merge(self, group: dist.ProcessGroup | None = None) -> None:
        super().merge(group)
        self.heads.sync(group)  # a client may train on another process next time

    def client_hooks(self, round_idx: int, client_id: int) -> ClientHooks:
        return _FedPerHooks(self, client_id)

    def personal_vector(self, client_id: int) -> Tensor:
        """Global body + the client's head (the global vector itself for a client without one)."""
        global_vector = self.sim.global_vector
        head = self.heads.get(client_id, global_vector.device)
        if head is None:
            return global_vector
        vector = global_vector.clone()
        for (start, stop), part in zip(self.head_segments, self.split_head(head)):
            vector[start:stop] = part.reshape(-1)
        return vector

    def evaluate(self, sim: Simulation) -> dict[str, float]:
        return evaluate_per_client(sim, self.personal_vector, prefix="personal")

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "heads": self.heads.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.heads.load_state_dict(state["heads"])
