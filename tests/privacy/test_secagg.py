"""Secure aggregation: the decoded sum is the plain sum (exactly for integers, within the fixed-point
resolution otherwise), with and without dropouts; overflow is refused; what the server sees of one
client does not depend on that client's update."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from fedtorch.aggregators import CoordinateMedian
from fedtorch.errors import OptionError
from fedtorch.privacy import CentralDP, SecureAggregation
from fedtorch.privacy.secagg import shamir_reconstruct, shamir_share
from fedtorch.strategies import FedAvg
from tests._server import Server


def _run(secagg: SecureAggregation, deltas: list[torch.Tensor], samples: list[int], round_idx=1, weighted=True):
    ids = [3 * k + 1 for k in range(len(deltas))]  # ids need not be 0..m-1
    sizes = [1] * (3 * len(deltas) + 1)
    for cid, n in zip(ids, samples):
        sizes[cid] = n
    server = Server(FedAvg(weighted=weighted), torch.zeros(deltas[0].numel()), [secagg], client_sizes=sizes,
                    expected_cohort=len(deltas))  # fmt: skip
    server.round(round_idx, deltas, samples, clients=ids)
    return server.vector, [ids.index(c) for c in secagg.received_clients]


def test_shamir_reconstructs_from_any_t_shares():
    rng = np.random.default_rng(0)
    secret = 123456789012345
    shares = shamir_share(secret, 3, [1, 2, 3, 4, 5], rng)
    for picked in ([0, 1, 2], [4, 2, 0], [1, 3, 4]):
        assert shamir_reconstruct([(i + 1, shares[i]) for i in picked]) == secret
    assert shamir_reconstruct([(1, shares[0]), (2, shares[1])]) != secret


@pytest.mark.parametrize("dropout", [0.0, 0.4])
def test_integer_inputs_decode_to_the_exact_sum(dropout):
    gen = torch.Generator().manual_seed(1)
    deltas = [torch.randint(-1000, 1000, (257,), generator=gen).double() for _ in range(8)]
    secagg = SecureAggregation(seed=5, fractional_bits=0, dropout=dropout, threshold=0.3)
    result, survivors = _run(secagg, deltas, [1] * 8, weighted=False)
    assert (len(survivors) < 8) == (dropout > 0)
    expected = sum(deltas[k] for k in survivors) / len(survivors)
    summed = result.double() * len(survivors)
    assert torch.equal(summed.round(), expected.mul(len(survivors)))  # the decoded sum is exact
    assert float(secagg.step_metrics()["secagg/dropped"]) == 8 - len(survivors)


@pytest.mark.parametrize("dropout", [0.0, 0.4])
def test_weighted_real_inputs_are_exact_to_the_fixed_point_resolution(dropout):
    gen = torch.Generator().manual_seed(2)
    deltas = [torch.randn(1000, generator=gen) for _ in range(10)]
    samples = [int(n) for n in torch.randint(5, 500, (10,), generator=gen)]
    secagg = SecureAggregation(seed=9, fractional_bits=20, dropout=dropout, threshold=0.3)
    result, survivors = _run(secagg, deltas, samples)
    weight = sum(samples[k] for k in survivors)
    assert (len(survivors) < 10) == (dropout > 0) and len(survivors) >= 4
    expected = sum(samples[k] * deltas[k].double() for k in survivors) / weight
    # Each client's encoding is off by at most 2^-21; the float32 result adds its own rounding.
    bound = len(survivors) * 2.0**-21 / weight + 1e-7 * float(expected.abs().max())
    assert float((result.double() - expected).abs().max()) <= bound


def test_too_many_dropouts_abort_the_round():
    deltas = [torch.ones(5) for _ in range(6)]
    secagg = SecureAggregation(seed=0, dropout=0.95, threshold=0.5)
    strategy = FedAvg()
    server = Server(strategy, torch.zeros(5), [secagg], num_clients=6)
    metrics = server.round(1, deltas, [1] * 6)
    assert torch.equal(server.vector, torch.zeros(5))
    assert secagg.step_metrics()["secagg/aborted"] == 1.0
    assert metrics["skipped_rounds"] == 1.0  # an aborted round takes no server step at all


def test_overflow_is_detected_not_wrapped():
    secagg = SecureAggregation(modulus_bits=32, fractional_bits=16)
    with pytest.raises(OverflowError, match="overflow"):
        secagg.encode(torch.tensor([0.0, 5000.0]), weight=1.0, cohort_size=10)  # 10 * 5000 * 2^16 > 2^31
    secagg.encode(torch.tensor([0.0, 3000.0]), weight=1.0, cohort_size=10)  # 10 * 3000 * 2^16 < 2^31


def test_the_masked_vector_does_not_depend_on_the_update():
    secagg = SecureAggregation(seed=4, modulus_bits=62, fractional_bits=24)
    cohort, size = [0, 1, 2, 3], 20_000
    zero = secagg.encode(torch.zeros(size), 1.0, 4)
    big = secagg.encode(torch.full((size,), 1e6), 1.0, 4)
    views = {
        name: secagg.mask(round_idx=7, client=2, cohort=cohort, encoded=encoded).double() / secagg.modulus
        for name, encoded in (("zero", zero), ("big", big))
    }
    for view in views.values():
        assert stats.kstest(view.numpy(), "uniform").pvalue > 1e-3  # uniform on the ring
    # Other seeds (rounds) for the same inputs: the two views are indistinguishable.
    a = secagg.mask(8, 2, cohort, zero).double() / secagg.modulus
    b = secagg.mask(9, 2, cohort, big).double() / secagg.modulus
    assert stats.ks_2samp(a.numpy(), b.numpy()).pvalue > 1e-3
    # The masks cancel: unmasking the sum of every client's view gives the sum of the inputs.
    secagg.cohort = cohort
    inputs = [zero, big, zero, big]
    ring_sum = torch.remainder(sum(secagg.mask(7, k, cohort, inputs[k]) for k in cohort), secagg.modulus)
    decoded = secagg.decode(secagg.unmask(7, ring_sum, survivors=cohort))
    assert torch.equal(decoded, torch.full((size,), 2e6, dtype=torch.float64))


def test_secagg_refuses_reducers_and_strategies_that_need_every_update():
    from fedtorch.strategies.fednova import FedNova

    for strategy in (FedAvg(aggregator=CoordinateMedian()), FedNova()):
        with pytest.raises(OptionError, match="only the sum"):
            Server(strategy, torch.zeros(3), [SecureAggregation()], num_clients=4)


def test_a_ring_too_small_for_the_cohort_is_refused_before_any_work():
    # 2^15 / 2^12 = 8: a cohort of 10 clients already overflows with coordinates of 1.
    with pytest.raises(OptionError, match=r"secagg.modulus_bits=16 is invalid: the ring 2\^16"):
        Server(FedAvg(weighted=False), torch.zeros(3), [SecureAggregation(modulus_bits=16, fractional_bits=12)])


def test_secagg_composes_with_central_dp():
    # Clip on the client, mask, unmask on the server, then noise: with z = 0 it is plain DP-FedAvg.
    dp = CentralDP(clip_norm=1.0, noise_multiplier=0.0, expected_cohort_size=4.0)
    secagg = SecureAggregation(seed=1, dropout=0.3, threshold=0.2)
    server = Server(FedAvg(), torch.zeros(2), [dp.clipper, secagg, dp], num_clients=6)
    deltas = [torch.tensor([3.0, 4.0]), torch.tensor([0.1, 0.2]), torch.tensor([0.0, -0.5]), torch.tensor([1.0, 0.0])]
    server.round(1, deltas, samples=[100 * (k + 1) for k in range(4)])
    survivors = secagg.received_clients
    assert 0 < len(survivors) < 4
    clipped = [d / max(1.0, float(d.norm())) for d in deltas]
    expected = sum(clipped[k] for k in survivors) / 4.0
    assert torch.allclose(server.vector, expected, atol=1e-6)
