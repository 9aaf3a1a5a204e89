"""Command-line entry point: Hydra composes the config, this module turns it into objects.

This is the edge of the system: the only module (with `fedtorch.experiment`'s builders) that
knows about Hydra and OmegaConf. Everything it builds is a plain Python object.

    python -m fedtorch                                    # the default experiment
    python -m fedtorch strategy=fedavg trainer.lr=0.05    # any value overridden
    python -m fedtorch -m trainer.lr=0.01,0.1 seed=0,1    # a multirun sweep
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from fedtorch.experiment import ConfigError, run_experiment

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def _hydra_main(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig

    output_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        summary = run_experiment(cfg, output_dir)
    except ConfigError as error:
        # One clear line, no traceback, non-zero exit; HYDRA_FULL_ERROR=1 shows the traceback.
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"fedtorch: error: {error}", file=sys.stderr)
        sys.exit(2)
    # The value a Hydra sweeper (Optuna) optimizes.
    objective = summary["metrics"].get(cfg.get("objective") or "")
    return None if objective is None else float(objective)


def main() -> None:
    """Console script `fedtorch` and `python -m fedtorch`."""
    _hydra_main()


if __name__ == "__main__":
    main()
