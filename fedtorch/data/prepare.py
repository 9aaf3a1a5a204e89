"""`python -m fedtorch.data.prepare`: write a dataset and its partition into a prepared folder.

    python -m fedtorch.data.prepare out=/data/mnist_dir01 dataset=mnist partition=dirichlet \
        partition.alpha=0.1 partition.num_clients=1000 seed=0
    python -m fedtorch dataset=prepared dataset.path=/data/mnist_dir01 model=mlp

The arguments after `out=` are the same overrides `python -m fedtorch` takes: the dataset and the
partition are composed from `conf/` and built exactly as a run builds them (same seed, same split),
then written client by client (`fedtorch.data.prepared.write_prepared`; the format is described
there). A generated federation (`dataset=synthetic_images dataset.num_clients=1000000`) is written
without ever holding it in memory. `--no-checksum` skips the sha256 of the files (faster for very
large folders; the size checks still apply). Bad input is one line, exit status 2.

Like `fedtorch.cli`, this is an edge command: it alone here knows Hydra.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from fedtorch.errors import OptionError


def prepare(out: str | Path, overrides: list[str], checksum: bool = True) -> Path:
    """Compose the config with `overrides`, build its federation, write it to `out`."""
    from hydra import compose, initialize_config_dir

    from fedtorch.cli import CONF_DIR
    from fedtorch.data.prepared import write_prepared
    from fedtorch.experiment import build_federation

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    if str(cfg.dataset.get("_target_", "")).endswith("load_prepared"):
        raise OptionError("dataset", "prepared", "prepare a dataset from its source, not from a prepared folder")
    _, federation = build_federation(cfg)
    source = {"overrides": overrides, "dataset": str(cfg.dataset.get("_target_")), "seed": int(cfg.seed)}
    return write_prepared(federation, out, checksum=checksum, source=source)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    checksum = "--no-checksum" not in args
    args = [a for a in args if a != "--no-checksum"]
    outs = [a for a in args if a.startswith("out=")]
    overrides = [a for a in args if not a.startswith("out=")]
    try:
        if len(outs) != 1 or not outs[0][4:]:
            raise OptionError("out", outs[0][4:] if outs else None, "one folder to write the prepared federation to")
        start = time.perf_counter()
        path = prepare(outs[0][4:], overrides, checksum)
    except (OptionError, FileNotFoundError) as error:
        print(f"fedtorch.data.prepare: error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    print(f"prepared federation: {path} ({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
