"""`python -m fedtorch --help`: fedtorch introduces itself and lists every option of every group."""

from __future__ import annotations

import re

import pytest
import yaml

from fedtorch.cli_help import one_line
from tests.conftest import CONF_DIR, run_cli


@pytest.fixture(scope="module")
def help_text() -> str:
    proc = run_cli("--help")
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def first_comment_line(path) -> str:
    """Independently: the first comment line of an option's YAML that is not a `@package` directive."""
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            return ""
        text = line.lstrip("# ").strip()
        if text and not text.startswith("@package"):
            return text
    return ""


def test_help_names_fedtorch_and_gives_three_commands(help_text):
    assert help_text.startswith("fedtorch: a PyTorch harness for federated-learning research.")
    assert "powered by Hydra" not in help_text
    lines = help_text.splitlines()
    start = lines.index("The three most common commands:")
    commands = [line.strip() for line in lines[start + 1 : start + 4]]
    assert all(c.startswith("python -m fedtorch") for c in commands) and lines[start + 4] == ""
    assert any(" -m " in c for c in commands)  # one of them is a sweep


def listed_options(help_text: str) -> dict[str, dict[str, str]]:
    """{group: {option (with " *" when marked default): description}} from the help's group list."""
    groups: dict[str, dict[str, str]] = {}
    current = None
    for line in help_text.splitlines():
        header = re.fullmatch(r"  (\S+) \(\+?(\S+)=option\)", line)
        if header:
            assert header.group(1) == header.group(2)
            current = groups.setdefault(header.group(1), {})
        elif current is not None and line.startswith("    "):
            name, _, text = line.strip().partition("  ")
            current[name.strip()] = text.strip()
        elif current is not None and not line.strip():
            current = None  # the list ended
    return groups


def test_help_lists_every_option_of_every_group_with_its_description(help_text):
    defaults = {}
    for entry in yaml.safe_load((CONF_DIR / "config.yaml").read_text())["defaults"]:
        if isinstance(entry, dict):
            ((group, option),) = entry.items()
            defaults[group] = option
    option_files = [p for p in CONF_DIR.rglob("*.yaml") if p.parent != CONF_DIR and "hydra/help" not in str(p)]
    assert len(option_files) > 80
    listed = listed_options(help_text)
    expected_groups = {p.parent.relative_to(CONF_DIR).as_posix() for p in option_files}
    assert set(listed) == expected_groups
    for path in option_files:
        group = path.parent.relative_to(CONF_DIR).as_posix()
        name = f"{path.stem} *" if defaults.get(group) == path.stem else path.stem
        assert name in listed[group], f"{group}/{name}"
        # The description is the start of the file's first comment line (cut to a phrase, never empty).
        first = first_comment_line(path)
        assert first, f"{path} opens with no comment describing it"
        described = listed[group][name]
        assert described and first.startswith(described[:40]), (path, described)
    assert sum(len(options) for options in listed.values()) == len(option_files)
    assert re.search(r"^    rounds +communication rounds$", help_text, re.M)  # top-level keys, with their comments


def test_one_line_cuts_a_comment_to_a_phrase_that_reads_whole():
    sentence = "Label skew: each class ~ Dir(alpha) (Hsu et al. 2019). Smaller alpha, more skew."
    assert one_line(sentence, continues=False) == "Label skew: each class ~ Dir(alpha) (Hsu et al. 2019)"
    assert one_line("FedAvg (McMahan et al. 2017): the mean; server_lr scales the step.", True) == (
        "FedAvg (McMahan et al. 2017): the mean; server_lr scales the step"
    )
    assert one_line("Pixel backdoor (Gu et al. 2017; B. 2020): a share of each malicious", True) == (
        "Pixel backdoor (Gu et al. 2017; B. 2020)"
    )
    assert one_line("MNIST (LeCun et al.): 60,000 digits, read from raw (IDX files,", True) == (
        "MNIST (LeCun et al.): 60,000 digits, read from raw"
    )
    assert one_line("Run jobs in parallel (joblib, one process per job):", True) == (
        "Run jobs in parallel (joblib, one process per job)"
    )


def test_hydra_options_still_work():
    proc = run_cli("--cfg", "job", "--package", "trainer")
    assert proc.returncode == 0 and "lr:" in proc.stdout, proc.stderr
    proc = run_cli("--hydra-help")
    assert proc.returncode == 0 and "Hydra" in proc.stdout, proc.stderr
