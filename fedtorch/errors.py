"""The one error type for a bad option, shared by library code and the command line.

Library classes take plain Python values and raise `OptionError(key, value, allowed)` when one is
out of range; the CLI prints it as one line (`fedtorch: error: key=value is invalid: allowed`) and
exits with status 2. `key` is the config path a user would type (`partition.alpha`), so the same
message serves a Hydra user and a library user.
"""

from __future__ import annotations

from typing import Any


class OptionError(ValueError):
    """A bad option: `key` (e.g. "partition.alpha"), its `value`, and what is `allowed`."""

    def __init__(self, key: str, value: Any, allowed: str) -> None:
        super().__init__(f"{key}={value!r} is invalid: {allowed}")
        self.key, self.value, self.allowed = key, value, allowed
