"""One process per run folder: a second process resuming the same folder gets a one-line error.

Two processes writing one run folder would interleave checkpoints, metrics and event files into a
run that neither computed. `RunFolderLock` holds an exclusive `fcntl.flock` on `<run>/.lock` for the
life of the run; the operating system releases it when the process exits, however it exits (even
SIGKILL), so a killed run never leaves a stale lock.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import TracebackType

from fedtorch.checkpoint.files import CheckpointError

LOCK_NAME = ".lock"


class RunFolderLock:
    """`with RunFolderLock(run_dir): ...`, or `acquire()` / `release()`."""

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> RunFolderLock:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise CheckpointError(
                f"run folder {self.path.parent} is in use by {holder}: wait for it to finish, or use another "
                "hydra.run.dir"
            ) from error
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"process {os.getpid()}".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            import fcntl

            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunFolderLock:
        return self.acquire()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.release()
