"""Sweeps that scale out: launcher presets (joblib, submitit), the Optuna search preset, thread sharing.

The end-to-end tests run the CLI as a user would; they need the `sweep` extra (Hydra's joblib and
submitit launchers, Optuna sweeper) and are skipped without it.
"""

from __future__ import annotations

import json
import os
import resource
import socket
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from fedtorch.experiment import ConfigError, available_cores, threads_per_run
from fedtorch.report import metric_direction, parse_overrides
from tests.conftest import run_cli

SMALL = ("logging.progress=false",)


def _jobs(sweep_dir: Path) -> list[Path]:
    return sorted((p for p in sweep_dir.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))


def _summary(job: Path) -> dict:
    return json.loads((job / "summary.json").read_text())


# -- threads per run -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("requested", "launcher", "cores", "batch", "expected"),
    [
        (3, None, 8, None, 3),  # an explicit count always wins
        (3, {"n_jobs": 4}, 8, None, 3),
        ("auto", None, 8, None, None),  # a single run keeps torch's default (and torchrun's OMP_NUM_THREADS)
        ("auto", {"_target_": "BasicLauncher"}, 8, None, None),  # sequential sweep: one run at a time
        ("auto", {"n_jobs": 4}, 8, None, 2),  # joblib: the cores shared between the jobs running at once
        ("auto", {"n_jobs": 3}, 8, None, 2),
        ("auto", {"n_jobs": 16}, 8, None, 1),
        ("auto", {"n_jobs": -1}, 8, None, 1),  # joblib's -1: one job per core
        ("auto", {"n_jobs": -2}, 8, None, 1),  # all cores but one: 7 jobs
        ("auto", {"n_jobs": 1}, 8, None, None),
        ("auto", {"n_jobs": -1}, 8, 2, 4),  # Optuna asks 2 trials at a time: only 2 jobs run at once
        ("auto", {"n_jobs": -1}, 8, 1, None),
        ("auto", {"cpus_per_task": 4, "n_jobs": None}, 8, None, 4),  # submitit: the cores each task was given
    ],
)
def test_threads_per_run(requested, launcher, cores, batch, expected):
    assert threads_per_run(requested, launcher, cores, batch) == expected


def test_num_threads_is_validated(compose_config):
    from fedtorch.experiment import validate

    for bad in ("0", "many", "-2"):
        with pytest.raises(ConfigError, match="num_threads"):
            validate(compose_config(f"num_threads={bad}"))
    validate(compose_config("num_threads=2"))


# -- what a sweeper optimizes ----------------------------------------------------------------------
def test_a_multi_task_submitit_job_gets_torchruns_environment(monkeypatch):
    """tasks_per_node > 1: each task is one rank of a distributed run, as if torchrun had started it."""
    pytest.importorskip("submitit")
    from fedtorch.cli import export_submitit_distributed_env

    torch_env = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    # A private copy of the environment: whatever the code under test exports vanishes with the test.
    monkeypatch.setattr(os, "environ", {k: v for k, v in os.environ.items() if k not in torch_env})
    export_submitit_distributed_env()  # not under submitit: nothing to do
    assert "RANK" not in os.environ
    local = {"JOB_ID": "123", "NTASKS": "2", "GLOBALID": "1", "LOCALID": "1", "NODEID": "0", "JOB_NUM_NODES": "1"}
    os.environ.update({f"SUBMITIT_LOCAL_{key}": value for key, value in local.items()}, SUBMITIT_EXECUTOR="local")
    export_submitit_distributed_env()
    assert (os.environ["RANK"], os.environ["WORLD_SIZE"], os.environ["LOCAL_RANK"]) == ("1", "2", "1")
    assert os.environ["MASTER_ADDR"] and int(os.environ["MASTER_PORT"]) > 0
    for key in torch_env:
        del os.environ[key]
    os.environ["SUBMITIT_LOCAL_NTASKS"] = "1"
    export_submitit_distributed_env()  # a single-task job is an ordinary run
    assert "RANK" not in os.environ


# -- presets compose -----------------------------------------------------------------------------
def _hydra_cfg(*overrides: str):
    from hydra import compose, initialize_config_dir

    from tests.conftest import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides), return_hydra_config=True)


