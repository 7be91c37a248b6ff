"""The current deadline: set by a policy's total timeout or by the middleware, read anywhere.

A deadline is an absolute `CLOCK.monotonic()` instant held in a context variable, so it
follows the call into nested `@resilient` calls, threads started with a copied context and
asyncio tasks. Code that makes its own blocking calls can clamp them::

    requests.get(url, timeout=resilient.deadline.remaining() or 10.0)

Across services it travels as a header carrying the remaining budget in milliseconds
(`HEADER`), which the middleware on the other side honours as an upper bound.
"""

from __future__ import annotations

import contextvars
import math
import re
from contextlib import contextmanager
from typing import TYPE_CHECKING

from resilient._kernel.clock import CLOCK

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = [
    "HEADER",
    "current",
    "format_header",
    "parse_header",
    "remaining",
    "scope",
]

#: Request header carrying the caller's remaining budget in integer milliseconds
#: (prior art: gRPC ``grpc-timeout``, Envoy ``x-envoy-expected-rq-timeout-ms``).
HEADER = "x-resilient-deadline-ms"

# Absolute monotonic instant, or None when no deadline is active.
_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar("resilient_deadline", default=None)

_MAX_HEADER_MS = 86_400_000  # one day: anything larger is nonsense, not a deadline
# ASCII digits only, at most 12, with optional spaces or tabs around (RFC 9110 OWS).
# ``str.isdigit`` also accepts "²", which `int` refuses, and other scripts' digits.
_HEADER_RE = re.compile(r"[ \t]*([0-9]{1,12})[ \t]*")


def current() -> float | None:
    """The active deadline as a `CLOCK.monotonic()` instant, or None."""
    return _DEADLINE.get()


def remaining() -> float | None:
    """Seconds left before the active deadline (never negative), or None without one."""
    deadline = _DEADLINE.get()
    if deadline is None:
        return None
    return max(deadline - CLOCK.monotonic(), 0.0)


@contextmanager
def scope(seconds: float | None) -> Iterator[float | None]:
    """Run a block under a deadline `seconds` from now, clamped to any enclosing deadline.

    Yields the effective deadline instant. ``scope(None)`` keeps the enclosing one.
    """
    if seconds is not None and (math.isnan(seconds) or seconds < 0):
        raise ValueError(f"deadline seconds must be >= 0, got {seconds!r}")
    outer = _DEADLINE.get()
    if seconds is None:
        yield outer
        return
    instant = CLOCK.monotonic() + seconds
    if outer is not None and outer < instant:
        instant = outer
    token = _DEADLINE.set(instant)
    try:
        yield instant
    finally:
        _DEADLINE.reset(token)


def format_header(seconds_left: float) -> str:
    """Encode a remaining budget for `HEADER` (whole milliseconds, rounded down, >= 0)."""
    return str(max(int(seconds_left * 1000), 0))


def parse_header(value: str | bytes | None) -> float | None:
    """Decode `HEADER`; None when absent or malformed (a bad header never fails a request)."""
    if value is None:
        return None
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    match = _HEADER_RE.fullmatch(text)
    if match is None:
        return None
    millis = int(match[1])
    if millis > _MAX_HEADER_MS:
        return None
    return millis / 1000.0
