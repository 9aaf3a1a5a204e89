"""FedBN (Li et al. 2021, "FedBN: Federated Learning on Non-IID Features via Local Batch
Normalization").

Clients whose inputs differ in distribution (feature shift: scanners, cameras, styles) keep their
normalization layers local: each client's BatchNorm affine parameters (gamma, beta) and running
statistics (mean, variance) never leave it, and everything else is averaged as in FedAvg:

    client k:  w_k <- local SGD on F_k from (shared_t, norm_k);   sends shared_k - shared_t
    server:    shared_{t+1} = shared_t + mean_k (shared_k - shared_t)

so each client normalizes its features with its own statistics (the paper's Theorem: faster
convergence than FedAvg under feature shift). The norm layers are found by module type
(`fedtorch.sharing`'s `norm`: BatchNorm, GroupNorm, LayerNorm, InstanceNorm); a model without any
is trained exactly as FedAvg. BatchNorm's integer `num_batches_tracked` counter is not a weight of
the flat model (it only matters for BatchNorm with `momentum=None`) and is not personalized.

Evaluation: client k predicts with the global model and its own norm layers; an unseen client
fine-tunes norm layers (statistics included) for `finetune_steps` steps from the global model.
"""

from __future__ import annotations

from fedtorch.aggregators import Aggregator
from fedtorch.sharing import ParameterSet
from fedtorch.strategies.personalization import PartialSharing


class FedBN(PartialSharing):
    """FedAvg on everything but the normalization layers, which stay on the clients.

    Args:
        finetune_steps: an unseen client's norm-layer fine-tuning steps.
        server_lr, aggregator, weighted: FedAvg's server half.
    """

    name = "fedbn"

    def __init__(
        self,
        finetune_steps: int = 20,
        server_lr: float = 1.0,
        aggregator: Aggregator | None = None,
        weighted: bool = True,
    ) -> None:
        shared = ParameterSet(include=("all",), exclude=("norm",), key="strategy")
        super().__init__(shared, finetune_steps, server_lr=server_lr, aggregator=aggregator, weighted=weighted)