def test_launcher_presets_extend_the_plugins():
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    joblib = _hydra_cfg("hydra/launcher=parallel").hydra.launcher
    assert joblib._target_.endswith("JoblibLauncher") and joblib.n_jobs == -1
    assert joblib.pre_dispatch == "2*n_jobs"  # a plugin default: the preset extends the plugin's config
    slurm = _hydra_cfg("hydra/launcher=slurm", "hydra.launcher.partition=gpu").hydra.launcher
    assert slurm._target_.endswith("SlurmLauncher")
    assert (slurm.partition, slurm.gpus_per_node, slurm.tasks_per_node, slurm.timeout_min) == ("gpu", 1, 1, 60)
    assert slurm.signal_delay_s == 120  # a plugin default
    local = _hydra_cfg("hydra/launcher=slurm_local").hydra.launcher
    assert local._target_.endswith("submitit_launcher.LocalLauncher") and local.cpus_per_task == 1


def test_hparams_search_preset_searches_existing_keys_in_the_objectives_direction():
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    presets = sorted((Path(__file__).resolve().parents[1] / "conf" / "hparams_search").glob("*.yaml"))
    assert presets
    for preset in presets:
        cfg = _hydra_cfg(f"hparams_search={preset.stem}")
        sweeper = cfg.hydra.sweeper
        assert sweeper._target_.endswith("OptunaSweeper")
        assert cfg.hydra.mode.name == "MULTIRUN"
        assert str(sweeper.direction) == metric_direction(cfg.objective), preset.name
        for key in sweeper.params:
            assert cfg_select(cfg, key) is not None, f"{preset.name} searches {key}, which the config lacks"
    fedavg = _hydra_cfg("hparams_search=fedavg_optuna")
    assert set(fedavg.hydra.sweeper.params) == {"trainer.lr", "strategy.server_lr", "trainer.epochs"}
    assert fedavg.objective == "eval/accuracy" and fedavg.hydra.sweeper.direction == "maximize"


def cfg_select(cfg, key: str):
    from omegaconf import OmegaConf

    return OmegaConf.select(cfg, key)


