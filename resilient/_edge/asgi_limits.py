"""The ASGI middleware's per-request limits on one event loop: the in-flight gate and the deadline timer.

Both live on the event loop, not behind locks: an ASGI app serves its requests from one
loop, so a counter and a set are enough (neither is meant to be shared by loops running in
several threads at once). Under trio (anyio's other backend) the gate waits on a
`trio.Event` and the deadline is a `trio.CancelScope` (`TrioRequestTimer`); asyncio,
looked for first, keeps its futures and the shared watchdog.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from typing import Any, Final

from resilient import deadline
from resilient._kernel.aio import TrioEvent, current_trio
from resilient._strategies.timeout import watchdog_for

__all__ = ["NO_TIMER", "AsyncGate", "NoTimer", "RequestTimer", "TrioRequestTimer"]


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
        self._waiters: deque[asyncio.Future[None] | TrioEvent] = deque()

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
        try:
            waiter = asyncio.get_running_loop().create_future()
        except RuntimeError:  # no asyncio loop: trio
            return await self._acquire_waiting_trio()
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

    async def _acquire_waiting_trio(self) -> bool:
        """`acquire_waiting` for a trio task (a `trio.Event` in place of the future)."""
        waiter = TrioEvent()
        self._waiters.append(waiter)
        try:
            return await waiter.wait(self._wait)
        except BaseException:
            if waiter.done():
                self.release()  # handed over, but we are cancelled: pass it on
            raise
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

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

    def settle(self, error: BaseException | None = None) -> bool:
        """After the app (which raised `error`, if given): withdraw our cancel request.

        True when it is what stopped the app: the app was cancelled, by us.
        """
        if not self.fired or self._settled or (error is not None and not isinstance(error, asyncio.CancelledError)):
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


class TrioRequestTimer:
    """`RequestTimer` for a trio task: a `trio.CancelScope` entered here and left after the app.

    The scope is entered when the timer starts and left by `settle` (with the exception
    the app raised, so the scope tells its own cancellation from anyone else's) or by
    `close`; the middleware starts and ends it around the app in the same task, so
    scopes nest as trio requires.
    """

    __slots__ = ("_open", "_scope", "_token")

    def __init__(self, instant: float, now: float) -> None:
        trio = current_trio()
        self._scope = trio.CancelScope(deadline=trio.current_time() + (instant - now))
        self._scope.__enter__()
        self._open = True
        self._token = deadline._DEADLINE.set(instant)

    @property
    def expired(self) -> bool:
        """Whether the deadline passed (and the scope was cancelled for it)."""
        return bool(self._scope.cancel_called)

    def stop(self) -> None:
        """Disarm the timer: the response is complete (background tasks run on unbounded)."""
        self._scope.deadline = math.inf

    def settle(self, error: BaseException | None = None) -> bool:
        """After the app raised `error`: leave the scope; True when its deadline stopped the app."""
        if not self._open or error is None:
            return False
        self._open = False
        return bool(self._scope.__exit__(type(error), error, error.__traceback__))

    def close(self) -> None:
        """The app returned (or `settle` ran): leave the scope, restore the deadline."""
        if self._open:
            self._open = False
            self._scope.__exit__(None, None, None)
        deadline._DEADLINE.reset(self._token)


class NoTimer:
    """`RequestTimer` for a request without a deadline: nothing to settle or close."""

    __slots__ = ()

    def settle(self, error: BaseException | None = None) -> bool:  # noqa: ARG002 - the timers' signature
        return False

    def close(self) -> None:
        pass


NO_TIMER: Final = NoTimer()
