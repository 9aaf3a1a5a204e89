"""The one error type for a bad option, shared by library code and the command line.

Library classes take plain Python values and raise `OptionError(key, value, allowed)` when one is
out of range; the CLI prints it as one line (`fedtorch: error: key=value is invalid: allowed`) and
exits with status 2. `key` is the config path a user would type (`partition.alpha`), so the same
message serves a Hydra user and a library user.
"""

from __future__ import annotations

import math
from typing import Any


class OptionError(ValueError):
    """A bad option: `key` (e.g. "partition.alpha"), its `value`, and what is `allowed`."""

    def __init__(self, key: str, value: Any, allowed: str) -> None:
        super().__init__(f"{key}={value!r} is invalid: {allowed}")
        self.key, self.value, self.allowed = key, value, allowed


# -- checks constructors use, so every bad value is refused where it is used ----------------------
def is_int(value: Any) -> bool:
    """An integer, not a bool."""
    # bool is an int in Python, but `rounds=true` is a typo, not 1 round
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """A finite int or float, not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def require(key: str, value: Any, ok: bool, allowed: str) -> None:
    """Raise `OptionError(key, value, allowed)` unless `ok`."""
    if not ok:
        raise OptionError(key, value, allowed)


def check_number(
    key: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
    none: bool = False,
) -> float | None:
    """`value` as a float, if it is a finite number in the interval; else OptionError naming it.

    The interval is [low, high] with `low_open`/`high_open` excluding an end; `none=True` also
    admits None (returned as is).
    """
    if value is None and none:
        return None
    ok = is_number(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        if low is not None and high is not None:
            interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
            allowed = f"a number in {interval}"
        elif low is not None:
            allowed = f"a finite number {'>' if low_open else '>='} {low:g}"
        elif high is not None:
            allowed = f"a finite number {'<' if high_open else '<='} {high:g}"
        else:
            allowed = "a finite number"
        raise OptionError(key, value, allowed + (", or null" if none else ""))
    return float(value)


def check_int(key: str, value: Any, low: int | None = None, *, none: bool = False, extra: str = "") -> int | None:
    """`value` if it is an integer >= `low` (None admitted with `none=True`); else OptionError."""
    if value is None and none:
        return None
    ok = is_int(value) and (low is None or value >= low)
    if not ok:
        allowed = "an integer" + (f" >= {low}" if low is not None else "") + extra + (", or null" if none else "")
        raise OptionError(key, value, allowed)
    return int(value)


def check_choice(key: str, value: Any, choices: tuple[Any, ...]) -> Any:
    """`value` if it is one of `choices`; else OptionError listing them."""
    if value not in choices:
        raise OptionError(key, value, "one of " + ", ".join(str(c) for c in choices))
    return value
