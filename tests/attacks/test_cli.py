"""From the command line: the new attacks and defenses compose from their config groups, FLTrust
gets its root dataset from the experiment, and every refusal is one line before anything trains."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedtorch.errors import OptionError
from fedtorch.experiment import run_experiment
from tests.conftest import run_cli

QUICK = ["logging.progress=false", "logging.tensorboard=false", "num_threads=1", "checkpoint_every=0"]


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["strategy=bucketing", "strategy.aggregator.bucket_size=11"], r"bucket_size=11 is invalid: at most the 10"),
        (
            ["strategy=krum", "attack=alie"],
            r"attack\.fraction=0\.2 is invalid: (?i:attack=alie) puts about 2 attackers",
        ),
        (["strategy=fltrust", "strategy.aggregator.root_size=null"], r"root_size=None is invalid: .*root dataset"),
        (["strategy=fltrust", "strategy.aggregator.root_size=5000"], r"root_size=5000 is invalid: at most the 4308"),
        (["attack=min_max", "secagg=bonawitz"], r"attack='MinMax' is invalid: .* reveals only their sum"),
    ],
    ids=["bucket_size", "tolerance", "no_root_dataset", "root_too_large", "omniscient_secagg"],
)
def test_bad_combinations_are_refused_before_any_file(compose_config, tmp_path: Path, overrides, message):
    # In-process the components are named by class (the CLI names them by option: attack=min_max).
    cfg = compose_config(*overrides, *QUICK)
    with pytest.raises(OptionError, match=message):
        run_experiment(cfg, tmp_path / "run", overrides=overrides)
    assert not any((tmp_path / "run" / name).exists() for name in ("metrics.jsonl", "summary.json", "partition.json"))


def test_fltrust_and_an_omniscient_attack_run_from_the_cli_and_log_their_metrics(tmp_path: Path):
    proc = run_cli(
        "-m",
        "strategy=fltrust,bucketing",
        "attack=alie",
        "rounds=2",
        f"hydra.sweep.dir={tmp_path}",
        *QUICK,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    import json

    for job, keys in ((0, ("defense/trust_mean", "defense/server_update_norm")), (1, ())):
        rows = [json.loads(line) for line in (tmp_path / str(job) / "metrics.jsonl").read_text().splitlines()]
        assert [r["round"] for r in rows] == [1, 2]
        for row in rows:
            assert row["attack/malicious_clients"] >= 0 and all(key in row for key in keys)
            if row["attack/malicious_clients"] > 0:
                assert row["attack/z"] > 0  # ALIE's z_max for the round's n and m
    refused = run_cli("attack=ipm", "secagg=bonawitz", f"hydra.run.dir={tmp_path / 'refused'}", *QUICK)
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1
    assert "reveals only their sum" in refused.stderr and not (tmp_path / "refused").exists()
