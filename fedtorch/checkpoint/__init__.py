"""Checkpoints: everything a run needs to continue exactly where it stopped.

files.py    the file format, atomic writes, weights_only loading
rng.py      the process-wide random streams
resume.py   how a run starts: fresh, resumed, extended, or already finished
lock.py     one process per run folder
"""

from fedtorch.checkpoint.files import (
    CHECKPOINT_DIR,
    CheckpointError,
    checkpoint_path,
    from_safe,
    list_checkpoints,
    load_checkpoint,
    make_payload,
    remove_temporaries,
    save_checkpoint,
    to_safe,
)
from fedtorch.checkpoint.lock import RunFolderLock
from fedtorch.checkpoint.resume import (
    FINAL_STOPS,
    RESUMABLE_KEYS,
    ResumePlan,
    config_differences,
    config_digest,
    plan_resume,
)
from fedtorch.checkpoint.rng import rng_state, set_rng_state

__all__ = [
    "CHECKPOINT_DIR",
    "FINAL_STOPS",
    "RESUMABLE_KEYS",
    "CheckpointError",
    "ResumePlan",
    "RunFolderLock",
    "checkpoint_path",
    "config_differences",
    "config_digest",
    "from_safe",
    "list_checkpoints",
    "load_checkpoint",
    "make_payload",
    "plan_resume",
    "remove_temporaries",
    "rng_state",
    "save_checkpoint",
    "set_rng_state",
    "to_safe",
]
