"""Fixtures of the privacy, attack and compression tests."""

from tests.privacy.helpers import one_torch_thread  # noqa: F401  (autouse)
