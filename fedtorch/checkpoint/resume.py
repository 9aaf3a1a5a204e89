"""How a run starts: fresh, from a checkpoint (same config, or extended), or not at all.

Plain Python: the config arrives as a nested dict, overrides as key paths.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedtorch.checkpoint.files import CHECKPOINT_DIR, CheckpointError, list_checkpoints, load_checkpoint

#: Config keys a resumed run may change: they do not alter what the rounds compute (`rounds` may
#: only grow, to extend training). Everything else must match the checkpoint's config.
RESUMABLE_KEYS = ("rounds", "resume", "checkpoint_every", "device", "data_dir", "num_threads", "objective", "logging")

#: Stop reasons after which a run is finished whatever `rounds` says: a spent privacy budget is
#: never spent again, a diverged run is not continued.
FINAL_STOPS = ("diverged", "privacy_budget")


@dataclass
class ResumePlan:
    """How a run starts: fresh, from a checkpoint, or not at all (already finished).

    Attributes:
        run_dir: the folder the run writes into (the resumed run's folder when resuming).
        config: the config to run with (the checkpoint's, with allowed changes applied).
        checkpoint: the loaded checkpoint, None for a fresh start.
        checkpoint_path: where it was read from.
        finished: the summary of a run that already ended (completed or diverged): nothing to do.
        choices: the config-group choices the run was composed with (the checkpoint's when resuming
            from a run folder), to store in its next checkpoints.
    """

    run_dir: Path
    config: dict[str, Any]
    choices: dict[str, Any] = field(default_factory=dict)
    checkpoint: dict[str, Any] | None = None
    checkpoint_path: Path | None = None
    finished: dict[str, Any] | None = None

    @property
    def round(self) -> int:
        return 0 if self.checkpoint is None else int(self.checkpoint["round"])


def _allowed(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in RESUMABLE_KEYS)


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict) and tree:
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: tree}


def config_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(key, saved value, current value) for every leaf that differs, outside `RESUMABLE_KEYS`."""
    missing = object()
    a, b = _flatten(saved), _flatten(current)
    diffs = []
    for key in sorted(set(a) | set(b)):
        if _allowed(key):
            continue
        left, right = a.get(key, missing), b.get(key, missing)
        if left != right:
            diffs.append((key, None if left is missing else left, None if right is missing else right))
    return diffs


def _select(tree: dict[str, Any], key: str) -> Any:
    node: Any = tree
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _assign(tree: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value


def _describe(diffs: Sequence[tuple[str, Any, Any]]) -> str:
    shown = ", ".join(f"{k}: {a!r} then, {b!r} now" for k, a, b in diffs[:3])
    more = f" (and {len(diffs) - 3} more)" if len(diffs) > 3 else ""
    return shown + more


def _read_summary(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / "summary.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # unreadable: treat the run as unfinished and recompute it


def plan_resume(
    resume: str | None,
    output_dir: str | Path,
    config: dict[str, Any],
    overridden: Iterable[str] = (),
    choices: Mapping[str, Any] | None = None,
) -> ResumePlan:
    """Decide how a run starts.

    Args:
        resume: `"auto"`: continue from the latest checkpoint in `output_dir` if there is one (so
            re-running a command with the same run folder resumes it), else start fresh; None:
            start fresh, refusing a folder that already holds checkpoints; a path: continue the run
            in that folder (or from that checkpoint file), writing into that folder.
        output_dir: this invocation's run folder (Hydra's).
        config: the composed, resolved config of this invocation.
        overridden: the keys set on the command line (`trainer.lr`, `strategy`, ...).
        choices: config-group choices of this invocation (`strategy: fedavg`, ...).

    With `"auto"` the whole config must equal the checkpoint's, apart from `RESUMABLE_KEYS`. With a
    path the run continues with the checkpoint's config; command-line overrides may change only
    `RESUMABLE_KEYS`, and any other override must repeat the saved value.
    """
    output_dir = Path(output_dir)
    choices = {k: v for k, v in (choices or {}).items() if not str(k).startswith("hydra/")}
    if resume is None or resume == "auto":
        found = list_checkpoints(output_dir)
        if not found:
            plan = ResumePlan(run_dir=output_dir, config=config, choices=choices)
            summary = _read_summary(output_dir)
            if resume == "auto" and summary is not None and _same_run(summary, config):
                # A finished run without checkpoints (checkpoint_every=0): left alone, never re-run
                # (a spent privacy budget is not spent again by a second run from round 0).
                ended = summary.get("stop_reason") in FINAL_STOPS or summary.get("rounds") == config.get("rounds")
                plan.finished = summary if ended else None
            return plan
        if resume is None:
            raise CheckpointError(
                f"resume=null but the run folder {output_dir} already holds checkpoints of a run; use resume=auto "
                "to continue it, or another hydra.run.dir for a new run"
            )
        path, run_dir, explicit = found[-1][1], output_dir, False
    else:
        target = Path(resume).expanduser()
        if target.is_dir():
            found = list_checkpoints(target)
            if not found:
                raise CheckpointError(f"resume={resume!r} is invalid: {target} holds no checkpoints/round_*.pt")
            path, run_dir = found[-1][1], target
        elif target.is_file():
            path = target
            run_dir = target.parent.parent if target.parent.name == CHECKPOINT_DIR else target.parent
        else:
            raise CheckpointError(f"resume={resume!r} is invalid: no such run folder or checkpoint file")
        explicit = True

    checkpoint = load_checkpoint(path)
    saved = checkpoint.get("config") or {}
    if explicit:
        effective = _merge_explicit(saved, config, overridden, choices, checkpoint.get("choices") or {}, run_dir)
    else:
        diffs = config_differences(saved, config)
        if diffs:
            raise CheckpointError(
                f"the run folder {run_dir} holds a run with another config ({_describe(diffs)}); a resumed run "
                f"keeps its config (only {', '.join(RESUMABLE_KEYS)} may change): use another hydra.run.dir "
                "for a new run"
            )
        effective = config

    rounds = effective.get("rounds")
    if isinstance(rounds, int) and rounds < checkpoint["round"]:
        raise CheckpointError(
            f"rounds={rounds} is invalid: the checkpoint {path} is at round {checkpoint['round']}; "
            "a resumed run can only keep or extend its rounds"
        )
    kept_choices = dict(checkpoint.get("choices") or {}) if explicit else choices
    plan = ResumePlan(
        run_dir=run_dir, config=effective, choices=kept_choices, checkpoint=checkpoint, checkpoint_path=path
    )
    summary = _read_summary(run_dir)
    ended = summary is not None and (
        summary.get("stop_reason") in FINAL_STOPS or summary.get("diverged") or summary.get("rounds") == rounds
    )
    if ended:
        plan.finished = summary
    elif checkpoint.get("simulation", {}).get("stop_reason") in FINAL_STOPS:
        # Killed after its final checkpoint but before summary.json: still finished.
        plan.finished = {"rounds": checkpoint["round"], "stop_reason": checkpoint["simulation"]["stop_reason"]}
    return plan


def config_digest(config: dict[str, Any]) -> str:
    """sha256 of a config without its `RESUMABLE_KEYS`: equal exactly when a run folder's run is the
    same experiment (summary.json records it, for runs that keep no checkpoint)."""
    import hashlib

    kept = {k: v for k, v in _flatten(config).items() if not _allowed(k)}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()


def _same_run(summary: dict[str, Any], config: dict[str, Any]) -> bool:
    """Whether a folder's summary.json belongs to a run of `config` (same digest)."""
    return summary.get("config_digest") == config_digest(config)


def _merge_explicit(
    saved: dict[str, Any],
    current: dict[str, Any],
    overridden: Iterable[str],
    choices: Mapping[str, Any],
    saved_choices: Mapping[str, Any],
    run_dir: Path,
) -> dict[str, Any]:
    """The checkpoint's config with the allowed command-line overrides applied; other overrides must agree."""
    effective = copy.deepcopy(saved)
    for key in overridden:
        if _allowed(key):
            _assign(effective, key, copy.deepcopy(_select(current, key)))
            continue
        if key in choices and saved_choices:
            same, now, then = choices[key] == saved_choices.get(key), choices[key], saved_choices.get(key)
        else:
            now, then = _select(current, key), _select(saved, key)
            same = now == then
        if not same:
            raise CheckpointError(
                f"{key}={now!r} is invalid when resuming {run_dir}: that run has {key}={then!r} and keeps its "
                f"config (only {', '.join(RESUMABLE_KEYS)} may change)"
            )
    return effective
