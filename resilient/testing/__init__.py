"""Helpers for testing code protected by `resilient` (and for testing `resilient` itself).

    from resilient import testing

    def test_retries_three_times():
        with testing.no_wait() as waits:   # backoff and rate-limit waits return at once
            assert fetch() == "ok"
        assert len(waits) == 2             # ...but every requested delay is recorded

    @pytest.fixture(autouse=True)
    def _fresh_breakers():
        yield
        testing.reset_breakers()
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from resilient._breaker import _REGISTRY, forget_breakers, reset_breakers
from resilient._clock import CLOCK

__all__ = [
    "breaker_state",
    "describe",
    "forget_breakers",
    "no_wait",
    "reset_breakers",
]


@contextmanager
def no_wait() -> Iterator[list[float]]:
    """Skip every backoff and rate-limit wait inside the block; yield the delays requested.

    Timeouts still apply (they are limits, not waits). Nesting is allowed; the previous
    mode is restored on exit.
    """
    previous = (CLOCK.skip_waits, CLOCK.recorded)
    recorded: list[float] = []
    CLOCK.skip_waits, CLOCK.recorded = True, recorded
    try:
        yield recorded
    finally:
        CLOCK.skip_waits, CLOCK.recorded = previous


def breaker_state(name: str) -> str:
    """The state of the named breaker: ``"closed"``, ``"open"`` or ``"half-open"``."""
    runtime = _REGISTRY.get(name)
    if runtime is None:
        raise KeyError(f"no circuit breaker named {name!r} has been defined")
    return runtime.state


def describe(policy: Any) -> dict[str, Any]:
    """The layers of a `Policy` (or a function decorated by one), outer to inner."""
    from resilient._policy import Policy  # noqa: PLC0415 - avoid a cycle at import time

    if isinstance(policy, Policy):
        return policy.describe()
    raise TypeError(f"describe() takes a Policy, got {policy!r}")
