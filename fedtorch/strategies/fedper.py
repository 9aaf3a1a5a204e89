"""FedPer (Arivazhagan et al. 2019, "Federated Learning with Personalization Layers").

The model is split into a shared body (the base layers) and a personal head (the last layers).
Every client keeps its own head; in its turn it trains body and head together starting from the
global body and its head, and sends back only the body's change. The server averages bodies as
FedAvg does; the global head is never updated (it is only the starting head of a client's first
turn). Heads are client state (`ClientStateStore`).

The head is chosen by parameter-name prefixes (`head`), by default the last module that has
parameters (e.g. `net.5` of fedtorch's MLP). With a one-layer model the whole model is the head
and FedPer degenerates to purely local training. Evaluation reports every client's
body-plus-own-head model on its own test split.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from fedtorch.aggregators import Aggregator
from fedtorch.client import ClientHooks, ClientUpdate
from fedtorch.client_state import ClientState, ClientStateStore
from fedtorch.errors import OptionError
from fedtorch.params import VectorLayout
from fedtorch.runner import ClientContext
from fedtorch.strategies.base import Strategy, StrategyContext


def head_parameter_indices(layout: VectorLayout, head: Sequence[str] | None) -> list[int]:
    """Indices (in layout order) of the parameters whose name starts with one of the `head`
    prefixes (a prefix matches a whole dotted component); None: the last module with parameters."""
    names = layout.names[: layout.num_param_tensors]
    if head is None:
        module = names[-1].rpartition(".")[0]
        prefixes = [module] if module else [names[-1]]
    else:
        prefixes = list(head)
    chosen = [i for i, n in enumerate(names) if any(n == p or n.startswith(p + ".") for p in prefixes)]
    if not chosen:
        raise OptionError("strategy.head", list(prefixes), f"prefixes of parameter names; they are {list(names)}")
    return chosen


class _PersonalHeadHooks(ClientHooks):
    """Load the client's own head before training; afterwards keep it and send only the body."""

    def __init__(self, strategy: FedPer, state: ClientState) -> None:
        self.strategy = strategy
        self.state = state
        self.head_views: list[Tensor] = []

    def on_train_start(self, params: list[Tensor], global_params: list[Tensor]) -> None:
        self.head_views = [params[i] for i in self.strategy.head_indices]
        head = self.state.get("head")
        if head is not None:
            with torch.no_grad():
                torch._foreach_copy_(self.head_views, self.strategy.split_head(head))

    def on_train_end(self, update: ClientUpdate) -> None:
        self.state.put("head", torch.cat([p.detach().reshape(-1) for p in self.head_views]))
        for start, stop in self.strategy.head_segments:
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
    changes_local_training = True
    keeps_client_state = True
    personalized = True

    def __init__(
        self,
        head: Sequence[str] | None = None,
        server_lr: float = 1.0,
        aggregator: Aggregator | None = None,
        weighted: bool = True,
    ) -> None:
        super().__init__(torch.optim.SGD, server_lr=server_lr, aggregator=aggregator, weighted=weighted)
        self.head = None if head is None else [str(h) for h in head]

    def setup(self, context: StrategyContext, global_vector: Tensor) -> None:
        super().setup(context, global_vector)
        layout = context.layout
        self.head_indices = head_parameter_indices(layout, self.head)
        self.head_segments = [
            (layout.offsets[i], layout.offsets[i] + layout.shapes[i].numel()) for i in self.head_indices
        ]
        self.head_shapes = [layout.shapes[i] for i in self.head_indices]

    def split_head(self, head: Tensor) -> list[Tensor]:
        """A stored head (the head parameters concatenated) as tensors shaped like the parameters."""
        out, start = [], 0
        for shape in self.head_shapes:
            n = shape.numel()
            out.append(head[start : start + n].view(shape))
            start += n
        return out

    # -- client half ------------------------------------------------------------------------------
    def local_update(self, client: ClientContext) -> ClientUpdate:
        return client.train(hooks=_PersonalHeadHooks(self, client.state))

    # -- personalization ------------------------------------------------------------------------
    def personal_vector(self, client_id: int, global_vector: Tensor, store: ClientStateStore) -> Tensor:
        """Global body + the client's head (the global vector itself for a client without one)."""
        head = store.get(client_id, "head", global_vector.device)
        if head is None:
            return global_vector
        vector = global_vector.clone()
        for (start, stop), part in zip(self.head_segments, self.split_head(head)):
            vector[start:stop] = part.reshape(-1)
        return vector
