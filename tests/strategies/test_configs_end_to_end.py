"""Every conf/strategy/*.yaml and conf/sampler/*.yaml runs from the CLI (a new file is picked up by
the glob), every conf/strategy/aggregator/*.yaml composes onto any strategy, and bad options fail
validation as one line."""

from __future__ import annotations

import json

import pytest
import yaml
from hydra.utils import get_class, instantiate

from fedtorch.validation import ConfigError, validate
from tests.conftest import CONF_DIR, run_cli

#: Strategies that need other components than the defaults (the one-line refusal and the run with
#: what they need are in tests/test_dry_run.py and their own tests): left out of the shared multirun.
NEEDS_OTHER_DEFAULTS = {"cyclic"}
STRATEGIES = sorted(p.stem for p in (CONF_DIR / "strategy").glob("*.yaml") if p.stem not in NEEDS_OTHER_DEFAULTS)
SAMPLERS = sorted(p.stem for p in (CONF_DIR / "sampler").glob("*.yaml"))
AGGREGATORS = sorted(p.stem for p in (CONF_DIR / "strategy" / "aggregator").glob("*.yaml"))


@pytest.mark.slow
@pytest.mark.parametrize(
    "group, options", [("strategy", STRATEGIES), ("sampler", SAMPLERS)], ids=["strategy", "sampler"]
)
def test_every_config_runs_two_rounds_from_the_cli(tmp_path, group, options):
    # One multirun: one interpreter start for all the options of the group. The samplers run with a
    # uniform mean: sampler=weighted with FedAvg's sample weights counts size twice and is refused.
    proc = run_cli(
        "-m",
        f"{group}={','.join(options)}",
        *(["strategy.weighted=false"] if group == "sampler" else []),
        "rounds=2",
        # Small work per run: the point is that each config builds and runs, not how well it learns.
        "+dataset.max_samples_per_device=60",
        "trainer.max_steps=3",
        "num_threads=1",  # tiny models: one thread, no OpenMP contention on a shared machine
        "logging.progress=false",
        "logging.tensorboard=false",
        f"hydra.sweep.dir={tmp_path}",
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for job, option in enumerate(options):
        run_dir = tmp_path / str(job)
        overrides = yaml.safe_load((run_dir / ".hydra" / "overrides.yaml").read_text())
        assert f"{group}={option}" in overrides
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["rounds"] == 2 and not summary["diverged"], option
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        assert [r["round"] for r in rows] == [1, 2]
        metrics = summary["metrics"]
        assert 0.0 <= metrics["eval/accuracy"] <= 1.0
        if option in ("ditto", "fedper"):
            assert "eval/personal/accuracy_worst10" in metrics
        if option == "scaffold":
            assert metrics["server/control_variate_norm"] > 0
        if option == "stragglers":
            assert "round/stragglers" in rows[0] and "round/dropped" in rows[0]


@pytest.mark.parametrize("aggregator", AGGREGATORS)
def test_every_aggregator_composes_onto_any_strategy(compose_config, aggregator):
    cfg = compose_config("strategy=fedprox", f"+strategy/aggregator={aggregator}")
    validate(cfg)
    strategy = instantiate(cfg.strategy)
    assert type(strategy.aggregator) is get_class(cfg.strategy.aggregator._target_)
    assert strategy.mu == cfg.strategy.mu


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["sampler.dropout=1.0"], "sampler.dropout"),
        (["sampler.stragglers=1.5"], "sampler.stragglers"),
        (["sampler=poisson", "sampler.q=0"], "sampler.q"),
        (["sampler=availability", "sampler.period=0"], "sampler.period"),
        (["strategy=fedavgm", "strategy.momentum=1.0"], "strategy.momentum"),
        (["strategy=fedadam", "strategy.tau=0"], "strategy.tau"),
        (["strategy=feddyn", "strategy.alpha=-1"], "strategy.alpha"),
        (["strategy=qffl", "strategy.q=-0.5"], "strategy.q"),
        (["strategy=ditto", "strategy.lam=-1"], "strategy.lam"),
        (["strategy=multikrum", "strategy.aggregator.m=0"], "strategy.aggregator.m"),
    ],
)
def test_bad_options_fail_validation(compose_config, overrides, key):
    from fedtorch.experiment import _build

    cfg = compose_config(*overrides)
    validate(cfg)  # the run-level checks pass; the component's own constructor refuses the value
    group = key.split(".")[0]
    with pytest.raises(ConfigError) as error:
        _build(cfg[group], group)
    assert error.value.key == key
