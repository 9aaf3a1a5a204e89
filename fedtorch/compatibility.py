"""One place that decides whether the chosen components can run together.

Every component declares what it needs or does (class attributes, not guesses from which methods
a subclass overrides):

- strategies (`fedtorch.strategies.base.Strategy`): `reads_updates`, `changes_local_training`,
  `keeps_client_state`, `needs_fixed_cohort`, `cohort_size`, `sets_weights`, `local_optimizers`;
- transforms (`fedtorch.pipeline.UpdateTransform`): `sum_only`, `needs_uniform_weights`,
  `needs_mean`, `omniscient`, `malicious_fraction`;
- aggregators: `needs_all_updates`, `reads_individual_updates`, `min_updates`, `bucket_size`,
  `tolerates(n)`;
- samplers: `size_biased`, `expected_cohort_size()`, `fixed_cohort_size()`;
- server modes (`fedtorch.servers`): `asynchronous`, `needs_clock`, `supports_central_dp`,
  `concurrency`, `buffer_size` (`check_server`).

`check_composition` reads the declarations and raises the first conflict as one `OptionError`
(key, value, what is allowed), before any training or file writing. `weighting_for` decides the
aggregation weights the pipeline uses, which some transforms constrain (DP-FedAvg's uniform weights).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from fedtorch.aggregators import Aggregator, WeightedMean
from fedtorch.client import ClientUpdate, OptimizerSettings
from fedtorch.clock import VirtualClock
from fedtorch.errors import OptionError
from fedtorch.pipeline import UpdateTransform, Weighting
from fedtorch.samplers import ClientSampler, UniformSampler
from fedtorch.servers import ServerMode
from fedtorch.strategies.base import Strategy


def _uniform(update: ClientUpdate) -> float:
    return 1.0


def weighting_for(strategy: Strategy, transforms: Sequence[UpdateTransform]) -> Weighting:
    """The aggregation weight of an update: the strategy's, or uniform where a transform needs it.

    DP-FedAvg's sensitivity argument needs every update to count the same, so with such a transform
    the pipeline weights uniformly whatever the strategy's `weighted` flag says (the strategy is
    not modified; `check_composition` refuses strategies with their own weights).
    """
    if any(t.needs_uniform_weights for t in transforms):
        return _uniform
    return strategy.client_weight


def uses_sample_weights(strategy: Strategy, transforms: Sequence[UpdateTransform]) -> bool:
    """True when updates are weighted by their sample counts (FedAvg's weighted mean)."""
    return strategy.weighted and not strategy.sets_weights and not any(t.needs_uniform_weights for t in transforms)


def check_composition(
    strategy: Strategy,
    aggregator: Aggregator,
    transforms: Sequence[UpdateTransform],
    sampler: ClientSampler,
    local_optimizer: OptimizerSettings,
    names: Mapping[str, Any] | None = None,
) -> None:
    """Raise `OptionError` for the first pair of components that cannot run together.

    `sampler` must be set up (its cohort size is needed). `names` maps a component's config group
    to the option the user chose (`{"strategy": "scaffold", "secagg": "bonawitz"}`), for messages.
    """
    names = dict(names or {})
    strategy_name = names.get("strategy", strategy.name)
    reducer = type(aggregator).__name__
    sum_only = [t for t in transforms if t.sum_only]
    for transform in transforms:
        what = _describe(transform, names)
        if transform.omniscient and sum_only:
            raise OptionError(
                what.key,
                what.value,
                f"{what.text} crafts its updates from the round's individual benign updates, and "
                f"{_describe(sum_only[0], names).text} reveals only their sum: turn one of them off",
            )
        if transform.sum_only:
            if strategy.reads_updates:
                raise OptionError(
                    what.key,
                    what.value,
                    f"{what.text} reveals only the sum of the updates, and strategy={strategy_name} reads "
                    "individual updates: use a FedAvg/FedOpt-family strategy, or turn it off",
                )
            if aggregator.reads_individual_updates:
                raise OptionError(
                    "strategy.aggregator",
                    reducer,
                    f"{what.text} reveals only the sum of the updates; {reducer} needs every update (use the mean)",
                )
        if transform.needs_mean and type(aggregator) is not WeightedMean:
            raise OptionError(
                "strategy.aggregator",
                reducer,
                f"{what.text} needs the mean aggregator (its sensitivity to one client is C / E[m]); robust "
                "reducers such as median or Krum are not covered",
            )
        if transform.needs_uniform_weights and strategy.sets_weights:
            raise OptionError(
                "strategy", strategy_name, f"{what.text} needs uniform client weights; this strategy sets its own"
            )
        if transform.needs_mean and strategy.reads_updates:
            raise OptionError(
                "strategy",
                strategy_name,
                f"{what.text} covers only the noised aggregate, and this strategy keeps server state from "
                "individual updates (use a FedAvg/FedOpt-family strategy: fedavg, fedavgm, fedadam, fedadagrad, "
                "fedyogi, fedprox)",
            )
    cohort = sampler.expected_cohort_size()
    if aggregator.bucket_size > 1 and aggregator.bucket_size > cohort:
        raise OptionError(
            "strategy.aggregator.bucket_size",
            aggregator.bucket_size,
            f"at most the {cohort:g} clients per round (a bucket of the whole cohort is the plain mean); "
            "Karimireddy et al. use 2",
        )
    _check_tolerance(aggregator, transforms, cohort, names)
    needed = aggregator.min_updates
    if needed > 1 and sampler.expected_cohort_size() < needed:
        f = getattr(aggregator, "f", None)
        assumed = f" with f={f} assumed attackers" if f is not None else ""
        raise OptionError(
            "strategy.aggregator",
            reducer,
            f"needs at least {needed} updates per round{assumed}, but the sampler gives "
            f"{sampler.expected_cohort_size():g} clients per round: raise sampler.clients_per_round or lower "
            "strategy.aggregator.f",
        )
    if strategy.needs_fixed_cohort and sampler.fixed_cohort_size() is None:
        raise OptionError(
            "sampler", names.get("sampler", type(sampler).__name__), f"strategy={strategy_name} needs a fixed cohort"
        )
    if strategy.cohort_size is not None and sampler.fixed_cohort_size() != strategy.cohort_size:
        raise OptionError(
            "sampler",
            names.get("sampler", type(sampler).__name__),
            f"strategy={strategy_name} trains exactly {strategy.cohort_size} client(s) a round, every round "
            f"(e.g. sampler=cyclic sampler.clients_per_round={strategy.cohort_size}, no dropout)",
        )
    if strategy.local_optimizers is not None and local_optimizer.name not in strategy.local_optimizers:
        raise OptionError(
            "trainer.optimizer",
            local_optimizer.name,
            f"strategy={strategy_name} is derived for {' or '.join(strategy.local_optimizers)} local steps",
        )
    if sampler.size_biased and uses_sample_weights(strategy, transforms):
        raise OptionError(
            "sampler",
            names.get("sampler", "weighted"),
            "a size-proportional sampler with sample-weighted averaging counts client size twice (the largest "
            "clients dominate the update); set strategy.weighted=false (Li et al. 2020, Scheme I) or use "
            "sampler=uniform",
        )


def check_server(
    server: ServerMode,
    clock: VirtualClock | None,
    strategy: Strategy,
    aggregator: Aggregator,
    transforms: Sequence[UpdateTransform],
    num_clients: int,
    names: Mapping[str, Any] | None = None,
) -> None:
    """Raise `OptionError` for a server mode (`fedtorch.servers`) that cannot run with the rest.

    Deadlines, over-selection and asynchronous servers need the virtual clock, whose profiles must
    describe the federation. An asynchronous server needs C <= clients and K <= C; it cannot follow
    secure aggregation (whose masks need a cohort fixed before training), nor feed a reducer more
    updates per step than the buffer holds, nor run strategies whose server half keeps state from a
    synchronous round's individual updates. Central DP needs a public E[reports per step]: a
    deadline makes it depend on device speed, and FedAsync's single-update steps are not covered.
    """
    names = dict(names or {})
    mode = names.get("server", server.name)
    if server.needs_clock and clock is None:
        raise OptionError(
            "clock",
            names.get("clock", "none"),
            f"server={mode} runs on the virtual clock: set clock=distributions or trace",
        )
    if clock is not None:
        clock.check_federation(num_clients)
    dp = [t for t in transforms if t.needs_mean]
    if dp and not server.supports_central_dp:
        raise OptionError(
            "privacy",
            names.get("privacy", "central DP"),
            f"server={mode} steps on every single update; DP-FedAvg's noise per step is defined for buffers "
            "(use server=fedbuff)",
        )
    if not server.asynchronous:
        if dp and getattr(server, "deadline", None) is not None:
            raise OptionError(
                "server.deadline",
                server.deadline,
                "central DP divides by a public E[reports per round], and a deadline makes it depend on device "
                "speed: use server.deadline=null (over-selection alone reports exactly K) or privacy=none",
            )
        return
    concurrency, buffer = server.concurrency, server.buffer_size
    if concurrency > num_clients:
        raise OptionError(
            "server.concurrency", concurrency, f"at most the number of clients in the federation ({num_clients})"
        )
    if buffer > concurrency:
        raise OptionError(
            "server.buffer_size",
            buffer,
            f"at most server.concurrency ({concurrency}): the buffer fills from the clients in flight",
        )
    for transform in transforms:
        if transform.sum_only:
            what = _describe(transform, names)
            raise OptionError(
                what.key,
                what.value,
                f"{what.text} masks within a cohort fixed before training, and a server={mode} buffer is known only "
                "as its updates arrive (FedBuff's paper aggregates in a trusted enclave): turn it off",
            )
        if transform.omniscient:
            what = _describe(transform, names)
            raise OptionError(
                what.key,
                what.value,
                f"{what.text} reads every update of a synchronous round at once, and a server={mode} step has no "
                "fixed cohort to read: use a synchronous server (server=sync or deadline)",
            )
    reducer = type(aggregator).__name__
    if aggregator.min_updates > buffer:
        raise OptionError(
            "strategy.aggregator",
            reducer,
            f"needs at least {aggregator.min_updates} updates per server step, but server.buffer_size={buffer}: "
            "raise the buffer or lower strategy.aggregator.f",
        )
    if strategy.reads_updates or strategy.sets_weights or strategy.needs_fixed_cohort:
        raise OptionError(
            "strategy",
            names.get("strategy", strategy.name),
            f"its server half is derived for synchronous rounds (per-round state from individual updates); "
            f"server={mode} takes the FedAvg/FedOpt family (fedavg, fedavgm, fedadam, fedyogi, fedadagrad) and fedprox",
        )


def check_async_sampler(sampler: ClientSampler, server: ServerMode, names: Mapping[str, Any] | None = None) -> None:
    """An asynchronous server picks its own clients: refuse a sampler whose choices it would ignore."""
    if server.asynchronous and (type(sampler) is not UniformSampler or sampler.heterogeneous):
        names = dict(names or {})
        raise OptionError(
            "sampler",
            names.get("sampler", type(sampler).__name__),
            f"server={names.get('server', server.name)} dispatches its own clients (uniformly among the idle ones, "
            "server.concurrency at a time): keep sampler=uniform without dropout or stragglers",
        )


def _check_tolerance(
    aggregator: Aggregator, transforms: Sequence[UpdateTransform], cohort: float, names: Mapping[str, Any]
) -> None:
    """Refuse an attack that puts more Byzantine clients in an average round than the reducer's
    declared tolerance (its breakdown point, or the f it was configured for)."""
    for transform in transforms:
        fraction = transform.malicious_fraction
        if fraction <= 0:
            continue
        n = max(int(math.floor(cohort + 1e-9)), 1)
        expected = math.ceil(fraction * cohort - 1e-9)  # E[attackers in a round], rounded up
        tolerated = aggregator.tolerates(n)
        if tolerated is not None and expected > tolerated:
            what = _describe(transform, names)
            reducer = type(aggregator).__name__
            raise OptionError(
                f"{what.key}.fraction",
                fraction,
                f"{what.text} puts about {expected} attackers in a round of {n} clients, and {reducer} tolerates "
                f"at most {tolerated}: lower attack.fraction or configure the reducer for more "
                "(strategy.aggregator.f, beta or bucket_size)",
            )


class _Described:
    def __init__(self, key: str, value: Any, text: str) -> None:
        self.key, self.value, self.text = key, value, text


def _describe(transform: UpdateTransform, names: Mapping[str, Any]) -> _Described:
    """The config group a transform comes from, the option chosen, and how to name it in a message."""
    group = transform.group
    option = names.get(group, type(transform).__name__)
    text = {"secagg": "secure aggregation", "privacy": "central DP"}.get(group, f"{group}={option}")
    return _Described(group, option, text)
