"""Run the CLI and SIGKILL it at a chosen point: `python -m tests._crash round:R|checkpoint:R ARGS...`.

The crash tests need a process that dies at the worst moments, and production code must not carry
hooks for them: this wrapper patches two functions of the installed fedtorch, then runs the CLI.

- `round:R`: in round R after every client has trained and reported, before the server step.
- `checkpoint:R`: half-way through writing round R's checkpoint, leaving a torn temporary file.
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile
from pathlib import Path


def main() -> None:
    point, *args = sys.argv[1:]
    kind, _, number = point.partition(":")
    target = int(number)

    from fedtorch.checkpoint import files
    from fedtorch.pipeline import UpdatePipeline

    if kind == "round":
        original = UpdatePipeline.result

        def result(self: UpdatePipeline):  # noqa: ANN202
            if self.record is not None and self.record.step == target:
                os.kill(os.getpid(), signal.SIGKILL)
            return original(self)

        UpdatePipeline.result = result  # type: ignore[method-assign]
    elif kind == "checkpoint":
        original_write = files.atomic_write_bytes

        def torn_write(path: str | Path, data: bytes | memoryview) -> None:
            if Path(path).name == f"round_{target:06d}.pt":
                path = Path(path)
                fd, _ = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
                with os.fdopen(fd, "wb") as handle:
                    handle.write(bytes(data)[: len(data) // 2])
                    handle.flush()
                os.kill(os.getpid(), signal.SIGKILL)
            original_write(path, data)

        files.atomic_write_bytes = torn_write
    else:
        raise SystemExit(f"unknown kill point {point!r}: use round:R or checkpoint:R")
    sys.argv = ["fedtorch", *args]
    from fedtorch.cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
