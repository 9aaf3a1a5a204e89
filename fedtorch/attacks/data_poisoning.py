"""Data-poisoning attacks: malicious clients train on poisoned data.

- Label flipping (Biggio et al. 2012; Tolpegin et al. 2020, "Data Poisoning Attacks Against
  Federated Learning Systems"): every label y of a malicious client becomes C - 1 - y, or only
  `source` becomes `target` when both are given.
- Pixel-pattern backdoor (Gu et al. 2017, "BadNets"; the federated version of Bagdasaryan et al.
  2020, "How To Backdoor Federated Learning"): a share of each malicious client's samples gets a
  small trigger pattern stamped in the image corner and the label `target_class`; optionally the
  update is boosted (model replacement). The attack success rate, the share of triggered test
  images of other classes that the global model classifies as the target, is logged at every
  evaluation as `eval/attack/backdoor_success`, next to the clean accuracy `eval/accuracy`.

Poisoned samples are appended to the train tensors and the malicious clients' indices point at
them, so no backend needs to know about the attack and honest data is never modified.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
from torch import Tensor, nn

from fedtorch.attacks.base import Attack, replacement_scale
from fedtorch.client import ClientUpdate
from fedtorch.data.base import FederatedDataset, Federation
from fedtorch.errors import OptionError, check_int, check_number
from fedtorch.pipeline import PipelineContext
from fedtorch.seeding import numpy_rng


def require_in_memory(federation: Federation, attack: str) -> FederatedDataset:
    """Data poisoning appends samples to the train tensors: only an in-memory federation has them."""
    if not isinstance(federation, FederatedDataset):
        allowed = f"data poisoning needs an in-memory federation; {federation.name!r} is generated or memory-mapped"
        raise OptionError("attack", attack, allowed)
    return federation


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
        fraction: float = 0.2,
        source: int | None = None,
        target: int | None = None,
        num_clients: int | None = None,
        seed: int | None = None,
    ) -> None:
        super().__init__(fraction, num_clients, seed)
        if (source is None) != (target is None):
            raise OptionError("attack.source", source, "attack.source and attack.target go together (or both null)")
        self.source = check_int("attack.source", source, 0, none=True)
        self.target = check_int("attack.target", target, 0, none=True)

    def flip(self, y: Tensor, num_classes: int) -> Tensor:
        if self.source is None:
            return num_classes - 1 - y
        return torch.where(y == self.source, torch.full_like(y, self.target), y)

    def poison(self, federation: Federation) -> FederatedDataset:
        if not federation.is_classification:
            raise OptionError("attack", "label_flip", "label flipping needs a classification dataset")
        federation = require_in_memory(federation, "label_flip")
        classes = federation.num_classes
        for key, value in (("attack.source", self.source), ("attack.target", self.target)):
            if value is not None and value >= classes:
                raise OptionError(key, value, f"a class of the dataset, in [0, {classes})")
        replacements = {}
        for client in sorted(self.attackers):
            ix = federation.client_indices[client]
            x, y = federation.train_x[ix], federation.train_y[ix]
            replacements[client] = (ix[:0], x.clone(), self.flip(y, classes))
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
        poison_fraction: share of each malicious client's samples replaced by triggered copies;
            every attacker must get at least one.
        trigger_size: side of the checkerboard trigger, in pixels.
        scale: boost of the malicious update (1: none; None: model replacement, see
            `fedtorch.attacks.base.replacement_scale`).
    """

    evaluates_model = True

    def __init__(
        self,
        fraction: float = 0.2,
        target_class: int = 0,
        poison_fraction: float = 0.5,
        trigger_size: int = 4,
        scale: float | None = 1.0,
        num_clients: int | None = None,
        seed: int | None = None,
    ) -> None:
        super().__init__(fraction, num_clients, seed)
        self.target_class = check_int("attack.target_class", target_class, 0)
        self.poison_fraction = check_number("attack.poison_fraction", poison_fraction, 0.0, 1.0, low_open=True)
        self.trigger_size = check_int("attack.trigger_size", trigger_size, 1)
        self.scale = check_number("attack.scale", scale, 0.0, low_open=True, none=True)
        self.trigger_x: Tensor | None = None

    def poison(self, federation: Federation) -> FederatedDataset:
        if not federation.is_classification:
            raise OptionError("attack", "backdoor", "the backdoor attack needs a classification dataset")
        federation = require_in_memory(federation, "backdoor")
        if self.target_class >= federation.num_classes:
            raise OptionError(
                "attack.target_class", self.target_class, f"a class of the dataset, in [0, {federation.num_classes})"
            )
        pixels = federation.train_x[0].numel() if len(federation.train_x) else 0
        if self.trigger_size**2 > pixels:
            raise OptionError("attack.trigger_size", self.trigger_size, f"a square of at most {pixels} features")
        value = float(federation.train_x.max())  # the "white" pixel of the (normalized) data
        replacements = {}
        for client in sorted(self.attackers):
            ix = federation.client_indices[client]
            count = int(round(self.poison_fraction * len(ix)))
            if count == 0 and len(ix) > 0:
                raise OptionError(
                    "attack.poison_fraction",
                    self.poison_fraction,
                    f"malicious client {client} has {len(ix)} samples and would poison none: at least "
                    f"{0.5 / len(ix):.3g}",
                )
            rng = numpy_rng(self.seed, "backdoor", client)
            chosen = np.zeros(len(ix), dtype=bool)
            chosen[rng.choice(len(ix), size=count, replace=False)] = True
            mask = torch.as_tensor(chosen, device=ix.device)
            poisoned = ix[mask]
            x = stamp_trigger(federation.train_x[poisoned], value, self.trigger_size)
            y = torch.full((len(poisoned),), self.target_class, dtype=federation.train_y.dtype)
            replacements[client] = (ix[~mask], x, y)
        # The success-rate test set: triggered test images whose true class is not the target.
        keep = federation.test_y != self.target_class
        self.trigger_x = stamp_trigger(federation.test_x[keep], value, self.trigger_size)
        return with_client_samples(federation, replacements)

    def setup(self, context: PipelineContext) -> None:
        super().setup(context)
        if self.trigger_x is not None:
            self.trigger_x = self.trigger_x.to(context.device)  # evaluated on the device, moved once

    def tamper(self, step: int, update: ClientUpdate) -> Tensor:
        scale = self.scale if self.scale is not None else replacement_scale(self.context, update)
        return update.delta if scale == 1.0 else update.delta * scale

    @torch.no_grad()
    def success_rate(self, model: nn.Module) -> float:
        """Share of triggered non-target test images that `model` labels `target_class`."""
        if self.trigger_x is None:
            raise RuntimeError("success_rate needs poison() to have run")
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        hits = 0
        for start in range(0, len(self.trigger_x), 2048):
            out = model(self.trigger_x[start : start + 2048].to(device))
            hits += int((out.argmax(-1) == self.target_class).sum())
        model.train(was_training)
        return hits / max(len(self.trigger_x), 1)

    def evaluate_model(self, model: nn.Module) -> dict[str, float]:
        if self.trigger_x is None:
            return {}
        return {"attack/backdoor_success": self.success_rate(model)}
