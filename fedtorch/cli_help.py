"""What `python -m fedtorch --help` lists: every config group's options, each with one line.

The help page itself is Hydra's help template, `conf/hydra/help/fedtorch.yaml`. Its list of
groups is the OmegaConf resolver `${fedtorch_config_groups:}` registered here, which reads the
config folder when the help is printed, so a new option YAML appears without editing anything:
its description is the first line of the comment it opens with (a `# @package` line skipped),
cut to its first sentence or clause. The default of each group (from `config.yaml`'s defaults
list) is marked with `*`, and the top-level keys follow with their inline comments.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from omegaconf import OmegaConf

RESOLVER = "fedtorch_config_groups"
HIDDEN_GROUPS = ("hydra/help",)  # the help page itself


def _leading_comment(path: Path) -> list[str]:
    """The comment lines a YAML file opens with, without '#' (`@package` directives skipped)."""
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        text = line.lstrip("#").strip()
        if text and not text.startswith("@package"):
            lines.append(text)
    return lines


def description(path: Path) -> str:
    """One line for an option: the first line of the comment its YAML opens with (see `one_line`)."""
    comment = _leading_comment(path)
    return one_line(comment[0], continues=len(comment) > 1) if comment else ""


def one_line(line: str, continues: bool) -> str:
    """`line` (a comment's first line) cut to a phrase that reads whole.

    Its first sentence when it holds one ("... (Hsu et al. 2019). Smaller alpha ..."; "et al." ends
    none); else the whole line when it is the comment's only line or ends a clause (balanced
    parentheses, a final ',', ';' or ':'); else, as the sentence runs on to the next line, the line
    up to its last clause boundary (': ', '; ' or ', ' outside parentheses), or up to the
    parenthesis left open.
    """
    sentence = re.match(r"(.+?[^.]\.)(\s+[A-Z(]|$)", line)
    if sentence and not sentence.group(1).endswith(" al."):
        return sentence.group(1).rstrip(".")
    depth, boundary, open_at = 0, -1, -1
    for i, char in enumerate(line):
        if char == "(":
            depth, open_at = depth + 1, (i if depth == 0 else open_at)
        elif char == ")":
            depth = max(depth - 1, 0)
        elif depth == 0 and line[i : i + 2] in (": ", "; ", ", "):
            boundary = i
    balanced = depth == 0
    if not continues or (balanced and line.rstrip()[-1:] in ",;:"):
        return line.rstrip(" .,;:")
    if not balanced:
        return line[:open_at].rstrip(" .,;:")
    return line[:boundary].rstrip(" .,;:") if boundary > 0 else line


def config_groups(conf_dir: Path) -> dict[str, list[tuple[str, str]]]:
    """{group: [(option, description), ...]} for every folder of option YAMLs under `conf_dir`."""
    groups: dict[str, list[tuple[str, str]]] = {}
    for path in sorted(conf_dir.rglob("*.yaml")):
        group = path.parent.relative_to(conf_dir).as_posix()
        if group == "." or group in HIDDEN_GROUPS:
            continue
        groups.setdefault(group, []).append((path.stem, description(path)))
    return groups


def _defaults(conf_dir: Path) -> dict[str, str]:
    """{group: option} of the primary config's defaults list (`dataset: fedprox_synthetic`, ...)."""
    config = yaml.safe_load((conf_dir / "config.yaml").read_text()) or {}
    chosen = {}
    for entry in config.get("defaults", []):
        if isinstance(entry, dict):
            ((group, option),) = entry.items()
            if option is not None:
                chosen[group.removeprefix("override ")] = str(option)
    return chosen


def _top_level_keys(conf_dir: Path) -> list[tuple[str, str]]:
    """(key, its inline comment, cut to one line) for the primary config's top-level values."""
    keys = []
    lines = (conf_dir / "config.yaml").read_text().splitlines()
    for i, line in enumerate(lines):
        found = re.match(r"([a-z_]+):\s*(.*?)\s*(?:#\s*(.*))?$", line)
        if found and found.group(1) not in ("defaults", "hydra") and found.group(2):
            continues = i + 1 < len(lines) and lines[i + 1].lstrip().startswith("#")  # a comment on the next line
            keys.append((found.group(1), one_line(found.group(3), continues) if found.group(3) else ""))
    return keys


def groups_text(conf_dir: Path) -> str:
    """The help page's list of groups, options and top-level keys ('$' doubled for Hydra's
    string.Template, which the help text goes through after OmegaConf)."""
    defaults = _defaults(conf_dir)
    groups = config_groups(conf_dir)
    width = 2 + max(len(option) + 2 for options in groups.values() for option, _ in options)  # "name *"
    lines = []
    for group, options in groups.items():
        # A nested group is added to its parent's config with a leading '+' (+strategy/aggregator=median).
        how = f"+{group}=" if "/" in group and not group.startswith("hydra/") else f"{group}="
        lines.append(f"  {group} ({how}option)")
        for option, text in options:
            name = f"{option} *" if defaults.get(group) == option else option
            lines.append(f"    {name:<{width}}{text}".rstrip())
    lines += ["", "Top-level keys (key=value):"]
    lines += [f"    {key:<{width}}{text}".rstrip() for key, text in _top_level_keys(conf_dir)]
    return "\n".join(lines).replace("$", "$$")


def register_resolver(conf_dir: Path) -> None:
    """Make `${fedtorch_config_groups:}` (the help template's list) available; idempotent."""
    OmegaConf.register_new_resolver(RESOLVER, lambda: groups_text(conf_dir), replace=True)
