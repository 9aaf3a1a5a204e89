"""The privacy, security and robustness groups from the command line: any combination is one
command, the logs carry epsilon and bytes, the budget stops the run, bad combinations fail fast."""

from __future__ import annotations

import json

import dp_accounting
import numpy as np
import pytest
import torch
from dp_accounting.rdp import RdpAccountant

from fedtorch.attacks import choose_attackers
from fedtorch.samplers import PoissonSampler
from fedtorch.seeding import numpy_rng
from tests.conftest import run_cli
from tests.privacy.helpers import metric

QUICK = ("logging.progress=false", "checkpoint_every=0", "num_threads=1")


def _epsilon(q: float, z: float, rounds: int, delta: float) -> float:
    acc = RdpAccountant()
    acc.compose(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z)), rounds)
    return acc.get_epsilon(delta)


def test_central_dp_with_secagg_compression_and_attack_stops_at_the_budget(tmp_path):
    delta = 30**-1.1  # the default for the 30 synthetic devices
    target = (_epsilon(0.5, 1.0, 3, delta) + _epsilon(0.5, 1.0, 4, delta)) / 2  # room for 3 rounds
    run_dir = tmp_path / "run"
    proc = run_cli(
        "privacy=central_fixed", "sampler=poisson", "sampler.q=0.5", f"privacy.target_epsilon={target}",
        "secagg=bonawitz", "secagg.dropout=0.2", "compression=topk", "attack=sign_flip", "rounds=6",
        f"hydra.run.dir={run_dir}", *QUICK,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2, 3]
    # A second computation of who took part, who attacked and who dropped out, from the same streams.
    sampler = PoissonSampler(q=0.5)
    sampler.setup(np.ones(30))
    attackers = set(choose_attackers(30, 0.2, seed=0).tolist())
    for r in rows:
        assert metric(r, "privacy/epsilon") == _epsilon(0.5, 1.0, r["round"], delta)
        assert metric(r, "privacy/delta") == delta
        assert metric(r, "comm/bytes_up") > 0 and metric(r, "comm/bytes_down") == 610 * 4 * r["round/clients"]
        cohort = sampler.cohort(r["round"], numpy_rng(0, "sampler", r["round"])).ids.tolist()
        dropped = [k for k in cohort if numpy_rng(0, "secagg_dropout", r["round"], k).random() < 0.2]
        assert r["round/clients"] == len(cohort)
        assert metric(r, "attack/malicious_clients") == len(attackers & set(cohort))
        assert metric(r, "secagg/dropped") == len(dropped)
        assert metric(r, "secagg/aborted") == float(len(cohort) - len(dropped) < len(cohort) // 2 + 1)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["stop_reason"] == "privacy_budget" and summary["rounds"] == 3
    assert summary["privacy"] == {
        "mode": "central", "epsilon": metric(rows[-1], "privacy/epsilon"), "delta": delta, "target_epsilon": target,
    }  # fmt: skip
    assert metric(summary["metrics"], "comm/bytes_up_total") == sum(metric(r, "comm/bytes_up") for r in rows)


def test_local_dpsgd_with_qsgd_and_a_backdoor(tmp_path, compose_config):
    run_dir = tmp_path / "run"
    proc = run_cli(
        "privacy=local_dpsgd", "compression=qsgd", "attack=backdoor", "rounds=2", "sampler.clients_per_round=4",
        f"hydra.run.dir={run_dir}", *QUICK,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    last = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert metric(last, "privacy/epsilon") > 0 and metric(last, "privacy/delta") == 1e-5
    # The success rate, recomputed from model.pt: the share of triggered test samples of other classes
    # (the synthetic data's flat features get the trigger on their last features) predicted as class 0.
    from fedtorch.attacks import stamp_trigger
    from fedtorch.experiment import build_federation
    from fedtorch.models import LogisticRegression

    data, _ = build_federation(compose_config())
    model = LogisticRegression(data.input_shape, data.num_classes)
    model.load_state_dict(torch.load(run_dir / "model.pt", weights_only=True))
    others = data.test_x[data.test_y != 0]
    triggered = stamp_trigger(others, float(data.train_x.max()), 4)
    with torch.no_grad():
        expected = float((model(triggered).argmax(-1) == 0).double().mean())
    assert metric(last, "attack/backdoor_success") == pytest.approx(expected, abs=1e-12)
    # 610 parameters: 4-bit codes packed + 2 float32 bucket norms, against 4 bytes per parameter.
    assert metric(last, "comm/up_ratio") == (305 + 2 * 4) / (610 * 4)
    assert json.loads((run_dir / "summary.json").read_text())["privacy"]["mode"] == "local"


def test_unaccountable_sampler_and_secagg_with_median_fail_before_training(tmp_path):
    proc = run_cli("privacy=central_fixed", "sampler=availability", f"hydra.run.dir={tmp_path / 'a'}", *QUICK)
    assert proc.returncode == 2
    assert "sampler" in proc.stderr and "sampler=poisson" in proc.stderr
    proc = run_cli("secagg=bonawitz", "strategy=median", f"hydra.run.dir={tmp_path / 'b'}", *QUICK)
    assert proc.returncode == 2 and "only the sum" in proc.stderr
    assert not (tmp_path / "b" / "metrics.jsonl").exists()


def test_a_spent_budget_stays_spent_on_resume_extension_and_rerun(tmp_path):
    """The issue's command stops after round 3 (epsilon 1.831 < 2.0 < 2.123 after round 4). Running it
    again in the same folder, extending it, or resuming it from another folder never trains round 4."""
    run_dir = tmp_path / "run"
    command = ("privacy=central_fixed", "sampler=poisson", "privacy.target_epsilon=2.0", "rounds=10",
               "num_threads=1", "logging.progress=false", "checkpoint_every=2")  # fmt: skip
    proc = run_cli(*command, f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["stop_reason"] == "privacy_budget" and summary["rounds"] == 3
    epsilon = summary["privacy"]["epsilon"]
    assert epsilon == pytest.approx(1.831, abs=1e-3) and epsilon < 2.0

    def rounds_trained() -> list[int]:
        return [json.loads(line)["round"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]

    # The same command again; with more rounds; from another invocation's folder.
    for extra in ((f"hydra.run.dir={run_dir}",), (f"hydra.run.dir={run_dir}", "rounds=20"),
                  (f"resume={run_dir}", f"hydra.run.dir={tmp_path / 'other'}", "rounds=30")):  # fmt: skip
        proc = run_cli(*command, *extra)
        assert proc.returncode == 0, proc.stderr
        assert rounds_trained() == [1, 2, 3], extra
        assert json.loads((run_dir / "summary.json").read_text())["privacy"]["epsilon"] == epsilon
    # Even if summary.json is lost (a kill after the last checkpoint), the checkpoint holds the stop.
    (run_dir / "summary.json").unlink()
    proc = run_cli(*command, f"hydra.run.dir={run_dir}", "rounds=20")
    assert proc.returncode == 0, proc.stderr
    assert rounds_trained() == [1, 2, 3]


def test_adaptive_clipping_runs_with_its_defaults(tmp_path):
    # README's example: the default clipped_count_stddev (E[m] / 20 = 0.5 here) used to be refused.
    proc = run_cli("privacy=central_adaptive", "sampler=poisson", "secagg=bonawitz", "secagg.dropout=0.1",
                   "rounds=2", f"hydra.run.dir={tmp_path / 'run'}", *QUICK)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    last = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert "privacy/unclipped_fraction" in last and last["privacy/clip_norm"] != 0.1


def test_a_finished_run_without_checkpoints_is_left_alone(tmp_path):
    run_dir = tmp_path / "run"
    command = (
        "privacy=central_fixed",
        "sampler=poisson",
        "privacy.target_epsilon=2.0",
        "rounds=10",
        f"hydra.run.dir={run_dir}",
        *QUICK,
    )  # fmt: skip (QUICK has checkpoint_every=0)
    assert run_cli(*command).returncode == 0
    first = (run_dir / "metrics.jsonl").read_text()
    proc = run_cli(*command, "rounds=20")
    assert proc.returncode == 0 and "nothing to do" in proc.stderr + proc.stdout
    assert (run_dir / "metrics.jsonl").read_text() == first
    # Another experiment in the same folder is a new run (a different digest), not "finished".
    proc = run_cli(*command, "seed=1")
    assert proc.returncode == 0 and (run_dir / "metrics.jsonl").read_text() != first
