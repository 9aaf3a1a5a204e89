"""`python -m fedtorch.launch --nproc_per_node=N [torchrun options] [fedtorch overrides]`: torchrun
for fedtorch, with fedtorch's exit statuses.

torchrun reports any worker that exits non-zero as a `ChildFailedError`, with its own traceback,
and exits with status 1: a bad config value (which every fedtorch process refuses in one line, the
first process printing it) would read as a crash. This wrapper runs torchrun's launcher and, when
every failed worker exited with fedtorch's config-error status 2, exits 2 without a traceback;
other failures keep torchrun's report. `backend=distributed` is added when no backend is given.

    python -m fedtorch.launch --nproc_per_node=2 strategy=fedavg rounds=50
    python -m fedtorch.launch --nnodes=2 --node_rank=0 --nproc_per_node=4 --rdzv_backend=c10d \\
        --rdzv_endpoint=HOST:29400 experiment=mnist_cnn_iid

Options of torchrun are those before the first argument that does not start with `--` (write them
as `--key=value`); everything from there on goes to fedtorch.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Sequence

#: fedtorch's exit status for a refused config (`fedtorch.cli.fail`).
CONFIG_ERROR = 2


def split_arguments(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """(torchrun's options, fedtorch's overrides) of a command line."""
    launcher: list[str] = []
    rest = list(argv)
    while rest and rest[0].startswith("--"):
        launcher.append(rest.pop(0))
    if rest and rest[0] == "--":
        rest.pop(0)
    return launcher, rest


def torchrun_arguments(argv: Sequence[str]) -> list[str]:
    """The torchrun command line that runs fedtorch with these arguments."""
    launcher, overrides = split_arguments(argv)
    if not any(o.startswith("--nproc") or o.startswith("--nproc-per-node") for o in launcher):
        launcher.append("--nproc_per_node=1")
    if not any(o.startswith(("--rdzv", "--master", "--nnodes", "--standalone")) for o in launcher):
        launcher.append("--standalone")
    if not any(o.split("=", 1)[0] == "backend" for o in overrides):
        overrides.append("backend=distributed")
    return [*launcher, "-m", "fedtorch", *overrides]


def main(argv: Sequence[str] | None = None) -> None:
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    args = parse_args(torchrun_arguments(sys.argv[1:] if argv is None else argv))
    try:
        run(args)
    except ChildFailedError as error:
        codes = {failure.exitcode for failure in error.failures.values()}
        # The other workers may have been stopped by torchrun (SIGTERM) once one had failed.
        if CONFIG_ERROR in codes and codes <= {CONFIG_ERROR, -signal.SIGTERM, 128 + signal.SIGTERM}:
            sys.exit(CONFIG_ERROR)  # rank 0 has printed the one-line error
        raise


if __name__ == "__main__":
    main()
