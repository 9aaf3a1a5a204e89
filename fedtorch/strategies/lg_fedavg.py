"""LG-FedAvg (Liang et al. 2020, "Think Locally, Act Globally: Federated Learning with Local and
Global Representations").

The mirror image of FedPer: every client keeps its own *representation* (the body: the lower
layers that turn its raw inputs into features) and the federation shares the *head* (the top
layers that classify those features):

    client k:  (b_k, h_k) <- local SGD on F_k from (b_k, h_t);   sends h_k - h_t
    server:    h_{t+1} = h_t + mean_k (h_k - h_t)    (FedAvg on the head)

Only the head travels, which for models whose head is small is a large saving in bytes. Bodies are
client state (the `local` entry); a client's first turn starts from the global body (the model's
initialization: the server never changes it). The paper warms up with FedAvg rounds before the
local representations start; run `strategy=fedavg` first and resume with this strategy's model if
wanted (not done here).

Evaluation: client k predicts with its own body and the global head; an unseen client fine-tunes a
body (head frozen) for `finetune_steps` steps from the global model.
"""

from __future__ import annotations

from fedtorch.strategies.personalization import HeadBodySplit


class LGFedAvg(HeadBodySplit):
    """FedAvg on the head, local representations.

    Args:
        head: parameter-name prefixes of the shared (global) layers; None takes the last module
            with parameters.
        finetune_steps: an unseen client's body fine-tuning steps.
        server_lr, aggregator, weighted: FedAvg's server half on the head.
    """

    name = "lg_fedavg"
    shares_head = True
