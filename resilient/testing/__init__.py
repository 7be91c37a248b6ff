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

from resilient._kernel.clock import CLOCK
from resilient._strategies.breaker_registry import _REGISTRY, forget_breakers, reset_breakers
from resilient.testing._upstream import Fault, FaultyUpstream, ReceivedRequest

__all__ = [
    "FakeClock",
    "Fault",
    "FaultyUpstream",
    "ReceivedRequest",
    "breaker_state",
    "describe",
    "fake_clock",
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


class FakeClock:
    """A monotonic clock that moves only when told to, or when the library would sleep."""

    def __init__(self, start: float = 1_000.0) -> None:
        self.now = start

    def monotonic(self) -> float:
        """The fake current instant."""
        return self.now

    def advance(self, seconds: float) -> None:
        """Move time forward (breaker reset timeouts, rate-limit windows, budgets see it)."""
        self.now += seconds


@contextmanager
def fake_clock(start: float = 1_000.0) -> Iterator[FakeClock]:
    """Drive the library's clock by hand; its waits advance the fake clock instead of sleeping.

    It covers backoff, rate-limit windows and waits, breaker reset timeouts, retry budgets
    and `resilient.deadline`. It does not move asyncio's loop clock, so `asyncio` timeouts
    of async attempts still use real time.
    """
    clock = FakeClock(start)
    previous = (CLOCK.monotonic, CLOCK.skip_waits, CLOCK.recorded, CLOCK.on_skipped_wait)
    CLOCK.monotonic, CLOCK.skip_waits, CLOCK.on_skipped_wait = clock.monotonic, True, clock.advance
    try:
        yield clock
    finally:
        CLOCK.monotonic, CLOCK.skip_waits, CLOCK.recorded, CLOCK.on_skipped_wait = previous


def breaker_state(name: str) -> str:
    """The state of the named breaker: ``"closed"``, ``"open"`` or ``"half-open"``."""
    runtime = _REGISTRY.get(name)
    if runtime is None:
        raise KeyError(f"no circuit breaker named {name!r} has been defined")
    return runtime.state


def describe(policy: Any) -> dict[str, Any]:
    """The layers of a `Policy` (or a function decorated by one), outer to inner."""
    from resilient._engine.policy import Policy  # noqa: PLC0415 - avoid a cycle at import time

    policy = getattr(policy, "__resilient_policy__", policy)
    if isinstance(policy, Policy):
        return policy.describe()
    raise TypeError(f"describe() takes a Policy, got {policy!r}")
