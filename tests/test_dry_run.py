"""Every pair of options across the main config groups either composes or is refused in one line.

`dry_run=true` builds everything (data, partition, model, strategy, pipeline, backend, simulation,
one forward pass of the model on the data) and trains nothing. The combinations cover every pair
of options of dataset x partition x model x strategy x backend x sampler (a greedy pairwise covering
array), run in this process; each must end in a dry-run summary or a one-line config error, never
in any other exception.
"""

from __future__ import annotations

import itertools
import json
import random

import pytest

import fedtorch.experiment as experiment
from fedtorch.checkpoint import CheckpointError
from fedtorch.errors import OptionError
from fedtorch.experiment import Runtime, run_experiment
from tests.conftest import CONF_DIR

GROUPS = ("dataset", "partition", "model", "strategy", "backend", "sampler")
OPTIONS = {g: sorted(p.stem for p in (CONF_DIR / g).glob("*.yaml")) for g in GROUPS}
#: Datasets whose files or extras this machine (and CI) lacks, or that need a value (leaf's file, a prepared folder):
#: each is checked once for its one-line refusal instead of being walked through every pair.
UNAVAILABLE = {"cifar10", "cifar100", "fashion_mnist", "leaf", "prepared"}
AVAILABLE = {**OPTIONS, "dataset": [d for d in OPTIONS["dataset"] if d not in UNAVAILABLE]}


def pairwise(options: dict[str, list[str]], seed: int = 0) -> list[dict[str, str]]:
    """A small set of combinations in which every pair of options of two groups occurs at least once."""
    groups = list(options)
    uncovered = {(a, x, b, y) for a, b in itertools.combinations(groups, 2) for x in options[a] for y in options[b]}
    rng = random.Random(seed)
    rows = []
    while uncovered:
        # Start from an uncovered pair, then fill the other groups greedily.
        a, x, b, y = min(uncovered)
        row = {a: x, b: y}
        for g in groups:
            if g in row:
                continue
            candidates = options[g][:]
            rng.shuffle(candidates)
            row[g] = max(candidates, key=lambda v: sum((h, row[h], g, v) in uncovered or (g, v, h, row[h]) in uncovered
                                                      for h in row))  # fmt: skip
        rows.append(row)
        for p, q in itertools.combinations(groups, 2):
            uncovered.discard((p, row[p], q, row[q]))
    return rows


COMBINATIONS = pairwise(AVAILABLE)


def test_the_combinations_cover_every_pair():
    assert len(COMBINATIONS) < 400
    for a, b in itertools.combinations(GROUPS, 2):
        seen = {(row[a], row[b]) for row in COMBINATIONS}
        assert seen == set(itertools.product(AVAILABLE[a], AVAILABLE[b])), (a, b)


@pytest.fixture(scope="module")
def cached_datasets():
    """Load each dataset once for the whole walk (the loaders are the slow part, not what is tested)."""
    cache: dict[str, object] = {}
    original = experiment.instantiate

    def instantiate_once(node, *args, **kwargs):
        target = str(node.get("_target_", "")) if hasattr(node, "get") else ""
        if ".data." in target and not args and not kwargs and "partitions" not in target and "auto" not in target:
            key = json.dumps(dict(node), sort_keys=True, default=str)
            if key not in cache:
                try:
                    cache[key] = original(node)
                except Exception as error:  # noqa: BLE001 - replayed below, as the loader raised it
                    cache[key] = error
            if isinstance(cache[key], Exception):
                raise cache[key]
            return cache[key]
        return original(node, *args, **kwargs)

    experiment.instantiate = instantiate_once
    yield
    experiment.instantiate = original


def test_every_pair_of_options_composes_or_is_refused_in_one_line(compose_config, tmp_path, cached_datasets):
    composed, refused = 0, []
    for row in COMBINATIONS:
        overrides = [f"{g}={v}" for g, v in row.items()] + ["dry_run=true", "num_threads=1"]
        cfg = compose_config(*overrides)
        try:
            summary = run_experiment(cfg, Runtime(output_dir=tmp_path / "run", choices=row))
        except (OptionError, CheckpointError) as error:
            message = str(error)
            assert "\n" not in message and message, (row, message)
            refused.append((row, message))
            continue
        except Exception as error:  # noqa: BLE001 - the point: report the combination
            pytest.fail(f"{row}: {type(error).__name__}: {error}")
        assert summary["dry_run"] and summary["num_clients"] >= 1, row
        composed += 1
    assert not (tmp_path / "run").exists()  # a dry run writes nothing
    working = {row["dataset"] for row in COMBINATIONS if not any(row is r for r, _ in refused)}
    assert working == set(AVAILABLE["dataset"])  # every dataset whose files are here composes somewhere
    for dataset in sorted(UNAVAILABLE):
        with pytest.raises((OptionError, CheckpointError)) as error:
            run_experiment(compose_config(f"dataset={dataset}", "dry_run=true"), Runtime(output_dir=tmp_path / "r"))
        assert "\n" not in str(error.value), dataset
    print(f"{composed} of {len(COMBINATIONS)} combinations compose; {len(refused)} refused in one line")


@pytest.mark.parametrize("group", ["strategy", "backend", "sampler", "partition"])
def test_every_option_composes_with_the_defaults(compose_config, tmp_path, group):
    """One factor at a time: each option of these groups, everything else at its default."""
    for option in OPTIONS[group]:
        cfg = compose_config(f"{group}={option}", "dry_run=true")
        if (group, option) == ("sampler", "weighted"):
            # Size-proportional selection with sample-weighted averaging counts size twice: refused,
            # and it composes with a uniform mean.
            with pytest.raises(OptionError, match="counts client size twice"):
                run_experiment(cfg, Runtime(output_dir=tmp_path / "run"))
            cfg = compose_config(f"{group}={option}", "dry_run=true", "strategy.weighted=false")
        if (group, option) == ("strategy", "cyclic"):
            # Cyclic weight transfer trains one client a round: refused with the default sampler, in
            # one line that says what it needs, and composes with that.
            with pytest.raises(OptionError, match="sampler=cyclic sampler.clients_per_round=1"):
                run_experiment(cfg, Runtime(output_dir=tmp_path / "run"))
            cfg = compose_config(f"{group}={option}", "dry_run=true", "sampler=cyclic", "sampler.clients_per_round=1")
        assert run_experiment(cfg, Runtime(output_dir=tmp_path / "run"))["dry_run"], option


def test_a_dry_run_trains_nothing(compose_config, tmp_path):
    summary = run_experiment(compose_config("dry_run=true"), Runtime(output_dir=tmp_path / "run"))
    assert summary["dry_run"] and summary["num_clients"] == 30 and summary["num_parameters"] == 610
    assert not (tmp_path / "run").exists()
