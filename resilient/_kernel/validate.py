"""Construction-time checks: each error names the field, the rule and the value it got."""

from __future__ import annotations

import math
from datetime import timedelta

__all__ = ["check_int", "check_name", "check_number", "check_ratio", "check_seconds"]


def check_seconds(field: str, value: object, *, allow_zero: bool = False) -> float:
    """A duration in seconds (float, int or timedelta), finite and > 0 (or >= 0)."""
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{field} must be a number of seconds or a timedelta, got {value!r}")
    seconds = float(value)
    rule = ">= 0" if allow_zero else "> 0"
    if math.isnan(seconds) or math.isinf(seconds) or seconds < 0 or (seconds == 0 and not allow_zero):
        raise ValueError(f"{field} must be a finite number of seconds {rule}, got {value!r}")
    return seconds


def check_int(field: str, value: object, *, minimum: int) -> int:
    """An integer (not a bool) >= `minimum`."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{field} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{field} must be >= {minimum}, got {value!r}")
    return value


def check_ratio(field: str, value: object, *, allow_zero: bool = True) -> float:
    """A fraction in [0, 1] (or (0, 1])."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{field} must be a number between 0 and 1, got {value!r}")
    low_ok = value >= 0 if allow_zero else value > 0
    if math.isnan(value) or not low_ok or value > 1:
        bounds = "[0, 1]" if allow_zero else "(0, 1]"
        raise ValueError(f"{field} must be in {bounds}, got {value!r}")
    return float(value)


def check_number(field: str, value: object, *, minimum: float) -> float:
    """A finite real number (not a bool) >= `minimum`."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{field} must be a number, got {value!r}")
    if not math.isfinite(value) or value < minimum:
        raise ValueError(f"{field} must be a finite number >= {minimum}, got {value!r}")
    return float(value)


def check_name(field: str, value: object) -> str:
    """A non-empty string."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{field} must be a non-empty string, got {value!r}")
    return value
