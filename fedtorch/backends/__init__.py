"""Backends: who trains a round's clients. Sequential is the reference; the others must match it."""

from fedtorch.backends.sequential import SequentialBackend

__all__ = ["SequentialBackend"]
