"""One place that decides whether the chosen components can run together.

Every component declares what it needs or does (class attributes, not guesses from which methods
a subclass overrides):

- strategies (`fedtorch.strategies.base.Strategy`): `reads_updates`, `changes_local_training`,
  `keeps_client_state`, `needs_fixed_cohort`, `cohort_size`, `sets_weights`, `local_optimizers`;
- transforms (`fedtorch.pipeline.UpdateTransform`): `sum_only`, `needs_uniform_weights`,
  `needs_mean`;
- aggregators: `needs_all_updates`, `min_updates`;
- samplers: `size_biased`, `expected_cohort_size()`, `fixed_cohort_size()`.

`check_composition` reads the declarations and raises the first conflict as one `OptionError`
(key, value, what is allowed), before any training or file writing. `weighting_for` decides the
aggregation weights the pipeline uses, which some transforms constrain (DP-FedAvg's uniform weights).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fedtorch.aggregators import Aggregator, WeightedMean
from fedtorch.client import ClientUpdate, OptimizerSettings
from fedtorch.errors import OptionError
from fedtorch.pipeline import UpdateTransform, Weighting
from fedtorch.samplers import ClientSampler
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
    for transform in transforms:
        what = _describe(transform, names)
        if transform.sum_only:
            if strategy.reads_updates:
                raise OptionError(
                    what.key,
                    what.value,
                    f"{what.text} reveals only the sum of the updates, and strategy={strategy_name} reads "
                    "individual updates: use a FedAvg/FedOpt-family strategy, or turn it off",
                )
            if aggregator.needs_all_updates:
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


class _Described:
    def __init__(self, key: str, value: Any, text: str) -> None:
        self.key, self.value, self.text = key, value, text


def _describe(transform: UpdateTransform, names: Mapping[str, Any]) -> _Described:
    """The config group a transform comes from, the option chosen, and how to name it in a message."""
    group = transform.group
    option = names.get(group, type(transform).__name__)
    text = {"secagg": "secure aggregation", "privacy": "central DP"}.get(group, f"{group}={option}")
    return _Described(group, option, text)
