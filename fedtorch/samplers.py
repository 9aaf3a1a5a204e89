"""Client samplers: which clients take part in a round, and how much of their work they finish.

A sampler is told the clients' sizes once (`setup`) and then answers `sample(round_idx, rng)`
with a sorted array of distinct client ids. The simulation hands it a fresh generator derived
from (seed, "sampler", round), so the choice is a function of the seed and the round alone:
every backend and a resumed run pick the same clients.

`cohort(round_idx, rng)` adds *system heterogeneity* on top of any sampler, drawn from the same
generator after the selection (so switching it on never changes who is selected):

- `dropout`: each selected client fails to report back with this probability (it does no
  training and sends nothing);
- `stragglers`: this fraction of the reporting clients completes only part of its local work,
  a fraction u ~ U(min_work, 1) of its local steps (at least one step), as in FedProx's
  systems-heterogeneity experiments (Li et al. 2020, Section 5.2).

The simulation turns a straggler's work fraction into a `max_steps` budget for
`LocalTrainer.train`. A round may end up with no clients (Poisson sampling, everyone dropped
out): the simulation then skips the server step.

    FullParticipation      every client every round (cross-silo)
    UniformSampler         m clients uniformly without replacement (McMahan et al. 2017)
    SizeWeightedSampler    m clients without replacement, P(k) proportional to n_k
    PoissonSampler         each client independently with probability q (DP accounting)
    CyclicSampler          round-robin over the clients in id order
    AvailabilitySampler    clients online with a probability, optionally diurnal

Scale: a round costs O(cohort), never O(federation). The uniform draw is numpy's
`Generator.choice(K, m, replace=False)`, which is already Floyd's algorithm (a hash set of the m
ids drawn, no permutation of the K ids) whenever K <= 10,000 or m <= K / 50, and a partial shuffle
of K ids otherwise, which is then O(50 m). The other samplers keep the draw they always made for
federations of at most `SMALL_FEDERATION` clients (so every run of that size picks the same clients
as before) and, above, switch to an algorithm with exactly the same distribution whose cost does not
grow with K (different draws): Poisson sampling as a Binomial(K, q) count, then that many distinct
uniform ids; the size-weighted draw from a Walker/Vose alias table (built once, O(K)), rejecting
repeats; availability as a walk over distinct uniform ids with one coin each until the cohort is
full. Their `inclusion_probabilities` and `expected_cohort_size` above the threshold are exact or a
documented approximation that costs O(K) once, never a Monte-Carlo estimate over K-sized draws.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedtorch.errors import OptionError, check_choice, check_int, check_number, require
from fedtorch.seeding import numpy_rng

#: Federations of at most this many clients keep each sampler's original draw (bit for bit); larger
#: ones get the O(cohort) algorithm with the same distribution (see the module docstring).
SMALL_FEDERATION = 10_000


def distinct_uniform(num_clients: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """`count` distinct ids uniformly from [0, num_clients), sorted, in O(count) (numpy's Floyd)."""
    return np.sort(rng.choice(num_clients, size=count, replace=False))


class AliasTable:
    """Walker's alias method (Vose's construction): O(1) draws from a fixed discrete distribution.

    Built once in O(K) from weights w_k >= 0 (not all 0): every slot k keeps probability
    `accept[k]` for itself and sends the rest to `alias[k]`, so a draw is one uniform slot and one
    uniform coin (Vose 1991, "A linear algorithm for generating random numbers with a given
    distribution"). Draws are with replacement, each k with probability w_k / sum(w).
    """

    def __init__(self, weights: np.ndarray) -> None:
        p = np.asarray(weights, dtype=np.float64)
        num = len(p)
        scaled = p * (num / p.sum())
        accept = np.ones(num)
        alias = np.arange(num, dtype=np.int64)
        small = [int(i) for i in np.flatnonzero(scaled < 1.0)]
        large = [int(i) for i in np.flatnonzero(scaled >= 1.0)]
        while small and large:
            s, g = small.pop(), large.pop()
            accept[s], alias[s] = scaled[s], g
            scaled[g] -= 1.0 - scaled[s]
            (small if scaled[g] < 1.0 else large).append(g)
        # What remains has scaled == 1 up to rounding: it keeps its own slot (accept = 1).
        self.accept, self.alias = accept, alias

    def draw(self, size: int, rng: np.random.Generator) -> np.ndarray:
        slots = rng.integers(0, len(self.accept), size=size)
        keep = rng.random(size) < self.accept[slots]
        return np.where(keep, slots, self.alias[slots])


def first_distinct(candidates: np.ndarray, seen: set[int], need: int) -> list[int]:
    """The first `need` ids of `candidates` (in order) that are not in `seen` nor repeated earlier;
    adds them to `seen`."""
    taken: list[int] = []
    for k in candidates.tolist():
        if k not in seen:
            seen.add(k)
            taken.append(k)
            if len(taken) == need:
                break
    return taken


@dataclass(frozen=True)
class Cohort:
    """One round's participants after dropouts, with the share of local work each completes.

    Attributes:
        ids: sorted distinct ids of the clients that train and report back.
        work: fraction of its local steps each of them completes, aligned with `ids` (1.0: all).
        sampled: clients selected before dropouts.
        stragglers_dropped: stragglers removed from `ids` (`straggler_policy="drop"`).
    """

    ids: np.ndarray
    work: np.ndarray
    sampled: int
    stragglers_dropped: int = 0

    @property
    def dropped(self) -> int:
        """Clients that failed to report (dropouts; stragglers dropped by policy are counted apart)."""
        return self.sampled - len(self.ids) - self.stragglers_dropped

    @property
    def stragglers(self) -> int:
        return int(np.count_nonzero(self.work < 1.0)) + self.stragglers_dropped


class ClientSampler:
    """Base class: full participation, plus the system-heterogeneity options every sampler has.

    Args:
        dropout: probability that a selected client drops out (reports nothing), in [0, 1).
        stragglers: fraction of the reporting clients that are stragglers, in [0, 1]; the number
            of stragglers is floor(stragglers * clients), as in FedProx's code.
        min_work: a straggler completes a fraction u ~ U(min_work, 1) of its local steps, (0, 1].
        straggler_policy: "partial": a straggler reports the work it did (FedProx's choice);
            "drop": it reports nothing (the FedAvg baseline of Li et al. 2020, which "simply drops
            devices that fail to complete E epochs"). Who straggles is drawn the same way for both.
    """

    # Class-level defaults, so a subclass that does not call `super().__init__` still works.
    dropout: float = 0.0
    stragglers: float = 0.0
    min_work: float = 0.0
    #: Selection probability grows with a client's data size (`SizeWeightedSampler`): averaging
    #: such a cohort by sample counts again would count size twice (`fedtorch.compatibility`).
    size_biased: bool = False

    straggler_policy: str = "partial"

    def __init__(
        self, dropout: float = 0.0, stragglers: float = 0.0, min_work: float = 0.0, straggler_policy: str = "partial"
    ) -> None:
        self.dropout = check_number("sampler.dropout", dropout, 0.0, 1.0, high_open=True)
        self.stragglers = check_number("sampler.stragglers", stragglers, 0.0, 1.0)
        self.min_work = check_number("sampler.min_work", min_work, 0.0, 1.0)
        self.straggler_policy = check_choice("sampler.straggler_policy", straggler_policy, ("partial", "drop"))

    def setup(self, client_sizes: np.ndarray) -> None:
        self.client_sizes = np.asarray(client_sizes)
        self.num_clients = len(self.client_sizes)

    def sample(self, round_idx: int, rng: np.random.Generator) -> np.ndarray:
        """The selected clients (before dropouts), sorted."""
        return np.arange(self.num_clients)

    @property
    def heterogeneous(self) -> bool:
        """True when dropouts or stragglers are configured."""
        return self.dropout > 0 or self.stragglers > 0

    def cohort(self, round_idx: int, rng: np.random.Generator) -> Cohort:
        """Selection, then dropouts, then stragglers, all from `rng` in that order."""
        ids = np.sort(np.asarray(self.sample(round_idx, rng), dtype=np.int64))
        sampled = len(ids)
        if self.dropout > 0 and sampled:
            ids = ids[rng.random(sampled) >= self.dropout]
        work = np.ones(len(ids))
        num_stragglers = int(math.floor(self.stragglers * len(ids) + 1e-9))
        if num_stragglers:
            slow = rng.choice(len(ids), size=num_stragglers, replace=False)
            work[slow] = rng.uniform(self.min_work, 1.0, size=num_stragglers)
        if self.straggler_policy == "drop" and num_stragglers:
            keep = work >= 1.0
            return Cohort(ids=ids[keep], work=work[keep], sampled=sampled, stragglers_dropped=int((~keep).sum()))
        return Cohort(ids=ids, work=work, sampled=sampled)

    def expected_cohort_size(self) -> float:
        """Expected clients selected per round, before dropouts (DP's normalization needs it)."""
        return float(self.num_clients)

    def report_probability(self) -> float:
        """P(a selected client reports back): 1 - dropout, and, when stragglers are dropped, about
        1 - stragglers more (floor(stragglers * m) of the m reporting clients are dropped)."""
        kept = 1.0 - self.stragglers if self.straggler_policy == "drop" else 1.0
        return (1.0 - self.dropout) * kept

    def fixed_cohort_size(self) -> int | None:
        """The number of reporting clients when it is the same every round, else None."""
        return None if self.dropout > 0 else self.num_clients

    def inclusion_probabilities(self) -> np.ndarray:
        """P(client k is selected in a round), before dropouts, for every client k.

        Exact where the sampler knows it; the base class estimates it from the sampler's own draws
        on a fixed stream of its own (so it never depends on the run's seed), which suits samplers
        whose inclusion probabilities have no closed form (size-weighted without replacement).
        """
        draws = int(min(400, max(20, 2e7 // max(self.num_clients, 1))))
        counts = np.zeros(self.num_clients)
        for r in range(1, draws + 1):
            counts[np.asarray(self.sample(r, np.random.default_rng([0x1C1, r])), dtype=np.int64)] += 1
        return counts / draws

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class FullParticipation(ClientSampler):
    """Every client every round (cross-silo federations such as hospitals)."""

    def inclusion_probabilities(self) -> np.ndarray:
        return np.ones(self.num_clients)


#: `clients_per_round: auto`: this many clients, or every client of a smaller federation.
AUTO_COHORT = 10


def cohort_size(num_clients: int, clients_per_round: int | str | None, fraction: float | None) -> int:
    """Clients per round from a fixed count or McMahan et al.'s fraction C: max(floor(C*K), 1);
    `"auto"` is min(10, K), so that a small cross-silo federation (4 hospitals) runs as chosen."""
    if fraction is not None:
        # round() first so that 0.29 * 100 = 28.999999999999996 counts as 29
        return max(int(np.floor(round(fraction * num_clients, 9))), 1)
    if clients_per_round == "auto":
        return min(AUTO_COHORT, num_clients)
    if clients_per_round is None:
        raise OptionError("sampler.clients_per_round", None, "a number of clients (or set sampler.fraction)")
    return int(clients_per_round)


class _FixedSizeSampler(ClientSampler):
    """Shared set-up of the samplers that pick a cohort of m clients (count or fraction C)."""

    def __init__(
        self, clients_per_round: int | str | None = 10, fraction: float | None = None, **heterogeneity: Any
    ) -> None:
        super().__init__(**heterogeneity)
        check_number("sampler.fraction", fraction, 0.0, 1.0, low_open=True, none=True)
        if fraction is None and clients_per_round != "auto":
            check_int("sampler.clients_per_round", clients_per_round, 1, extra=", auto, or set sampler.fraction")
        self.clients_per_round = clients_per_round
        self.fraction = fraction

    def setup(self, client_sizes: np.ndarray) -> None:
        super().setup(client_sizes)
        self.cohort_size = cohort_size(self.num_clients, self.clients_per_round, self.fraction)
        if not 1 <= self.cohort_size <= self.num_clients:
            raise OptionError(
                "sampler.clients_per_round",
                self.cohort_size,
                f"at most the number of clients in the federation ({self.num_clients})",
            )

    def expected_cohort_size(self) -> float:
        return float(self.cohort_size)

    def fixed_cohort_size(self) -> int | None:
        return None if self.dropout > 0 else self.cohort_size

    def inclusion_probabilities(self) -> np.ndarray:
        return np.full(self.num_clients, self.cohort_size / self.num_clients)


class UniformSampler(_FixedSizeSampler):
    """A fixed-size cohort drawn uniformly without replacement (McMahan et al. 2017).

    Args:
        clients_per_round: cohort size m; ignored when `fraction` is set.
        fraction: McMahan's C: the cohort is max(floor(C * K), 1) of the K clients.
        **heterogeneity: `dropout`, `stragglers`, `min_work` (see `ClientSampler`).
    """

    def sample(self, round_idx: int, rng: np.random.Generator) -> np.ndarray:
        return np.sort(rng.choice(self.num_clients, size=self.cohort_size, replace=False))


class SizeWeightedSampler(_FixedSizeSampler):
    """m distinct clients, each draw with probability proportional to the client's data size n_k.

    Successive sampling without replacement (numpy's `choice(p=..., replace=False)`), so large
    clients take part more often. Li et al. 2020 ("On the Convergence of FedAvg on Non-IID
    Data", Scheme I) sample *with* replacement proportional to n_k and average uniformly, which is
    unbiased; without replacement the inclusion probabilities are only roughly proportional to
    n_k, so pair this sampler with `strategy.weighted=false` knowing it approximates Scheme I.

    Above `SMALL_FEDERATION` clients the same successive sampling is drawn in O(cohort): ids with
    replacement from an alias table of the sizes, keeping first occurrences (rejecting a repeat is
    exactly drawing from the remaining clients in proportion to size); when the sizes are so
    concentrated that repeats dominate, the draw continues with numpy's exact method over the
    remaining clients, which is the same distribution.
    """

    size_biased = True

    def setup(self, client_sizes: np.ndarray) -> None:
        super().setup(client_sizes)
        nonempty = int(np.count_nonzero(self.client_sizes))
        if self.cohort_size > nonempty:
            raise OptionError(
                "sampler.clients_per_round",
                self.cohort_size,
                f"at most the {nonempty} clients that have data (a size-weighted draw never picks an empty client)",
            )
        self._alias = AliasTable(self.client_sizes) if self.num_clients > SMALL_FEDERATION else None

    def inclusion_probabilities(self) -> np.ndarray:
        """A Monte-Carlo estimate of the sampler's own draws up to `SMALL_FEDERATION` clients;
        above, Rosen's approximation for successive sampling (Rosen 1972, "Asymptotic theory for
        successive sampling with varying probabilities without replacement"): with p_k = n_k / n,
        pi_k = 1 - exp(-t p_k), t solving sum_k pi_k = m (bisection; O(K) per step). Successive
        sampling is order sampling with exponential arrival times E_k / p_k, so pi_k is the
        chance that k arrives before the m-th arrival, 1 - exp(-t p_k) at that time t."""
        if self.num_clients <= SMALL_FEDERATION:
            return ClientSampler.inclusion_probabilities(self)
        p = self.client_sizes / self.client_sizes.sum()
        low, high = 0.0, 1.0
        while (-np.expm1(-high * p)).sum() < self.cohort_size:
            high *= 2.0
        for _ in range(100):
            mid = 0.5 * (low + high)
            low, high = (mid, high) if (-np.expm1(-mid * p)).sum() < self.cohort_size else (low, mid)
        return -np.expm1(-0.5 * (low + high) * p)

    def sample(self, round_idx: int, rng: np.random.Generator) -> np.ndarray:
        if self._alias is None:
            p = self.client_sizes / self.client_sizes.sum()
            return np.sort(rng.choice(self.num_clients, size=self.cohort_size, replace=False, p=p))
        seen: set[int] = set()
        chosen: list[int] = []
        for _ in range(8):  # batches of draws with replacement; each keeps its first new ids
            chosen += first_distinct(
                self._alias.draw(2 * (self.cohort_size - len(chosen)), rng), seen, self.cohort_size - len(chosen)
            )
            if len(chosen) == self.cohort_size:
                return np.sort(np.asarray(chosen, dtype=np.int64))
        # Sizes so concentrated that repeats dominate: the exact successive draw over the rest.
        rest = self.client_sizes / self.client_sizes.sum()
        rest[chosen] = 0.0
        more = rng.choice(self.num_clients, size=self.cohort_size - len(chosen), replace=False, p=rest / rest.sum())
        return np.sort(np.concatenate([np.asarray(chosen, dtype=np.int64), more]))


class PoissonSampler(ClientSampler):
    """Each client takes part independently with probability q (Poisson sampling).

    The cohort size is Binomial(K, q) and may be zero. Differential-privacy accounting for
    DP-FedAvg (McMahan et al. 2018, "Learning Differentially Private Recurrent Language Models")
    assumes exactly this sampling with rate q; the expected cohort size is q * K.
    """

    def __init__(self, q: float = 0.1, **heterogeneity: Any) -> None:
        super().__init__(**heterogeneity)
        self.q = check_number("sampler.q", q, 0.0, 1.0, low_open=True)

    def inclusion_probabilities(self) -> np.ndarray:
        return np.full(self.num_clients, self.q)

    def sample(self, round_idx: int, rng: np.random.Generator) -> np.ndarray:
        if self.num_clients <= SMALL_FEDERATION:
            return np.flatnonzero(rng.random(self.num_clients) < self.q)
        # The same distribution in O(cohort): independent inclusions with probability q give a
        # Binomial(K, q) cohort size, and given its size the cohort is a uniform subset.
        return distinct_uniform(self.num_clients, int(rng.binomial(self.num_clients, self.q)), rng)

    def expected_cohort_size(self) -> float:
        return self.q * self.num_clients

    def fixed_cohort_size(self) -> int | None:
        return self.num_clients if self.q == 1.0 and self.dropout == 0 else None


class CyclicSampler(_FixedSizeSampler):
    """Round-robin: round r takes the m clients at positions (r-1)*m, ..., r*m - 1 of the order.

    Every client takes part equally often and at predictable times: the deterministic
    counterpart of uniform sampling (cyclic participation, as in Cho et al. 2023, "On the
    Convergence of Federated Averaging with Cyclic Client Participation"). It draws nothing
    from `rng` for the selection.

    The order is the clients' ids, 0, 1, ..., K-1, repeated; with `shuffle` every pass over the
    K clients (a cycle) takes them in a new random order, as FLamby's Cyclic strategy does with
    `deterministic_cycle=False` (one client a round: `clients_per_round=1`). Cycle c's order is
    drawn from (`seed`, "cyclic_order", c) alone, so any round's clients follow from the seed and
    the round.

    Args:
        shuffle: a fresh random order for every cycle (False: id order).
        seed: the root of the cycles' orders (the run's seed, `${seed}` in the config).
    """

    def __init__(self, *args: Any, shuffle: bool = False, seed: int = 0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        require("sampler.shuffle", shuffle, isinstance(shuffle, bool), "true or false")
        self.shuffle = shuffle
        self.seed = check_int("sampler.seed", seed)

    def setup(self, client_sizes: np.ndarray) -> None:
        super().setup(client_sizes)
        if self.shuffle and self.num_clients % self.cohort_size:
            # A round that straddled two cycles could draw one client twice (and be smaller).
            raise OptionError(
                "sampler.clients_per_round",
                self.cohort_size,
                f"a divisor of the number of clients ({self.num_clients}) with sampler.shuffle=true, so that "
                "every round's clients come from one cycle",
            )

    def sample(self, round_idx: int, rng: np.random.Generator) -> np.ndarray:
        positions = (round_idx - 1) * self.cohort_size + np.arange(self.cohort_size)
        if not self.shuffle:
            return np.unique(positions % self.num_clients)
        cycles = positions // self.num_clients
        orders = {c: numpy_rng(self.seed, "cyclic_order", c).permutation(self.num_clients) for c in set(cycles)}
        return np.unique([orders[c][q % self.num_clients] for c, q in zip(cycles, positions)])


class AvailabilitySampler(ClientSampler):
    """Only online clients can be picked; each client is online with a probability each round.

    Client k is online in round r with probability
        p_k(r) = clip(availability + amplitude * sin(2 pi (r / period + k / K)), 0, 1),
    i.e. a constant rate when `amplitude` is 0, and otherwise a diurnal pattern (Bonawitz et al.
    2019, "Towards Federated Learning at Scale", report device availability that follows the
    local time of day) with the clients' phases spread evenly as if over time zones. Among the
    online clients, up to `clients_per_round` are picked uniformly (all online clients when
    None), so a round can be smaller than asked for, or empty.

    Args:
        availability: mean online probability, in [0, 1].
        amplitude: swing of the diurnal pattern, in [0, 1]; 0 for a constant rate.
        period: rounds per simulated day (>= 1).
        clients_per_round: cap on the cohort; None takes every online client.
    """

    def __init__(
        self,
        availability: float = 0.5,
        amplitude: float = 0.0,
        period: int = 24,
        clients_per_round: int | None = 10,
        **heterogeneity: Any,
    ) -> None:
        super().__init__(**heterogeneity)
        self.availability = check_number("sampler.availability", availability, 0.0, 1.0)
        self.amplitude = check_number("sampler.amplitude", amplitude, 0.0, 1.0)
        self.period = check_int("sampler.period", period, 1)
        self.clients_per_round = check_int("sampler.clients_per_round", clients_per_round, 1, none=True)

    def online_probability(self, round_idx: int) -> np.ndarray:
        """p_k(round_idx) for every client k."""
        phase = round_idx / self.period + np.arange(self.num_clients) / self.num_clients
        return np.clip(self.availability + self.amplitude * np.sin(2 * np.pi * phase), 0.0, 1.0)

    def online_probability_of(self, round_idx: int, ids: np.ndarray) -> np.ndarray:
        """p_k(round_idx) for the clients `ids` only."""
        phase = round_idx / self.period + ids / self.num_clients
        return np.clip(self.availability + self.amplitude * np.sin(2 * np.pi * phase), 0.0, 1.0)

    def sample(self, round_idx: int, rng: np.random.Generator) -> np.ndarray:
        if self.num_clients <= SMALL_FEDERATION or self.clients_per_round is None:
            online = np.flatnonzero(rng.random(self.num_clients) < self.online_probability(round_idx))
            if self.clients_per_round is None or len(online) <= self.clients_per_round:
                return online
            return np.sort(rng.choice(online, size=self.clients_per_round, replace=False))
        return self._walk(round_idx, rng)

    def _walk(self, round_idx: int, rng: np.random.Generator) -> np.ndarray:
        """The same distribution as "m uniformly among the online clients (all when fewer)", in
        O(m / mean availability): visit the clients in a uniformly random order (distinct uniform
        draws), toss each one's online coin, and stop at the m-th online client. Given who is
        online, the first m online clients of a random order are a uniform m-subset of them. A walk
        that visits a sixteenth of the federation (availability near 0) finishes over the unvisited
        clients in a random permutation: still exact, O(K) (vectorized) only then."""
        need, total = self.clients_per_round, self.num_clients
        seen: set[int] = set()
        chosen: list[int] = []
        while len(seen) < total // 16:
            batch = max(4 * need, 64)
            visited = first_distinct(rng.integers(0, total, size=batch), seen, batch)
            ids = np.asarray(visited, dtype=np.int64)
            online = ids[rng.random(len(ids)) < self.online_probability_of(round_idx, ids)]
            chosen += online[: need - len(chosen)].tolist()
            if len(chosen) == need:
                return np.sort(np.asarray(chosen, dtype=np.int64))
        unvisited = np.ones(total, dtype=bool)
        unvisited[np.fromiter(seen, dtype=np.int64, count=len(seen))] = False
        rest = rng.permutation(np.flatnonzero(unvisited))
        online = rest[rng.random(len(rest)) < self.online_probability_of(round_idx, rest)]
        return np.sort(np.concatenate([np.asarray(chosen, dtype=np.int64), online[: need - len(chosen)]]))

    def _expected_min_at(self, round_idx: int) -> float:
        """E[min(m, online clients in round r)] (cached: set-up asks for each round twice)."""
        cache = self.__dict__.setdefault("_expected_min_cache", {})
        if round_idx not in cache:
            cache[round_idx] = _expected_min(self.online_probability(round_idx), self.clients_per_round)
        return cache[round_idx]

    def inclusion_probabilities(self) -> np.ndarray:
        """Up to `SMALL_FEDERATION` clients a Monte-Carlo estimate (`ClientSampler`); above, the
        approximation mean over a period of p_k(r) * E[min(m, X_r)] / E[X_r], X_r the online count
        (a client online in round r is selected with probability about E[min(m, X)] / E[X])."""
        if self.num_clients <= SMALL_FEDERATION:
            return ClientSampler.inclusion_probabilities(self)
        total = np.zeros(self.num_clients)
        for r in range(1, self.period + 1):
            p = self.online_probability(r)
            online = p.sum()
            if online > 0:
                cap = online if self.clients_per_round is None else self._expected_min_at(r)
                total += p * (cap / online)
        return total / self.period

    def expected_cohort_size(self) -> float:
        """E[min(m, online clients)], averaged over one period of the pattern (exact per round)."""
        if self.num_clients > SMALL_FEDERATION:
            sizes = [
                self._expected_min_at(r)
                if self.clients_per_round is not None
                else float(self.online_probability(r).sum())
                for r in range(1, self.period + 1)
            ]
            return float(np.mean(sizes))
        sizes = []
        for r in range(1, self.period + 1):
            p = self.online_probability(r)
            # Poisson-binomial distribution of the number of online clients, by convolution.
            dist = np.zeros(self.num_clients + 1)
            dist[0] = 1.0
            for pk in p:
                dist[1:] = dist[1:] * (1 - pk) + dist[:-1] * pk
                dist[0] *= 1 - pk
            counts = np.arange(self.num_clients + 1)
            cap = self.num_clients if self.clients_per_round is None else self.clients_per_round
            sizes.append(float(np.minimum(counts, cap) @ dist))
        return float(np.mean(sizes))

    def fixed_cohort_size(self) -> int | None:
        return None  # who is online, and so how many clients a round gets, is random


def _expected_min(p: np.ndarray, cap: int, block: int = 1024) -> float:
    """E[min(cap, X)] for X ~ Poisson-binomial(p), exactly, in O(K cap) vectorized work.

    E[min(cap, X)] = cap - sum_{j < cap} (cap - j) P(X = j), and P(X = j) for j < cap are the first
    coefficients of prod_k (1 - p_k + p_k z): blocks of `block` clients are expanded side by side
    (one vectorized step per position in a block), then multiplied pairwise, every product cut at
    degree cap - 1 (the higher coefficients are never needed).
    """
    p = np.asarray(p, dtype=np.float64)
    mean, var = float(p.sum()), float((p * (1.0 - p)).sum())
    gap = mean - cap
    # Bernstein: P(X < cap) <= exp(-gap^2 / (2 var + 2 gap / 3)); below 1e-20 the answer is cap to
    # double precision (the terms it would subtract sum to less than cap * 1e-20).
    if gap > 0 and gap * gap / (2.0 * var + 2.0 * gap / 3.0) > 46.0:
        return float(cap)
    num_blocks = -(-len(p) // block)
    padded = np.zeros(num_blocks * block)
    padded[: len(p)] = p  # p = 0 contributes the factor 1
    padded = padded.reshape(num_blocks, block)
    coef = np.zeros((num_blocks, cap))
    coef[:, 0] = 1.0
    for i in range(block):
        q = padded[:, i : i + 1]
        coef[:, 1:] = coef[:, 1:] * (1.0 - q) + coef[:, :-1] * q
        coef[:, :1] *= 1.0 - q
    while len(coef) > 1:
        if len(coef) % 2:
            coef = np.concatenate([coef, np.eye(1, cap)])  # the polynomial 1
        a, b = coef[0::2], coef[1::2]
        product = np.zeros_like(a)
        for i in range(cap):
            product[:, i:] += a[:, i : i + 1] * b[:, : cap - i]
        coef = product
    weights = cap - np.arange(cap)
    return float(cap - weights @ coef[0])
