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
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedtorch.errors import OptionError, check_choice, check_int, check_number, require
from fedtorch.seeding import numpy_rng


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

    def inclusion_probabilities(self) -> np.ndarray:
        return ClientSampler.inclusion_probabilities(self)

    def sample(self, round_idx: int, rng: np.random.Generator) -> np.ndarray:
        p = self.client_sizes / self.client_sizes.sum()
        return np.sort(rng.choice(self.num_clients, size=self.cohort_size, replace=False, p=p))


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
        return np.flatnonzero(rng.random(self.num_clients) < self.q)

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

    def sample(self, round_idx: int, rng: np.random.Generator) -> np.ndarray:
        online = np.flatnonzero(rng.random(self.num_clients) < self.online_probability(round_idx))
        if self.clients_per_round is None or len(online) <= self.clients_per_round:
            return online
        return np.sort(rng.choice(online, size=self.clients_per_round, replace=False))

    def expected_cohort_size(self) -> float:
        """E[min(m, online clients)], averaged over one period of the pattern (exact per round)."""
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