# -- sweeps end to end ---------------------------------------------------------------------------
def _busy_cpu_seconds() -> float | None:
    """CPU seconds the whole machine has spent busy since boot (Linux /proc/stat), else None."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _timed_cli(*args: str) -> tuple[subprocess.CompletedProcess, float, float | None]:
    """Run the CLI; returns (process, wall seconds, share of the machine other processes used meanwhile).

    The other processes' share is the machine's busy CPU time minus the CPU time of the command and
    all its descendants (joblib's workers are reaped by the command, so they count as its own).
    """
    busy, ours = _busy_cpu_seconds(), resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = run_cli(*args)
    wall = time.perf_counter() - start
    if busy is None:
        return proc, wall, None
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    ours_s = (after.ru_utime - ours.ru_utime) + (after.ru_stime - ours.ru_stime)
    foreign = max(0.0, _busy_cpu_seconds() - busy - ours_s)
    return proc, wall, foreign / (wall * (os.cpu_count() or 1))


def test_joblib_sweep_is_faster_than_the_same_jobs_one_after_another(tmp_path):
    """4 jobs of a few seconds each, 2 at a time, against the same 4 jobs in sequence.

    Every process pays a start-up cost (importing torch and fedtorch, then torch._dynamo on the
    first optimizer: several CPU seconds), once in the sequential sweep and once per joblib worker,
    so the jobs must be long enough for running 2 at a time to win that back: 50 rounds.
    A timing means nothing when other processes took a good part of the cores meanwhile (a shared
    machine, a parallel test run): then a loss is reported as a skip, with the numbers.
    """
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    if available_cores() < 2:
        pytest.skip("parallel jobs need 2 cores")
    threads = max(1, available_cores() // 2)  # what num_threads=auto gives each of 2 parallel jobs
    job = ("-m", "seed=0,1,2,3", "rounds=50", *SMALL)  # about 5 s per job on an idle 2-core machine

    seq, sequential_s, seq_foreign = _timed_cli(*job, f"num_threads={threads}", f"hydra.sweep.dir={tmp_path / 'seq'}")
    assert seq.returncode == 0, seq.stderr
    par, parallel_s, par_foreign = _timed_cli(
        *job, "hydra/launcher=parallel", "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={tmp_path / 'par'}"
    )
    assert par.returncode == 0, par.stderr
    assert "Joblib.Parallel(n_jobs=2" in par.stdout + par.stderr

    seq_jobs, par_jobs = _jobs(tmp_path / "seq"), _jobs(tmp_path / "par")
    assert len(seq_jobs) == len(par_jobs) == 4
    job_seconds = []
    for a, b in zip(seq_jobs, par_jobs):
        sa, sb = _summary(a), _summary(b)
        assert sb["provenance"]["num_threads"] == threads  # auto: cores // n_jobs
        # Each job records the command that reruns it alone, not the worker process's argv.
        assert sb["provenance"]["command"].split(" -m fedtorch ")[1].startswith(f"seed={b.name} rounds=50")
        # Same jobs, same results (same thread count; every random stream derives from the seed).
        assert sb["metrics"]["eval/accuracy"] == pytest.approx(sa["metrics"]["eval/accuracy"], rel=1e-6)
        job_seconds.append(sa["wall_seconds"])
    jobs = [round(s, 1) for s in job_seconds]
    shares = [f"{x:.0%}" if x is not None else "?" for x in (seq_foreign, par_foreign)]
    timing = (
        f"jobs {jobs} s; the sweep in sequence {sequential_s:.1f} s, with joblib {parallel_s:.1f} s; "
        f"other processes used {shares[0]} and {shares[1]} of the machine meanwhile"
    )
    print(timing)
    busy = max((x for x in (seq_foreign, par_foreign) if x is not None), default=0.0)
    if parallel_s >= sequential_s and busy > 0.15:
        pytest.skip(f"the machine was shared, so the timing is meaningless: {timing}")
    assert parallel_s < sequential_s, timing


def test_submitit_local_sweep_completes(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    sweep_dir = tmp_path / "sweep"
    proc = run_cli("-m", "hydra/launcher=slurm_local", "seed=0,1", "rounds=2", *SMALL, f"hydra.sweep.dir={sweep_dir}")
    assert proc.returncode == 0, proc.stderr
    jobs = _jobs(sweep_dir)
    assert [j.name for j in jobs] == ["0", "1"]
    for job in jobs:
        summary = _summary(job)
        assert summary["rounds"] == 2 and not summary["diverged"]
        assert summary["provenance"]["num_threads"] == 1  # the preset's cpus_per_task
        assert "submitit" in summary["provenance"]["argv"]  # it really ran in a submitit worker
    assert (sweep_dir / ".submitit").is_dir()  # submitit's own logs and pickles


def test_a_submitit_job_can_be_one_distributed_run(tmp_path):
    """tasks_per_node=2 with backend=distributed: one job, two processes, one run folder (gloo on CPU)."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    try:
        socket.gethostbyname(socket.gethostname())  # submitit's MASTER_ADDR is this host's name
    except OSError:
        pytest.skip("this host's name does not resolve")
    sweep_dir = tmp_path / "sweep"
    proc = run_cli(
        "-m",
        "hydra/launcher=slurm_local",
        "hydra.launcher.tasks_per_node=2",
        "backend=distributed",
        "rounds=2",
        *SMALL,
        f"hydra.sweep.dir={sweep_dir}",
    )
    assert proc.returncode == 0, proc.stderr
    assert [j.name for j in _jobs(sweep_dir)] == ["0"]
    summary = _summary(sweep_dir / "0")
    assert (summary["backend"], summary["world_size"], summary["rounds"]) == ("distributed", 2, 2)


def test_optuna_study_completes_and_reports_the_best_trial(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    sweep_dir = tmp_path / "study"
    proc = run_cli(
        "hparams_search=fedavg_optuna",
        "hydra.sweeper.n_trials=3",
        "rounds=2",
        "num_threads=1",
        *SMALL,
        f"hydra.sweep.dir={sweep_dir}",
    )
    assert proc.returncode == 0, proc.stderr
    result = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    trials = _jobs(sweep_dir)
    assert len(trials) == 3
    scores = {t.name: _summary(t)["metrics"]["eval/accuracy"] for t in trials}
    best = max(scores, key=scores.get)
    assert result["best_value"] == scores[best]  # maximized, and the value the app returned
    searched = parse_overrides(yaml.safe_load((sweep_dir / best / ".hydra" / "overrides.yaml").read_text()))
    assert set(result["best_params"]) == {"trainer.lr", "strategy.server_lr", "trainer.epochs"}
    for key, value in result["best_params"].items():
        assert yaml.safe_load(searched[key]) == value


def test_optuna_refuses_a_direction_that_contradicts_the_objective(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    proc = run_cli(
        "hparams_search=fedavg_optuna",
        "objective=eval/loss",  # a loss, still maximized by the preset: a mistake caught before training
        "hydra.sweeper.n_trials=1",
        "rounds=1",
        *SMALL,
        f"hydra.sweep.dir={tmp_path / 'study'}",
    )
    assert proc.returncode != 0
    assert (
        "fedtorch: error: hydra.sweeper.direction='maximize' is invalid: objective=eval/loss should be minimized"
        in (proc.stderr)
    )
    assert not (tmp_path / "study" / "0" / "summary.json").exists()
