"""Data-poisoning attacks: malicious clients train on poisoned data.

- Label flipping (Biggio et al. 2012; Tolpegin et al. 2020, "Data Poisoning Attacks Against
  Federated Learning Systems"): every label y of a malicious client becomes C - 1 - y, or only
  `source` becomes `target` when both are given.
- Pixel-pattern backdoor (Gu et al. 2017, "BadNets"; the federated version of Bagdasaryan et al.
  2020, "How To Backdoor Federated Learning"): a share of each malicious client's samples gets a
  small trigger pattern stamped in the image corner and the label `target_class`; optionally the
  update is boosted (model replacement). The attack success rate, the share of triggered test
  images of other classes that the global model classifies as the target, is logged every round
  as `attack/backdoor_success`, next to the clean accuracy `eval/accuracy`.

Poisoned samples are appended to the train tensors and the malicious clients' indices point at
them, so no backend needs to know about the attack and honest data is never modified.
"""

from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call

from fedtorch.attacks.base import Attack
from fedtorch.client import ClientUpdate
from fedtorch.data.base import FederatedDataset
from fedtorch.seeding import numpy_rng
from fedtorch.strategies.base import Strategy


def with_client_samples(federation: FederatedDataset, replacements: dict[int, tuple[Tensor, Tensor, Tensor]]):
    """A federation where client k keeps `kept` of its indices and gets new samples (x, y) appended.

    `replacements[k] = (kept_indices, new_x, new_y)`; the new samples go at the end of the train
    tensors, so honest clients' indices are unchanged.
    """
    xs, ys = [federation.train_x], [federation.train_y]
    indices = list(federation.client_indices)
    offset = len(federation.train_x)
    for client in sorted(replacements):
        kept, new_x, new_y = replacements[client]
        added = torch.arange(offset, offset + len(new_x), device=indices[client].device)
        indices[client] = torch.cat([kept.to(added.device), added])
        offset += len(new_x)
        xs.append(new_x.to(federation.train_x.device))
        ys.append(new_y.to(federation.train_y.device))
    return replace(federation, train_x=torch.cat(xs), train_y=torch.cat(ys), client_indices=indices)


