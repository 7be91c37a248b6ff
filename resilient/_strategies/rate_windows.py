"""The three in-process rate-limit algorithms: one limit item's state for one key.

`LimiterRuntime` (`_ratelimit`) keeps one window per limit item and key, under its lock;
the windows themselves do no locking. Each answers `admit(now)` with 0.0 (admitted) or
the seconds until a slot may free up, with O(1) work (the moving window's `state` is O(log amount)).
"""

from __future__ import annotations

import math
from array import array
from bisect import bisect_right

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
    """Two-window counter: O(1) memory, an estimate of the calls in the last period.

    The previous aligned window's count is taken as spread evenly between that window's
    start and its last admitted call (not its end, as the classic weighted counter does): a
    call older than one period never counts, so a rejected caller is admitted within one
    period (the classic estimate made a steady ``"1/minute"`` wait up to two minutes).
    """

    __slots__ = ("_current", "_last", "_previous", "_previous_last", "_start")

    def __init__(self, amount: int, period: float) -> None:
        super().__init__(amount, period)
        self._start = 0.0
        self._current = 0
        self._previous = 0
        self._last = 0.0  # the last admission in the current window
        self._previous_last = 0.0  # ... and in the previous one

    def _weight(self, now: float, start: float, last: float) -> float:
        """Share of the previous window's calls (between `start` - period and `last`) still within a period."""
        horizon = now - self._period
        if last <= horizon:
            return 0.0
        span = last - (start - self._period)
        return 1.0 if span <= 0 else min((last - horizon) / span, 1.0)

    def state(self, now: float) -> tuple[int, float]:
        start, previous, current, last = self._start, self._previous, self._current, self._previous_last
        elapsed = now - start
        if elapsed >= self._period:
            windows = int(elapsed // self._period)
            previous, last = (current, self._last) if windows == 1 else (0, 0.0)
            current, start = 0, start + windows * self._period
        used = previous * self._weight(now, start, last) + current if previous else current
        return max(self._amount - math.ceil(used), 0), start + self._period - now

    def _roll(self, now: float) -> None:
        elapsed = now - self._start
        if elapsed < self._period:
            return
        windows = int(elapsed // self._period)
        if windows == 1:
            self._previous, self._previous_last = self._current, self._last
        else:
            self._previous = 0
        self._current = 0
        self._start += windows * self._period

    def _used(self, now: float) -> float:
        previous = self._previous
        return previous * self._weight(now, self._start, self._previous_last) if previous else 0.0

    def check(self, now: float) -> float:
        self._roll(now)
        amount, period, current = self._amount, self._period, self._current
        if self._used(now) + current + 1 <= amount:
            return 0.0
        if current + 1 > amount:
            # Wait for the next window, then for this window's calls to age enough.
            share = (amount - 1) / current
            at = max(self._start + period, self._last + period - share * (self._last - self._start))
        else:
            share = (amount - current - 1) / self._previous
            last = self._previous_last
            at = last + period - share * (last - (self._start - period))
        return min(max(at - now, 1e-6), period)

    def commit(self, now: float) -> None:
        self._current += 1
        self._last = now
        self.expires = self._start + 2 * self._period

    def admit(self, now: float) -> float:
        # check() and commit() fused: the common single-limit case pays one call.
        if now - self._start >= self._period:
            self._roll(now)
        current = self._current
        if self._used(now) + current + 1 <= self._amount:
            self._current = current + 1
            self._last = now
            self.expires = self._start + 2 * self._period
            return 0.0
        return self.check(now)


class MovingWindow(Window):
    """Exact: the last `amount` admissions, in a ring of 8-byte timestamps.

    A call is admitted iff the `amount`-th most recent admission is older than one period,
    so a ring of the last `amount` timestamps decides it in O(1) (not amortised: nothing is
    popped). The ring grows only with admissions (a key seen once holds one timestamp).
    """

    __slots__ = ("_next", "_times")

    def __init__(self, amount: int, period: float) -> None:
        super().__init__(amount, period)
        self._times = array("d")
        self._next = 0  # once the ring is full: the index of the oldest timestamp

    def check(self, now: float) -> float:
        times = self._times
        if len(times) < self._amount:
            return 0.0
        oldest = times[self._next]
        return 0.0 if oldest <= now - self._period else oldest + self._period - now

    def commit(self, now: float) -> None:
        times = self._times
        if len(times) < self._amount:
            times.append(now)
        else:
            times[self._next] = now
            self._next = (self._next + 1) % self._amount
        self.expires = now + self._period

    def admit(self, now: float) -> float:
        # check() and commit() fused: the default algorithm's single-limit case is one call.
        times = self._times
        period = self._period
        if len(times) < self._amount:
            times.append(now)
        else:
            index = self._next
            oldest = times[index]
            if oldest > now - period:
                return oldest + period - now
            times[index] = now
            self._next = (index + 1) % self._amount
        self.expires = now + period
        return 0.0

    def state(self, now: float) -> tuple[int, float]:
        times, split, horizon = self._times, self._next, now - self._period
        # Oldest first: times[split:] then times[:split], each sorted (the clock is monotonic).
        older = len(times) - bisect_right(times, horizon, split)
        newer = split - bisect_right(times, horizon, 0, split)
        live = older + newer
        if not live:
            return self._amount, 0.0
        first = times[len(times) - older] if older else times[split - newer]
        return max(self._amount - live, 0), first + self._period - now


WINDOWS: dict[str, type[Window]] = {
    "fixed-window": FixedWindow,
    "sliding-window": SlidingWindow,
    "moving-window": MovingWindow,
}
