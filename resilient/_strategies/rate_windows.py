"""The three in-process rate-limit algorithms: one limit item's state for one key.

`LimiterRuntime` (`_ratelimit`) keeps one window per limit item and key, under its lock;
the windows themselves do no locking. Each answers `admit(now)` with 0.0 (admitted) or
the seconds until a slot may free up, with O(1) work (amortised, for the moving window).
"""

from __future__ import annotations

import math
from collections import deque

__all__ = ["WINDOWS", "FixedWindow", "MovingWindow", "SlidingWindow", "Window"]


class Window:
    """One limit item's state for one key. `admit` returns 0.0 (admitted) or seconds to wait."""

    __slots__ = ("_amount", "_period", "expires")

    def __init__(self, amount: int, period: float) -> None:
        self._amount = amount
        self._period = period
        self.expires = 0.0

    def check(self, now: float) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def commit(self, now: float) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def state(self, now: float) -> tuple[int, float]:  # noqa: ARG002 - overridden by every window
        """(calls still allowed, seconds until the window resets), without changing anything."""
        return self._amount, 0.0

    def admit(self, now: float) -> float:
        """`check`, and `commit` when admitted."""
        wait = self.check(now)
        if not wait:
            self.commit(now)
        return wait


class FixedWindow(Window):
    __slots__ = ("_count", "_start")

    def __init__(self, amount: int, period: float) -> None:
        super().__init__(amount, period)
        self._start = -period
        self._count = 0

    def check(self, now: float) -> float:
        if now - self._start >= self._period:
            return 0.0
        if self._count < self._amount:
            return 0.0
        return self._start + self._period - now

    def commit(self, now: float) -> None:
        if now - self._start >= self._period:
            self._start = now - (now - self._start) % self._period if self._count else now
            self._count = 0
        self._count += 1
        self.expires = self._start + self._period

    def state(self, now: float) -> tuple[int, float]:
        if now - self._start >= self._period:
            return self._amount, 0.0
        return max(self._amount - self._count, 0), self._start + self._period - now


class SlidingWindow(Window):
    """Weighted two-window counter: previous window's count decays linearly."""

    __slots__ = ("_current", "_previous", "_start")

    def __init__(self, amount: int, period: float) -> None:
        super().__init__(amount, period)
        self._start = 0.0
        self._current = 0
        self._previous = 0

    def state(self, now: float) -> tuple[int, float]:
        start, previous, current = self._start, self._previous, self._current
        elapsed = now - start
        if elapsed >= self._period:
            windows = int(elapsed // self._period)
            previous, current, start = (current if windows == 1 else 0), 0, start + windows * self._period
        used = previous * (1.0 - (now - start) / self._period) + current
        return max(self._amount - math.ceil(used), 0), start + self._period - now

    def _roll(self, now: float) -> None:
        elapsed = now - self._start
        if elapsed < self._period:
            return
        windows = int(elapsed // self._period)
        self._previous = self._current if windows == 1 else 0
        self._current = 0
        self._start += windows * self._period

    def check(self, now: float) -> float:
        self._roll(now)
        fraction = (now - self._start) / self._period
        if self._previous * (1.0 - fraction) + self._current + 1 <= self._amount:
            return 0.0
        if self._current + 1 > self._amount:
            # Wait for the next window, then for the previous count to decay enough.
            next_start = self._start + self._period
            need = 1.0 - (self._amount - 1) / self._current if self._current else 0.0
            return max(next_start + max(need, 0.0) * self._period - now, 1e-6)
        need = 1.0 - (self._amount - self._current - 1) / self._previous
        return max(self._start + need * self._period - now, 1e-6)

    def commit(self, now: float) -> None:  # noqa: ARG002 - same signature as the other windows
        self._current += 1
        self.expires = self._start + 2 * self._period

    def admit(self, now: float) -> float:
        # check() and commit() fused: the common single-limit case pays one call.
        if now - self._start >= self._period:
            self._roll(now)
        current = self._current
        if self._previous * (1.0 - (now - self._start) / self._period) + current + 1 <= self._amount:
            self._current = current + 1
            self.expires = self._start + 2 * self._period
            return 0.0
        return self.check(now)


class MovingWindow(Window):
    """Exact: the timestamps of admitted calls within the last period."""

    __slots__ = ("_times",)

    def __init__(self, amount: int, period: float) -> None:
        super().__init__(amount, period)
        self._times: deque[float] = deque()

    def check(self, now: float) -> float:
        times = self._times
        horizon = now - self._period
        while times and times[0] <= horizon:
            times.popleft()
        if len(times) < self._amount:
            return 0.0
        return times[0] + self._period - now

    def commit(self, now: float) -> None:
        self._times.append(now)
        self.expires = now + self._period

    def admit(self, now: float) -> float:
        # check() and commit() fused: the default algorithm's single-limit case is one call.
        times = self._times
        period = self._period
        horizon = now - period
        while times and times[0] <= horizon:
            times.popleft()
        if len(times) < self._amount:
            times.append(now)
            self.expires = now + period
            return 0.0
        return times[0] + period - now

    def state(self, now: float) -> tuple[int, float]:
        horizon = now - self._period
        live = [stamp for stamp in self._times if stamp > horizon]
        return max(self._amount - len(live), 0), (live[0] + self._period - now) if live else 0.0


WINDOWS: dict[str, type[Window]] = {
    "fixed-window": FixedWindow,
    "sliding-window": SlidingWindow,
    "moving-window": MovingWindow,
}
