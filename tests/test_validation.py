"""Bad input fails before any work, as one clear line naming the key, the value and what is allowed.

The table runs the real CLI entry point (`fedtorch.cli.main`) in this process (a process start per
case would cost seconds each); one case runs as a real subprocess to check the exact output.
"""

from __future__ import annotations

import logging
import re
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from fedtorch.checkpoint import checkpoint_path, make_payload, save_checkpoint
from fedtorch.validation import ConfigError
from tests.conftest import run_cli

#: Files that would look like results of a run; none may exist after a failed validation.
RESULT_GLOBS = ("summary.json", "model.pt", "metrics.jsonl", "partition.json", "events.out.tfevents.*", "checkpoints")

BAD_OVERRIDES = [
    (("strategy=nope",), r"strategy='nope' is invalid: choose one of .*\bfedavg\b.*\bscaffold\b"),
    (("trainer.lrr=0.1",), r"trainer\.lrr: cannot override \(Key 'lrr' is not in struct\).*\+trainer\.lrr="),
    (("trainer.lr=-0.5",), r"trainer\.lr=-0\.5 is invalid: a finite number > 0"),
    (("trainer.lr=fast",), r"trainer\.lr='fast' is invalid: a finite number > 0"),
    (("trainer.lr=nan",), r"trainer\.lr=nan is invalid: a finite number > 0"),
    (("rounds=0",), r"rounds=0 is invalid: an integer >= 1"),
    (("rounds=2.5",), r"rounds=2\.5 is invalid: an integer >= 1"),
    (("rounds=true",), r"rounds=True is invalid: an integer >= 1"),
    (("trainer.batch_size=0",), r"trainer\.batch_size=0 is invalid: an integer >= 1, or -1"),
    (("sampler.clients_per_round=0",), r"sampler\.clients_per_round=0 is invalid: an integer >= 1"),
    (("sampler.clients_per_round=31",), r"sampler\.clients_per_round=31 is invalid: at most .* federation \(30\)"),
    (("partition=dirichlet", "partition.alpha=0"), r"partition\.alpha=0 is invalid: a finite number > 0"),
    (("strategy.server_lr=-1",), r"strategy\.server_lr=-1 is invalid: a finite number > 0"),
    (
        ("strategy=trimmed_mean", "strategy.aggregator.beta=0.5"),
        r"strategy\.aggregator\.beta=0\.5 is invalid: a number in \[0, 0\.5\)",
    ),
    (
        ("strategy=krum", "strategy.aggregator.f=4", "sampler.clients_per_round=10"),
        r"strategy\.aggregator='Krum' is invalid: needs at least 11 updates per round with f=4 assumed attackers, "
        r"but the sampler gives 10",
    ),
    (("dataset=mnist", "data_dir=/nonexistent/data"), r"data_dir='/nonexistent/data' is invalid: .*cannot find"),
    (("device=tpu",), r"device='tpu' is invalid"),
    (("checkpoint_every=-1",), r"checkpoint_every=-1 is invalid: an integer >= 0 \(0: no checkpoints\)"),
    (("resume=/nonexistent/run",), r"resume='/nonexistent/run' is invalid: no such run folder or checkpoint file"),
    (("trainer.lr=0.1,",), r"cannot parse the override 'trainer\.lr=0\.1,'"),
]


@pytest.fixture
def cli_main(monkeypatch, capsys):
    """Run `fedtorch.cli.main` in this process with an argv; returns (exit code, stderr lines)."""
    from fedtorch import cli

    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    absl_logging = sys.modules.get("absl.logging")  # imported by an earlier test (tensorboard, dp accounting)
    if absl_logging is not None:
        # Hydra's logging set-up closes every handler; absl's closes its stream unless it is the current
        # sys.stderr, and under capsys it is not: it would close pytest's own capture of stderr.
        monkeypatch.setattr(absl_logging.get_absl_handler().python_handler, "stream", sys.__stderr__)

    def _main(*args: str) -> tuple[int | str | None, list[str]]:
        monkeypatch.setattr(sys, "argv", ["fedtorch", *args])
        capsys.readouterr()
        root = logging.getLogger()
        saved = (list(root.handlers), root.level)
        try:
            cli.main()
            code = 0
        except SystemExit as stop:
            code = stop.code
        finally:
            # Hydra's job logging replaced the root handlers: close its files, put pytest's back.
            for handler in root.handlers:
                if handler not in saved[0]:
                    handler.close()
            root.handlers[:] = saved[0]
            root.setLevel(saved[1])
        return code, capsys.readouterr().err.splitlines()

    return _main


def assert_no_results(run_dir: Path, allowed: tuple[str, ...] = ()) -> None:
    leftovers = [p.name for pattern in RESULT_GLOBS for p in run_dir.glob(pattern) if p.name not in allowed]
    assert leftovers == [], leftovers


@pytest.mark.parametrize("overrides,message", BAD_OVERRIDES, ids=[" ".join(o) for o, _ in BAD_OVERRIDES])
def test_bad_override_is_one_line_and_exit_2(cli_main, tmp_path, overrides, message):
    run_dir = tmp_path / "run"
    code, err = cli_main(*overrides, f"hydra.run.dir={run_dir}", "logging.progress=false")
    assert code == 2
    assert len(err) == 1, err
    assert err[0].startswith("fedtorch: error: ")
    assert re.search(message, err[0]), err[0]
    assert_no_results(run_dir)
    assert not run_dir.exists()  # not even Hydra's .hydra/ and an empty log are left behind


def test_corrupt_checkpoint_is_one_line(cli_main, tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "round_000002.pt").write_bytes(b"PK\x03\x04 not really a zip file")
    code, err = cli_main(f"hydra.run.dir={run_dir}", "logging.progress=false")
    assert code == 2 and len(err) == 1, err
    assert "checkpoint" in err[0] and "round_000002.pt cannot be read" in err[0] and "corrupt" in err[0]
    assert_no_results(run_dir, allowed=("checkpoints",))
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == ["round_000002.pt"]  # left as it was


def test_resuming_a_folder_with_another_config_is_refused(cli_main, compose_config, tmp_path):
    run_dir = tmp_path / "run"
    saved = OmegaConf.to_container(compose_config("trainer.lr=0.5"), resolve=True)
    save_checkpoint(checkpoint_path(run_dir, 2), make_payload(2, {}, saved, {}))
    code, err = cli_main(f"hydra.run.dir={run_dir}", "logging.progress=false")
    assert code == 2 and len(err) == 1, err
    assert "holds a run with another config (trainer.lr: 0.5 then, 0.01 now)" in err[0]
    assert "use another hydra.run.dir" in err[0]
    assert_no_results(run_dir, allowed=("checkpoints",))


def test_full_error_shows_the_exception(cli_main, monkeypatch, tmp_path):
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(ConfigError, match=r"trainer\.lr=-1"):
        cli_main("trainer.lr=-1", f"hydra.run.dir={tmp_path / 'run'}")
    from hydra.errors import MissingConfigException

    with pytest.raises(MissingConfigException):
        cli_main("strategy=nope")


def test_cli_process_prints_one_line_and_no_traceback(tmp_path):
    proc = run_cli("strategy=nope", f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode == 2
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("fedtorch: error: strategy='nope' is invalid: choose one of ")
    options = sorted(p.stem for p in (Path(__file__).parents[1] / "conf" / "strategy").glob("*.yaml"))
    assert lines[0].endswith(", ".join(options))
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not (tmp_path / "run").exists()
