"""Retry budget: retries may be at most a fraction of calls, plus a small floor per second.

Finagle's RetryBudget model (and gRPC's retry throttling): over a sliding `window`,
``retries <= ratio * calls + min_per_second * window``. When a dependency is down every
call fails, so without a budget each logical call becomes `attempts` upstream calls; with
it, upstream load stays within ``(1 + ratio)`` calls per logical call plus the floor.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

from resilient._kernel.clock import CLOCK
from resilient._kernel.validate import check_ratio, check_seconds

__all__ = ["BudgetRuntime", "RetryBudget"]

DEFAULT_RATIO = 0.2
DEFAULT_MIN_PER_SECOND = 3.0
DEFAULT_WINDOW = 10.0


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryBudget:
    """At most `ratio` retries per call over `window` seconds, plus `min_per_second`."""

    ratio: float = DEFAULT_RATIO
    min_per_second: float = DEFAULT_MIN_PER_SECOND
    window: float = DEFAULT_WINDOW

    def __post_init__(self) -> None:
        check_ratio("retry.budget.ratio", self.ratio)
        check_seconds("retry.budget.min_per_second", self.min_per_second, allow_zero=True)
        window = check_seconds("retry.budget.window", self.window)
        if window < 1:
            raise ValueError(f"retry.budget.window must be >= 1 second, got {self.window!r}")


RetryBudget.__module__ = "resilient"


class BudgetRuntime:
    """Per-second buckets of calls and retries over the window.

    `deposit` (every call) takes no lock: a lost increment under a thread switch only makes
    the budget marginally stricter. `try_withdraw` (failure path only) takes the lock.
    """

    __slots__ = ("_buckets", "_calls", "_lock", "_ratio", "_reserve", "_retries", "_second")

    def __init__(self, config: RetryBudget) -> None:
        self._buckets = math.ceil(config.window)
        self._ratio = config.ratio
        self._reserve = config.min_per_second * config.window
        self._calls = [0] * self._buckets
        self._retries = [0] * self._buckets
        self._second = int(CLOCK.monotonic())
        self._lock = threading.Lock()

    def deposit(self, now: float | None = None) -> None:
        """Count one call (`now`: the caller's clock reading, if it has one)."""
        second = int(CLOCK.monotonic() if now is None else now)
        if second != self._second:
            self._rotate(second)
        self._calls[second % self._buckets] += 1

    def try_withdraw(self, now: float) -> bool:
        """Take one retry from the budget; False when the budget is exhausted."""
        second = int(now)
        with self._lock:
            if second != self._second:
                self._rotate_needs_lock(second)
            allowed = sum(self._retries) + 1 <= self._reserve + self._ratio * sum(self._calls)
            if allowed:
                self._retries[second % self._buckets] += 1
            return allowed

    def _rotate(self, second: int) -> None:
        with self._lock:
            self._rotate_needs_lock(second)

    def _rotate_needs_lock(self, second: int) -> None:
        """Zero the buckets of the seconds that passed since the last rotation."""
        if second < self._second:  # the clock was swapped (a test's fake clock): start afresh
            stale = self._buckets
        elif second == self._second:
            return
        else:
            stale = min(second - self._second, self._buckets)
        self._clear_needs_lock(stale)
        self._second = second

    def _clear_needs_lock(self, stale: int) -> None:
        """Zero `stale` buckets following the current one."""
        for offset in range(1, stale + 1):
            index = (self._second + offset) % self._buckets
            self._calls[index] = 0
            self._retries[index] = 0
