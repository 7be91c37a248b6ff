"""Bulkhead: at most `max_concurrent` calls in flight, waiting callers bounded by `max_wait`.

One capacity is shared by sync and async callers of the same policy. Neither
`threading.Semaphore` (blocks the event loop) nor `asyncio.Semaphore` (bound to one loop,
not thread-safe) can do that, so this is a small hand-off semaphore: a list holding one
token per free slot, and a FIFO of waiters, each either a thread lock, an asyncio
future (woken with `call_soon_threadsafe`) or a trio event (woken with
`TrioToken.run_sync_soon`). A releasing caller whose slot a waiter needs
hands it straight to the oldest one, so waiters are served in order, and a new caller
does not take a free slot while anyone is queued.

The uncontended path takes no lock: `list.pop()` and `list.append()` are each one atomic
step under the GIL, so a slot is taken and given back in two C calls (a lock taken and
released twice cost about 2k instructions more per call). The lock guards only the
queue: a waiter joins it and then looks for a token, and a release puts its token back
and then looks for waiters, so one of the two always sees the other. Without a GIL
(a free-threaded build) that last look is made under the lock too: list operations stay
atomic there, but only the lock orders a release's look after its token is back.
"""

from __future__ import annotations

import asyncio
import logging
import sysconfig
import threading
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from resilient._kernel.aio import TrioWaiter
from resilient._kernel.clock import CLOCK
from resilient._kernel.errors import BulkheadFullError
from resilient._kernel.layer import Layer, Link
from resilient._kernel.validate import check_int, check_seconds
from resilient.deadline import _DEADLINE
from resilient.instrumentation._hub import HUB

if TYPE_CHECKING:
    from collections.abc import Mapping

    from resilient._kernel.layer import AFn, Args, Fn, Kwargs, Now, Obs

__all__ = ["EVENT_REJECTED", "LAYER", "Bulkhead", "BulkheadPolicy", "BulkheadRuntime"]

DEFAULT_MAX_WAIT = 0.0
EVENT_REJECTED = "bulkhead.rejected"

#: A free-threaded build: `release` looks for waiters under the lock (see the module docstring).
_NO_GIL = bool(sysconfig.get_config_var("Py_GIL_DISABLED"))


@dataclass(frozen=True, slots=True, kw_only=True)
class Bulkhead:
    """Bounded concurrency: `max_concurrent` calls run; others wait up to `max_wait` seconds."""

    max_concurrent: int
    max_wait: float = DEFAULT_MAX_WAIT

    def __post_init__(self) -> None:
        check_int("bulkhead.max_concurrent", self.max_concurrent, minimum=1)
        object.__setattr__(self, "max_wait", check_seconds("bulkhead.max_wait", self.max_wait, allow_zero=True))


Bulkhead.__module__ = "resilient"


class _ThreadWaiter:
    __slots__ = ("granted", "lock")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.lock.acquire()
        self.granted = False

    def wake(self) -> None:
        self.granted = True
        self.lock.release()


