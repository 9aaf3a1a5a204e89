"""Secure aggregation, simulated: Bonawitz et al. 2017, "Practical Secure Aggregation for
Privacy-Preserving Machine Learning" (the honest-but-curious protocol with double masking).

What the simulation reproduces exactly is the *arithmetic* the server sees:

1. Fixed-point encoding into the ring Z_R, R = 2^modulus_bits (at most 2^62, so a sum of two ring
   elements fits int64): x -> round(w * x * 2^fractional_bits) mod R, where w is the client's
   aggregation weight (its sample count for FedAvg's weighted mean, 1 for a uniform mean): clients
   pre-multiply, the server divides the decoded sum by the total weight of the updates that
   arrived (the weights are public, as in FedAvg). Before encoding, each client checks that
   m * max|w x| * 2^fractional_bits < R / 2 for a cohort of m: then no sum of m encodings can wrap,
   and an update that would overflow raises OverflowError instead of decoding to garbage.
2. Key agreement: client u has a per-round secret key sk_u and public key g^sk_u in the
   multiplicative group mod the Mersenne prime 2^127 - 1 (Diffie-Hellman; a *toy* group: this
   simulates the protocol's data flow, it is not a secure implementation). The pairwise seed
   s_uv = g^(sk_u sk_v) is known to u and v only.
3. Double masking: y_u = x_u + PRG(b_u) + sum_{v > u} PRG(s_uv) - sum_{v < u} PRG(s_uv) (mod R),
   with a private self-mask seed b_u. Pairwise masks cancel in the sum over the whole cohort;
   y_u alone is uniform on Z_R whatever x_u is.
4. Dropouts: a client may drop out after masking (its y_u never arrives). Every client has
   Shamir-shared (t of m) its sk_u and b_u with the cohort; from t surviving holders the server
   reconstructs sk_v of each dropped client (to strip the pairwise masks it shared with the
   survivors) and b_u of each survivor (to strip the self masks). With fewer than t survivors the
   round aborts (no model update), as in the protocol.

The server-side view is the ring sum only: downstream transforms and the aggregator get a zero
delta per client, and `on_aggregate` returns the decoded sum divided by the total weight of the
survivors. The transform declares `sum_only`, so reducers that need individual updates (median,
Krum) and strategies that read them are refused at start. With central DP, clip before masking
(client side) and add the noise after unmasking: the step record's contributors are the
survivors, which is what `CentralDP` counts.

Capacity: before any work, `setup` checks that the ring holds a sum of E[m] encodings of
coordinates of magnitude 1 at the largest client weight (a gross misconfiguration such as
`modulus_bits=16 fractional_bits=12` is refused in one line); during the run, an update that
would still overflow raises `SecureAggregationOverflow`, which stops the run cleanly.

Shares are generated lazily (only those the server will use), from the same per-(round, client)
streams, which changes no result.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from fedtorch.client import ClientUpdate
from fedtorch.errors import OptionError, check_int, check_number
from fedtorch.pipeline import PipelineContext, StepFailed, StepRecord, UpdateTransform
from fedtorch.seeding import derive_seed, numpy_rng

PRIME = 2**127 - 1  # Mersenne prime: the Diffie-Hellman group and the Shamir field
GENERATOR = 3


def shamir_share(secret: int, threshold: int, xs: Sequence[int], rng: np.random.Generator) -> list[int]:
    """Shares f(x) for x in `xs` of a random degree-(t-1) polynomial over GF(PRIME) with f(0) = secret."""
    coefficients = [secret % PRIME] + [int.from_bytes(rng.bytes(16), "little") % PRIME for _ in range(threshold - 1)]
    shares = []
    for x in xs:
        value = 0
        for c in reversed(coefficients):  # Horner
            value = (value * x + c) % PRIME
        shares.append(value)
    return shares


def shamir_reconstruct(points: Sequence[tuple[int, int]]) -> int:
    """f(0) from t points (x, f(x)) by Lagrange interpolation over GF(PRIME)."""
    secret = 0
    for i, (xi, yi) in enumerate(points):
        num, den = 1, 1
        for j, (xj, _) in enumerate(points):
            if i != j:
                num = num * (-xj) % PRIME
                den = den * (xi - xj) % PRIME
        secret = (secret + yi * num * pow(den, -1, PRIME)) % PRIME
    return secret


class SecureAggregationOverflow(StepFailed, OverflowError):
    """An update too large for the ring: the run stops (cleanly) rather than decode garbage."""

    reason = "secagg_overflow"


class SecureAggregation(UpdateTransform):
    """Pairwise- and self-masked fixed-point sums with dropout recovery (simulated protocol).

    Args:
        seed: root seed; keys, masks, shares and dropouts of step r derive from (seed, ..., r, client);
            None: the run's.
        modulus_bits: R = 2^modulus_bits, in [8, 62].
        fractional_bits: fixed-point resolution 2^-fractional_bits (per unit of weight).
        dropout: probability that a client drops out after masking (its masked input never arrives).
        threshold: Shamir threshold as a fraction of the cohort: t = floor(threshold * m) + 1.
    """

    group = "secagg"
    sum_only = True

    def __init__(
        self,
        seed: int | None = None,
        modulus_bits: int = 62,
        fractional_bits: int = 24,
        dropout: float = 0.0,
        threshold: float = 0.5,
    ) -> None:
        modulus_bits = check_int("secagg.modulus_bits", modulus_bits, 8)
        if modulus_bits > 62:
            raise OptionError("secagg.modulus_bits", modulus_bits, "an integer in [8, 62] (int64 arithmetic)")
        fractional_bits = check_int("secagg.fractional_bits", fractional_bits, 0)
        if fractional_bits >= modulus_bits:
            raise OptionError("secagg.fractional_bits", fractional_bits, f"an integer in [0, {modulus_bits})")
        check_number("secagg.dropout", dropout, 0.0, 1.0, high_open=True)
        check_number("secagg.threshold", threshold, 0.0, 1.0, high_open=True)
        self._seed = seed
        self.seed = 0 if seed is None else int(seed)
        self.modulus_bits = modulus_bits
        self.modulus = 2**modulus_bits
        self.fractional_bits = fractional_bits
        self.scale = float(2**fractional_bits)
        self.dropout = float(dropout)
        self.threshold = float(threshold)
        self.report_probability = 1.0 - self.dropout
        self.cohort: list[int] = []
        self.received_clients: list[int] = []
        self.received_weight = 0.0
        self._metrics: dict[str, float] = {}

    def setup(self, context: PipelineContext) -> None:
        if self._seed is None:
            self.seed = context.seed
        self.context = context
        weights = [context.weighting(ClientUpdate(k, torch.zeros(0), int(n), 0)) for k, n in self._largest(context)]
        largest = max(weights, default=1.0)
        cohort = max(1.0, context.expected_cohort)
        capacity = self.modulus / 2 / self.scale  # the largest |sum of w x| the ring holds
        if cohort * largest >= capacity:
            raise OptionError(
                "secagg.modulus_bits",
                self.modulus_bits,
                f"the ring 2^{self.modulus_bits} with secagg.fractional_bits={self.fractional_bits} holds sums up to "
                f"{capacity:.4g}, less than {cohort:g} clients x weight {largest:g} x a coordinate of 1: raise "
                "secagg.modulus_bits or lower secagg.fractional_bits",
            )

    @staticmethod
    def _largest(context: PipelineContext) -> list[tuple[int, int]]:
        """(client, size) of the largest client: the largest aggregation weight FedAvg gives."""
        if len(context.client_sizes) == 0:
            return []
        k = int(np.argmax(context.client_sizes))
        return [(k, int(context.client_sizes[k]))]

    # -- protocol pieces (public so tests can check what the server sees) ----------------------
    def secret_key(self, round_idx: int, client: int) -> int:
        return 2 + derive_seed(self.seed, "secagg_sk", round_idx, client)

    def public_key(self, round_idx: int, client: int) -> int:
        return pow(GENERATOR, self.secret_key(round_idx, client), PRIME)

    def self_seed(self, round_idx: int, client: int) -> int:
        return derive_seed(self.seed, "secagg_self", round_idx, client)

    def threshold_for(self, cohort_size: int) -> int:
        return min(cohort_size, math.floor(self.threshold * cohort_size) + 1)

    def _prg(self, seed: int, size: int, device: torch.device) -> Tensor:
        generator = torch.Generator().manual_seed(seed % 2**63)
        return torch.randint(0, self.modulus, (size,), generator=generator, dtype=torch.int64).to(device)

    def encode(self, vector: Tensor, weight: float, cohort_size: int) -> Tensor:
        """round(w * x * 2^f) mod R, after checking that a sum of `cohort_size` such values cannot wrap."""
        scaled = torch.round(vector.to(torch.float64) * (weight * self.scale))
        peak = float(scaled.abs().max()) if scaled.numel() else 0.0
        if cohort_size * peak >= self.modulus / 2:
            raise SecureAggregationOverflow(
                f"secure aggregation would overflow: cohort {cohort_size} x max|w x| {peak / self.scale:.4g} x "
                f"2^{self.fractional_bits} >= 2^{self.modulus_bits - 1}; lower secagg.fractional_bits, raise "
                "secagg.modulus_bits, or clip the updates (e.g. privacy=central_fixed)"
            )
        return torch.remainder(scaled.to(torch.int64), self.modulus)

    def decode(self, ring_sum: Tensor) -> Tensor:
        """Centered lift of a ring element to [-R/2, R/2), divided by the fixed-point scale (float64)."""
        lifted = torch.where(ring_sum >= self.modulus // 2, ring_sum - self.modulus, ring_sum)
        return lifted.to(torch.float64) / self.scale

    def mask(self, round_idx: int, client: int, cohort: Sequence[int], encoded: Tensor) -> Tensor:
        """y_u = x_u + PRG(b_u) + sum_{v>u} PRG(s_uv) - sum_{v<u} PRG(s_uv) mod R (what the server receives)."""
        size, device = encoded.numel(), encoded.device
        masked = encoded + self._prg(self.self_seed(round_idx, client), size, device)
        sk = self.secret_key(round_idx, client)
        for other in cohort:
            if other == client:
                continue
            pair = self._prg(pow(self.public_key(round_idx, other), sk, PRIME), size, device)
            masked = masked + pair if client < other else masked - pair
            masked = torch.remainder(masked, self.modulus)
        return torch.remainder(masked, self.modulus)

    def _shares(self, round_idx: int, owner: int, secret: int, kind: int, holders: Sequence[int], t: int) -> list[int]:
        rng = numpy_rng(self.seed, "secagg_shamir", round_idx, owner, kind)
        positions = [self.cohort.index(h) + 1 for h in holders]
        return shamir_share(secret, t, positions, rng)

    def _reconstruct(self, round_idx: int, owner: int, secret: int, kind: int, holders: Sequence[int], t: int) -> int:
        shares = self._shares(round_idx, owner, secret, kind, holders, t)
        points = [(self.cohort.index(h) + 1, s) for h, s in zip(holders, shares)]
        return shamir_reconstruct(points)

    def unmask(self, round_idx: int, ring_sum: Tensor, survivors: Sequence[int]) -> Tensor:
        """Remove the survivors' self masks and the pairwise masks they shared with dropped clients."""
        size, device = ring_sum.numel(), ring_sum.device
        t = self.threshold_for(len(self.cohort))
        holders = list(survivors)[:t]
        total = ring_sum.clone()
        for u in survivors:
            b_u = self._reconstruct(round_idx, u, self.self_seed(round_idx, u), 0, holders, t)
            total = torch.remainder(total - self._prg(b_u, size, device), self.modulus)
        alive = set(survivors)
        for v in self.cohort:
            if v in alive:
                continue
            sk_v = self._reconstruct(round_idx, v, self.secret_key(round_idx, v), 1, holders, t)
            for u in survivors:
                pair = self._prg(pow(self.public_key(round_idx, u), sk_v, PRIME), size, device)
                # y_u carried +PRG(s_uv) when u < v, -PRG(s_uv) when u > v: undo that.
                total = total - pair if u < v else total + pair
                total = torch.remainder(total, self.modulus)
        return total

    # -- the transform ------------------------------------------------------------------------
    def begin(self, record: StepRecord) -> None:
        self.cohort = list(record.cohort)
        self.received_clients = []
        self.received_weight = 0.0
        self._sum = torch.zeros(self.context.layout.size, dtype=torch.int64, device=self.context.device)
        self._metrics = {}

    def on_update(self, update: ClientUpdate, record: StepRecord) -> ClientUpdate:
        client = update.client_id
        round_idx = record.step
        if client not in self.cohort:
            raise RuntimeError(f"secure aggregation: client {client} is not in step {round_idx}'s cohort")
        weight = self.context.weighting(update)
        masked = self.mask(round_idx, client, self.cohort, self.encode(update.delta, weight, len(self.cohort)))
        dropped = self.dropout > 0 and numpy_rng(self.seed, "secagg_dropout", round_idx, client).random() < self.dropout
        if dropped:
            record.contributors.remove(client)  # its masked input never reaches the server
        else:
            self._sum = torch.remainder(self._sum + masked, self.modulus)
            self.received_clients.append(client)
            self.received_weight += weight
        # What crosses the wire: one ring element per coordinate, packed to modulus_bits.
        payload = 0 if dropped else math.ceil(masked.numel() * self.modulus_bits / 8)
        update.metrics["bytes_up"] = torch.tensor(payload)
        update.delta = torch.zeros_like(update.delta)  # the server never sees the update itself
        return update

    def upload_bytes(self, numel: int, current: int) -> int:
        return math.ceil(numel * self.modulus_bits / 8)  # one ring element per coordinate, packed

    def merge(self, group: dist.ProcessGroup | None = None) -> None:
        # Each process holds the masked sum of the clients it trained. int64 wrap-around in the
        # all_reduce is harmless: R divides 2^64.
        dist.all_reduce(self._sum, group=group)
        self._sum = torch.remainder(self._sum, self.modulus)
        parts: list[Any] = [None] * dist.get_world_size(group)
        dist.all_gather_object(parts, (self.received_clients, self.received_weight), group=group)
        self.received_clients = sorted(k for clients, _ in parts for k in clients)
        self.received_weight = sum(w for _, w in parts)

    def on_aggregate(self, aggregate: Tensor, record: StepRecord) -> Tensor | None:
        round_idx = record.step
        survivors = sorted(self.received_clients)
        t = self.threshold_for(len(self.cohort))
        self._metrics = {
            "secagg/dropped": float(len(self.cohort) - len(survivors)),
            "secagg/aborted": 0.0,
        }
        if len(survivors) < t or self.received_weight <= 0:
            # Too few survivors to reconstruct the masks: the protocol aborts, the model stays put.
            self._metrics["secagg/aborted"] = 1.0
            self.received_clients = []
            record.contributors.clear()
            return None
        total = self.decode(self.unmask(round_idx, self._sum, survivors))
        return (total / self.received_weight).to(aggregate.dtype)

    def step_metrics(self) -> dict[str, float]:
        return dict(self._metrics)
