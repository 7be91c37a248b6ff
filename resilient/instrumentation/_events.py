"""The event record every strategy reports, and the listener seam users plug into."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Event", "Listener"]


@dataclass(frozen=True, slots=True)
class Event:
    """Something a safeguard did: a retry scheduled, a breaker opened, a call rejected.

    `name` is a stable dotted name (``"retry.scheduled"``); `policy` the policy (or
    function) it happened in; `level` a stdlib logging level; `error` the exception that
    caused it, if any; `fields` the event's own data (attempt, delay, breaker, ...).
    Arguments, bodies and headers of the protected call are never part of an event.
    """

    name: str
    policy: str
    level: int
    error: BaseException | None = None
    fields: Mapping[str, Any] = field(default_factory=dict)


#: A listener receives every event; it must be quick and must not raise (errors are logged
#: once and swallowed so instrumentation can never break the protected call).
Listener = Callable[[Event], None]
