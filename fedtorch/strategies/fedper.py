"""FedPer (Arivazhagan et al. 2019, "Federated Learning with Personalization Layers").

The model is split into a shared body (the base layers) and a personal head (the last layers).
Every client keeps its own head; in its turn it trains body and head together from the global
body and its own head, keeps the head and sends back only the body's change:

    client k:  (b_k, h_k) <- local SGD on F_k from (b_t, h_k);   sends b_k - b_t
    server:    b_{t+1} = b_t + mean_k (b_k - b_t)    (FedAvg on the body)

The global head is never updated (it is only the starting head of a client's first turn). Heads
are client state (the `local` entry, `ClientStateStore`). The head is chosen by parameter-name
prefixes (`head`), by default the last module that has parameters (e.g. `net.5` of fedtorch's 2NN);
with a one-layer model the whole model is the head and FedPer is purely local training.

Evaluation: client k predicts with the global body and its own head; an unseen client fine-tunes
the head (body frozen) for `finetune_steps` steps from the global model.
"""

from __future__ import annotations

from fedtorch.strategies.personalization import HeadBodySplit


class FedPer(HeadBodySplit):
    """FedAvg on the body, personal heads.

    Args:
        head: parameter-name prefixes of the personal layers; None takes the last module with
            parameters.
        finetune_steps: an unseen client's head fine-tuning steps.
        server_lr: FedAvg's server step (on the body).
        aggregator: reducer of the body deltas.
        weighted: sample-weighted (FedAvg) or uniform mean.
    """

    name = "fedper"
