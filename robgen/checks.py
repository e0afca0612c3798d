"""Numeric options checked where the Python API receives them, so the CLI and Python callers get the same one-line
error (named by the CLI option) instead of a silently wrong number or a traceback deep inside torch or numpy."""
from __future__ import annotations

import math

from .errors import RobgenError

SEED_LIMIT = 2**63  # numpy's SeedSequence and torch's manual_seed both take 0 <= seed < 2**63 here


def integer(option: str, value, minimum: int = 1, none_ok: bool = False) -> None:
    """`value` is an int >= minimum (None allowed with none_ok)."""
    if value is None and none_ok:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        what = "positive" if minimum == 1 else f"at least {minimum}"
        raise RobgenError(f"{option} must be a whole number, {what}; got {value!r}")


def seed(value, option: str = "--seed") -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < SEED_LIMIT:
        raise RobgenError(f"{option} must be a whole number in [0, 2**63), got {value!r}")


def number(option: str, value, low: float | None = None, high: float | None = None, *, open_low: bool = False,
           none_ok: bool = False) -> None:
    """`value` is a finite number in [low, high] ((low, high] with open_low)."""
    if value is None and none_ok:
        return
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (low is None or (value > low if open_low else value >= low)) and (high is None or value <= high)
    if not ok:
        lo, hi = ("-inf" if low is None else f"{low:g}"), ("inf" if high is None else f"{high:g}")
        bounds = f"{'(' if open_low else '['}{lo}, {hi}]"
        raise RobgenError(f"{option} must be a finite number in {bounds}, got {value!r}")