class _TaskWaiter:
    __slots__ = ("future", "granted", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.future: asyncio.Future[None] = loop.create_future()
        self.granted = False

    def wake(self) -> None:
        self.granted = True
        self.loop.call_soon_threadsafe(_resolve, self.future)

    async def wait(self, seconds: float) -> None:
        """Wait at most `seconds` for `wake`; a cancellation always raises, even after a hand-over.

        The future is awaited directly, neither shielded nor under `asyncio.wait_for`: on
        3.11 `wait_for` hands back an inner result that completed as the task was being
        cancelled (CPython gh-86296), so a cancelled waiter went on to run the call. Here a
        cancel either cancels the pending future or, once it is resolved, is thrown into
        the task when it resumes (`Task.cancel` on a done waiter): `CancelledError` either way.
        """
        timer = self.loop.call_later(seconds, _resolve, self.future)
        try:
            await self.future
        finally:
            timer.cancel()


def _new_task_waiter() -> _TaskWaiter | TrioWaiter:
    """A waiter for the running task: asyncio's (looked for first), else trio's."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return TrioWaiter()
    return _TaskWaiter(loop)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class BulkheadRuntime:
    """The compiled bulkhead of one policy."""

    __slots__ = ("_free", "_lock", "_waiters", "max_concurrent", "max_wait")

    def __init__(self, config: Bulkhead) -> None:
        self.max_concurrent = config.max_concurrent
        self.max_wait = config.max_wait
        #: One token per free slot (a slot handed to a waiter never comes back here).
        self._free: list[None] = [None] * config.max_concurrent
        self._lock = threading.Lock()  # guards `_waiters` and hand-overs, not the fast path
        self._waiters: deque[_ThreadWaiter | _TaskWaiter | TrioWaiter] = deque()

    @property
    def in_use(self) -> int:
        """Calls holding a slot now."""
        return self.max_concurrent - len(self._free)

    def try_acquire(self) -> bool:
        """Take a slot if one is free and nobody is queued before us."""
        if self._waiters:
            return False
        return self._take_token()

    def _take_token(self) -> bool:
        try:
            self._free.pop()
        except IndexError:
            return False
        return True

    def acquire_sync(self, wait: float, label: str) -> None:
        """Take a slot, waiting at most `wait` seconds, or raise `BulkheadFullError`."""
        if not self.wait_for_slot(wait):
            raise self._reject(label)

    def wait_for_slot(self, wait: float) -> bool:
        """Take a slot, blocking the thread at most `wait` seconds; False when none came.

        Emits nothing: a caller that answers the refusal itself (the WSGI middleware's 503)
        reports it in its own words.
        """
        if self.try_acquire():
            return True
        if wait > 0:
            waiter = _ThreadWaiter()
            if not self._enqueue(waiter) or waiter.lock.acquire(timeout=wait):
                return True
            return self._withdraw(waiter)
        return False

    async def acquire_async(self, wait: float, label: str) -> None:
        """Async twin of `acquire_sync`: the wait suspends the task, never the loop."""
        if self.try_acquire():
            return
        if wait > 0:
            waiter = _new_task_waiter()
            if not self._enqueue(waiter):
                return
            try:
                await waiter.wait(wait)
            except BaseException:  # cancelled (asyncio or trio): a slot handed to us goes back
                if self._withdraw(waiter):
                    self.release()
                raise
            if self._withdraw(waiter):
                return
        raise self._reject(label)

    def _enqueue(self, waiter: _ThreadWaiter | _TaskWaiter | TrioWaiter) -> bool:
        """Queue a waiter; False means a slot was free after all and is now ours."""
        with self._lock:
            # Join first, then look for a token: a release that put one back before we
            # joined is seen here; one that puts it back after sees us (`release`).
            self._waiters.append(waiter)
            if self._waiters[0] is waiter and self._take_token():
                self._waiters.popleft()
                return False
            return True

    def _withdraw(self, waiter: _ThreadWaiter | _TaskWaiter | TrioWaiter) -> bool:
        """Leave the queue; True if a slot was handed to us meanwhile (we now hold it)."""
        with self._lock:
            if waiter.granted:
                return True
            self._waiters.remove(waiter)
            self._hand_over_needs_lock()  # a token meant for us goes to the next in line
            return False

    def release(self) -> None:
        """Give the slot back; if anyone is queued, the oldest waiter gets it."""
        self._free.append(None)
        if self._waiters or _NO_GIL:
            with self._lock:
                self._hand_over_needs_lock()

    def _hand_over_needs_lock(self) -> None:
        """Give free tokens to the oldest waiters (the slot changes hands; in_use unchanged)."""
        while self._waiters and self._take_token():
            self._waiters.popleft().wake()

    def _reject(self, label: str) -> BulkheadFullError:
        HUB.emit(EVENT_REJECTED, label, logging.WARNING, max_concurrent=self.max_concurrent)
        return BulkheadFullError(self.max_concurrent, max_wait=self.max_wait, policy=label)


# ---------------------------------------------------------------- the layer: bulkhead

_current_deadline = _DEADLINE.get


class BulkheadPolicy(Protocol):
    """What the bulkhead compiles into the policy."""

    bulkhead: BulkheadRuntime | None


def _compile(cp: BulkheadPolicy, options: Mapping[str, Any]) -> None:
    config: Bulkhead | None = options.get("bulkhead")
    cp.bulkhead = BulkheadRuntime(config) if config else None


def _link(cp: BulkheadPolicy, inner: Link) -> Link | None:
    """Admission by concurrency: hold a slot for the rest of the call, or wait `max_wait` for one."""
    bulkhead = cp.bulkhead
    if bulkhead is None:
        return None
    after_sync, after_async = inner.sync, inner.async_

    def bulkhead_sync(
        cp: BulkheadPolicy, label: str, fn: Fn, args: Args, kwargs: Kwargs, obs: Obs, now: Now = None
    ) -> Any:
        if not bulkhead.try_acquire():
            bulkhead.acquire_sync(_clamp_wait(bulkhead.max_wait), label)
            now = None
        try:
            return after_sync(cp, label, fn, args, kwargs, obs, now)
        finally:
            bulkhead.release()

    async def bulkhead_async(
        cp: BulkheadPolicy, label: str, fn: AFn, args: Args, kwargs: Kwargs, obs: Obs, now: Now = None
    ) -> Any:
        if not bulkhead.try_acquire():
            await bulkhead.acquire_async(_clamp_wait(bulkhead.max_wait), label)
            now = None
        try:
            return await after_async(cp, label, fn, args, kwargs, obs, now)
        finally:
            bulkhead.release()

    return Link(bulkhead_sync, bulkhead_async)


def _clamp_wait(wait: float) -> float:
    deadline = _current_deadline()
    if deadline is None or wait <= 0:
        return wait
    return min(wait, max(deadline - CLOCK.monotonic(), 0.0))


LAYER = Layer("bulkhead", _link, _compile)
