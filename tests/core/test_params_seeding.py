"""FlatModel views and derived random streams."""

from __future__ import annotations

import torch
from torch import nn

from fedtorch.params import FlatModel
from fedtorch.seeding import derive_seed, numpy_rng, torch_generator


def test_flat_model_parameters_are_views_into_one_vector():
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    before = {k: v.clone() for k, v in module.state_dict().items()}
    flat = FlatModel(module)
    # Same values after re-homing.
    for k, v in module.state_dict().items():
        torch.testing.assert_close(v, before[k])
    n_params = sum(p.numel() for p in module.parameters())
    assert flat.layout.num_params == n_params
    assert flat.layout.size == n_params + 8  # BatchNorm running mean and var (4 each)
    # Writing the vector changes the module, and training the module changes the vector.
    flat.load(torch.zeros(flat.layout.size))
    assert all(float(p.detach().abs().sum()) == 0 for p in module.parameters())
    module[0].weight.data.fill_(1.0)
    assert float(flat.vector[:12].sum()) == 12.0
    module.train()
    module(torch.randn(5, 3))  # BatchNorm updates running stats in place: in the vector
    assert float(flat.vector[n_params:].abs().sum()) > 0


def test_derived_streams_depend_only_on_their_keys():
    assert derive_seed(0, "sampler", 3) == derive_seed(0, "sampler", 3)
    assert (
        len(
            {
                derive_seed(0, "sampler", 3),
                derive_seed(1, "sampler", 3),
                derive_seed(0, "batches", 3),
                derive_seed(0, "sampler", 4),
                derive_seed(0, "sampler", 3, 0),
            }
        )
        == 5
    )
    a = numpy_rng(5, "x", 1).integers(0, 1 << 30, 4)
    b = numpy_rng(5, "x", 1).integers(0, 1 << 30, 4)
    assert (a == b).all()
    ta = torch.randperm(100, generator=torch_generator(5, "batches", 1, 2))
    tb = torch.randperm(100, generator=torch_generator(5, "batches", 1, 2))
    assert torch.equal(ta, tb)
