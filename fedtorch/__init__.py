"""fedtorch: a PyTorch harness for federated-learning research."""

__version__ = "0.1.0"