class LabelFlip(Attack):
    """Malicious clients train on flipped labels: y -> C - 1 - y, or source -> target.

    Args:
        source, target: flip only this class into that one (both or neither).
    """

    def __init__(
        self,
        num_clients: int,
        fraction: float = 0.2,
        source: int | None = None,
        target: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(num_clients, fraction, seed)
        if (source is None) != (target is None):
            raise ValueError("attack.source and attack.target go together (or both null: flip every label)")
        self.source, self.target = source, target

    def flip(self, y: Tensor, num_classes: int) -> Tensor:
        if self.source is None:
            return num_classes - 1 - y
        return torch.where(y == self.source, torch.full_like(y, self.target), y)

    def poison(self, federation: FederatedDataset) -> FederatedDataset:
        if not federation.is_classification:
            raise ValueError("label flipping needs a classification dataset")
        replacements = {}
        for client in sorted(self.attackers):
            ix = federation.client_indices[client]
            x, y = federation.train_x[ix], federation.train_y[ix]
            replacements[client] = (ix[:0], x.clone(), self.flip(y, federation.num_classes))
        return with_client_samples(federation, replacements)


def stamp_trigger(x: Tensor, value: float, size: int = 4) -> Tensor:
    """A copy of `x` with a size x size checkerboard in the bottom-right corner (1-pixel margin).

    Images are (N, ..., H, W); flat feature vectors (N, F) get the pattern on their last
    size * size features.
    """
    out = x.clone()
    pattern = (torch.arange(size).unsqueeze(0) + torch.arange(size).unsqueeze(1)) % 2 == 0
    if x.dim() >= 3:
        corner = out[..., -size - 1 : -1, -size - 1 : -1]
        corner[..., pattern.to(x.device)] = value
    else:
        flat = out.reshape(len(out), -1)
        flat[:, -size * size :][:, pattern.reshape(-1).to(x.device)] = value
        out = flat.reshape(x.shape)
    return out


class Backdoor(Attack):
    """Pixel-pattern backdoor: triggered samples labelled `target_class`, optionally boosted.

    Args:
        target_class: the label the trigger should force.
        poison_fraction: share of each malicious client's samples replaced by triggered copies.
        trigger_size: side of the checkerboard trigger, in pixels.
        scale: boost of the malicious update (1: none; None: model replacement, E[m] / server_lr).
        expected_cohort_size: E[m], for `scale=None`.
        model: a module with the global model's architecture, to measure the attack success rate
            (a private copy is kept; only its structure is used).
    """

    def __init__(
        self,
        num_clients: int,
        fraction: float = 0.2,
        target_class: int = 0,
        poison_fraction: float = 0.5,
        trigger_size: int = 4,
        scale: float | None = 1.0,
        expected_cohort_size: float | None = None,
        model: nn.Module | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(num_clients, fraction, seed)
        if not 0.0 < poison_fraction <= 1.0:
            raise ValueError(f"attack.poison_fraction={poison_fraction} must be in (0, 1]")
        if scale is None and expected_cohort_size is None:
            raise ValueError("attack.scale=None (model replacement) needs the expected cohort size")
        self.target_class = target_class
        self.poison_fraction = poison_fraction
        self.trigger_size = trigger_size
        self.scale = scale
        self.expected_cohort_size = expected_cohort_size
        self.model = None if model is None else copy.deepcopy(model)
        self.trigger_x: Tensor | None = None
        self._success: float | None = None

    def poison(self, federation: FederatedDataset) -> FederatedDataset:
        if not federation.is_classification:
            raise ValueError("the backdoor attack needs a classification dataset")
        if not 0 <= self.target_class < federation.num_classes:
            raise ValueError(f"attack.target_class={self.target_class} must be in [0, {federation.num_classes})")
        value = float(federation.train_x.max())  # the "white" pixel of the (normalized) data
        replacements = {}
        for client in sorted(self.attackers):
            ix = federation.client_indices[client]
            rng = numpy_rng(self.seed, "backdoor", client)
            count = int(round(self.poison_fraction * len(ix)))
            chosen = np.zeros(len(ix), dtype=bool)
            chosen[rng.choice(len(ix), size=count, replace=False)] = True
            mask = torch.as_tensor(chosen, device=ix.device)
            poisoned = ix[mask]
            x = stamp_trigger(federation.train_x[poisoned], value, self.trigger_size)
            y = torch.full((len(poisoned),), self.target_class, dtype=federation.train_y.dtype)
            replacements[client] = (ix[~mask], x, y)
        # The success-rate test set: triggered test images whose true class is not the target.
        keep = federation.test_y != self.target_class
        self.trigger_x = stamp_trigger(federation.test_x[keep], value, self.trigger_size).cpu()
        return with_client_samples(federation, replacements)

    def setup(self, strategy: Strategy) -> None:
        if self.scale is None:
            self.scale = float(self.expected_cohort_size) / float(getattr(strategy, "server_lr", 1.0))
        self.strategy = strategy
        if self.model is not None and self.trigger_x is not None:
            device = strategy.global_vector.device
            self.model = self.model.to(device).eval()
            self.trigger_x = self.trigger_x.to(device)

    def tamper(self, round_idx: int, update: ClientUpdate) -> Tensor:
        return update.delta if self.scale == 1.0 else update.delta * self.scale

    @torch.no_grad()
    def success_rate(self, vector: Tensor) -> float:
        """Share of triggered non-target test images that the model `vector` labels `target_class`."""
        if self.model is None or self.trigger_x is None:
            raise RuntimeError("success_rate needs a model and poison() to have run")
        weights = self.strategy.layout.state_dict(vector)
        hits = 0
        for start in range(0, len(self.trigger_x), 2048):
            out = functional_call(self.model, weights, (self.trigger_x[start : start + 2048],))
            hits += int((out.argmax(-1) == self.target_class).sum())
        return hits / max(len(self.trigger_x), 1)

    def round_metrics(self) -> dict[str, float]:
        metrics = super().round_metrics()
        if self.model is not None and self.trigger_x is not None:
            metrics["attack/backdoor_success"] = self.success_rate(self.strategy.global_vector)
        return metrics
