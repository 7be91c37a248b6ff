"""The ASGI middleware's per-request limits on one event loop: the in-flight gate and the deadline timer.

Both live on the event loop, not behind locks: an ASGI app serves its requests from one
loop, so a counter and a set are enough (neither is meant to be shared by loops running in
several threads at once).
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any, Final

from resilient import deadline
from resilient._strategies.timeout import watchdog_for

__all__ = ["NO_TIMER", "AsyncGate", "NoTimer", "RequestTimer"]


class AsyncGate:
    """The in-flight limit of one plan: a slot count, waited on for at most `wait` seconds.

    A counter rather than an `asyncio.Semaphore`: the event loop runs one task at a time,
    so taking a free slot needs no lock and no coroutine (the semaphore's `acquire` is
    one, about 1 µs a request). Waiters, when `wait` allows them, queue in FIFO order and
    are handed the slot of the request that finishes.
    """

    __slots__ = ("_free", "_wait", "_waiters")

    def __init__(self, size: int, wait: float) -> None:
        self._free = size
        self._wait = wait
        self._waiters: deque[asyncio.Future[None]] = deque()

    def try_acquire(self) -> bool:
        """Take a free slot now, if there is one nobody is queued for."""
        if self._free > 0 and not self._waiters:
            self._free -= 1
            return True
        return False

    async def acquire_waiting(self) -> bool:
        """Queue for a slot: True when one was handed over within `wait` seconds (if any)."""
        if self._wait <= 0:
            return False
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(self._wait):
                await waiter
        except TimeoutError:
            # The slot may have been handed over just as the wait ran out: it is ours then.
            return waiter.done() and not waiter.cancelled()
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.release()  # handed over, but we are cancelled: pass it on
            raise
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
        return True

    def release(self) -> None:
        """Give the slot back: to the first live waiter, else to the free count."""
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._free += 1


class RequestTimer:
    """The request deadline: `asyncio.timeout` semantics on the loop's shared deadline watchdog.

    `asyncio.timeout` costs several microseconds per request (a context manager, a timer
    handle, a reschedule); the core's `DeadlineWatchdog` keeps one timer per event loop, so
    arming is a set insertion. Same cancellation accounting: the task's cancel request is
    withdrawn (`uncancel`) when the watchdog fired, and only a cancellation it caused
    becomes a `TimeoutError`. The deadline is also published in `resilient.deadline` for
    the request's nested calls, until `close`.
    """

    # `task`, `when` and `fired` make the timer its own `_timeout.Watch`: the watchdog keeps
    # it, not a separate object per request.
    __slots__ = ("_armed", "_cancelling", "_settled", "_token", "_watchdog", "fired", "task", "when")

    def __init__(self, task: asyncio.Task[Any], instant: float, now: float) -> None:
        self.task = task
        self.fired = False
        self._cancelling = task.cancelling()
        self._settled = False
        loop = task.get_loop()
        watchdog = self._watchdog = watchdog_for(loop)
        # `instant` is on `time.monotonic`, which is the clock of asyncio's own loops.
        self.when = instant if watchdog.on_monotonic_clock else loop.time() + (instant - now)
        watchdog.add(self)
        self._armed = True
        self._token = deadline._DEADLINE.set(instant)

    @property
    def expired(self) -> bool:
        """Whether the deadline passed (and the task was cancelled for it)."""
        return self.fired

    def stop(self) -> None:
        """Disarm the timer: the response is complete, or the app returned."""
        if self._armed:  # a flag test is cheaper than a second call into the watchdog
            self._armed = False
            self._watchdog.disarm(self)

    def settle(self) -> bool:
        """After the app: withdraw our cancel request; True when it is what stopped the app."""
        if not self.fired or self._settled:
            return False
        self._settled = True
        return self.task.uncancel() <= self._cancelling

    def close(self) -> None:
        """The app returned: disarm, withdraw a cancellation the app swallowed, restore the deadline."""
        if self._armed:  # else the response completed and `stop` ran already
            self._armed = False
            self._watchdog.disarm(self)
        if self.fired:
            self.settle()
        deadline._DEADLINE.reset(self._token)


class NoTimer:
    """`RequestTimer` for a request without a deadline: nothing to settle or close."""

    __slots__ = ()

    def settle(self) -> bool:
        return False

    def close(self) -> None:
        pass


NO_TIMER: Final = NoTimer()
