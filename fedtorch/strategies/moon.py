"""MOON (Li, He and Song 2021, "Model-Contrastive Federated Learning", CVPR).

Local training adds a model-contrastive term that pulls a sample's representation z = R_w(x)
towards the global model's z_glob = R_{w_t}(x) and pushes it from the client's previous local
model's z_prev = R_{w_k^{t-1}}(x):

    loss = CE(w; x, y) + mu * l_con,
    l_con = -log( exp(sim(z, z_glob) / tau) / (exp(sim(z, z_glob) / tau) + exp(sim(z, z_prev) / tau)) ),

with sim the cosine similarity and tau a temperature (the paper: mu = 5 or 1, tau = 0.5). The
representation is the model's `features(x)` (`fedtorch.models.protocol`); the server is FedAvg.
Each client keeps its last local model (the `previous` entry: one model per client that has
trained, which is what `ClientStateStore`'s spill to disk is for). In a client's first turn there
is no previous model; the paper's code then uses the initial model, which makes z_prev = z_glob
and the term's gradient zero, so the first turn trains on the cross-entropy alone. With mu = 0 the
loss is the cross-entropy and MOON is FedAvg, bit for bit. MOON learns one global model: it is not
a personalized method (evaluation scores the global model).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from fedtorch.aggregators import Aggregator
from fedtorch.client import ClientUpdate
from fedtorch.errors import check_number
from fedtorch.models.protocol import require_features
from fedtorch.runner import ClientContext
from fedtorch.strategies.base import Strategy, StrategyContext
from fedtorch.strategies.local_steps import StepStats, features_at, finish

PREVIOUS = "previous"


def contrastive_loss(z: Tensor, z_glob: Tensor, z_prev: Tensor, temperature: float) -> Tensor:
    """MOON's l_con averaged over the batch: cross-entropy of (sim(z, z_glob), sim(z, z_prev)) / tau
    with the global model's representation as the positive (class 0)."""
    logits = torch.stack([F.cosine_similarity(z, z_glob, dim=-1), F.cosine_similarity(z, z_prev, dim=-1)], dim=1)
    target = torch.zeros(len(z), dtype=torch.int64, device=z.device)
    return F.cross_entropy(logits / temperature, target)


class MOON(Strategy):
    """FedAvg with the model-contrastive local loss.

    Args:
        mu: weight of the contrastive term (the paper: 5 on CIFAR-10, 1 on CIFAR-100; 0 is FedAvg).
        temperature: tau (the paper: 0.5).
        server_lr, aggregator, weighted: FedAvg's server half.
    """

    name = "moon"
    changes_local_training = True
    keeps_client_state = True

    def __init__(
        self,
        mu: float = 1.0,
        temperature: float = 0.5,
        server_lr: float = 1.0,
        aggregator: Aggregator | None = None,
        weighted: bool = True,
    ) -> None:
        super().__init__(torch.optim.SGD, server_lr=server_lr, aggregator=aggregator, weighted=weighted)
        self.mu = check_number("strategy.mu", mu, 0.0)
        self.temperature = check_number("strategy.temperature", temperature, 0.0, low_open=True)

    def setup(self, context: StrategyContext, global_vector: Tensor) -> None:
        super().setup(context, global_vector)
        require_features(context.module_types, self.name)

    def local_update(self, client: ClientContext) -> ClientUpdate:
        start = client.start
        previous = client.state.get(PREVIOUS) if self.mu > 0 else None
        client.load(start)
        model = client.model
        optimizer = client.make_optimizer(client.parameters)
        model.train()
        stats = StepStats()
        for x, y in client.batches():
            z = model.features(x)
            out = model.classifier(z)
            loss = client.loss_fn(out, y)
            total = loss
            if previous is not None:  # no previous model: the term's gradient is zero (see above)
                z_glob, z_prev = features_at(client, start, x), features_at(client, previous, x)
                total = loss + self.mu * contrastive_loss(z, z_glob, z_prev, self.temperature)
            optimizer.zero_grad()
            total.backward()
            optimizer.step()
            stats.add(loss, out, y)
        trained = client.trained_weights()
        if self.mu > 0:
            client.state.put(PREVIOUS, trained)
        return finish(client, start, trained, stats)
