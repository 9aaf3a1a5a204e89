"""Stragglers either report the work they did (FedProx) or nothing (the FedAvg baseline of Li et al.
2020, which "simply drops devices that fail to complete E epochs"); who straggles is the same."""

from __future__ import annotations

import numpy as np
import pytest

from fedtorch.errors import OptionError
from fedtorch.privacy import sampling_of
from fedtorch.samplers import UniformSampler
from fedtorch.seeding import numpy_rng


def _pair():
    partial = UniformSampler(clients_per_round=20, stragglers=0.5, dropout=0.1)
    drop = UniformSampler(clients_per_round=20, stragglers=0.5, dropout=0.1, straggler_policy="drop")
    for s in (partial, drop):
        s.setup(np.full(100, 30))
    return partial, drop


def test_dropping_stragglers_removes_exactly_the_partial_policys_stragglers():
    partial, drop = _pair()
    for r in range(1, 30):
        a, b = partial.cohort(r, numpy_rng(0, "sampler", r)), drop.cohort(r, numpy_rng(0, "sampler", r))
        slow = set(a.ids[a.work < 1].tolist())
        assert set(b.ids.tolist()) == set(a.ids.tolist()) - slow and np.all(b.work == 1.0)
        assert b.stragglers == a.stragglers == len(slow) and b.stragglers_dropped == len(slow)
        assert b.dropped == a.dropped  # dropouts are counted apart from the stragglers dropped
    assert drop.report_probability() == pytest.approx(0.9 * 0.5) and partial.report_probability() == 0.9


def test_dropped_stragglers_are_not_an_accountable_sampling_scheme():
    _, drop = _pair()
    with pytest.raises(ValueError, match="straggler_policy=partial"):
        sampling_of(drop)
    with pytest.raises(OptionError, match="sampler.straggler_policy='late' is invalid: one of partial, drop"):
        UniformSampler(straggler_policy="late")
