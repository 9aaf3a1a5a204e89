"""`LogisticRegression(binary=True)` is FLamby's Fed-Heart-Disease baseline, Linear(d, 1) + sigmoid
+ BCE: the same loss and gradients, checked against that model written in plain torch."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fedtorch.errors import OptionError
from fedtorch.models import LogisticRegression


def test_binary_logits_give_flamby_bce_and_its_gradients():
    torch.manual_seed(0)
    x, y = torch.randn(16, 13), torch.randint(0, 2, (16,))
    ours = LogisticRegression((13,), 2, binary=True)
    flamby = torch.nn.Linear(13, 1)  # FLamby's Baseline: sigmoid(Linear(13, 1)(x)), BCELoss
    flamby.load_state_dict(ours.linear.state_dict())

    loss = F.cross_entropy(ours(x), y)
    reference = F.binary_cross_entropy(torch.sigmoid(flamby(x)).squeeze(1), y.float())
    loss.backward()
    reference.backward()
    torch.testing.assert_close(loss, reference, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(ours.linear.weight.grad, flamby.weight.grad, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(ours.linear.bias.grad, flamby.bias.grad, rtol=1e-5, atol=1e-7)
    assert sum(p.numel() for p in ours.parameters()) == 14  # not the 28 of two free logits


def test_two_free_logits_move_twice_as_fast():
    """Why the option exists: with logits (z0, z1), SGD moves z1 - z0 by twice the BCE model's step."""
    torch.manual_seed(1)
    x, y = torch.randn(8, 3), torch.randint(0, 2, (8,))
    free = LogisticRegression((3,), 2)
    with torch.no_grad():
        free.linear.weight.zero_()
        free.linear.bias.zero_()
    F.cross_entropy(free(x), y).backward()
    binary = LogisticRegression((3,), 2, binary=True)
    with torch.no_grad():
        binary.linear.weight.zero_()
        binary.linear.bias.zero_()
    F.cross_entropy(binary(x), y).backward()
    difference = free.linear.weight.grad[1] - free.linear.weight.grad[0]
    torch.testing.assert_close(difference, 2 * binary.linear.weight.grad[0])


def test_binary_needs_two_classes():
    with pytest.raises(OptionError, match="model.binary=True is invalid: true only for 2 classes"):
        LogisticRegression((4,), 3, binary=True)
