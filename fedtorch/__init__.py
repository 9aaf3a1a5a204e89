"""fedtorch: a PyTorch harness for federated-learning research.

    import fedtorch
    summary = fedtorch.run(["strategy=fedprox", "trainer.lr=0.05"])   # what `python -m fedtorch ...` runs

`fedtorch.run` is `fedtorch.api.run`; `fedtorch.results` loads run folders as DataFrames.
"""

__version__ = "0.1.0"

from fedtorch.api import run  # noqa: E402  (after __version__, which provenance reads)

__all__ = ["__version__", "run"]
