"""Timeout: a total deadline over all attempts and backoff, and a per-attempt limit.

Async: real cancellation (`asyncio.timeout_at`). Sync, by default ("cooperative"): no
thread is started and nothing is interrupted; the deadline is published in a context
variable so nested `@resilient` calls, `resilient.httpx` transports and your own code
(`resilient.deadline.remaining()`) clamp their waits to it, no new attempt starts and no
backoff sleeps past it. Sync "thread" mode runs each attempt in a bounded pool of daemon
worker threads and returns at the deadline; the abandoned attempt runs on to completion
in its thread (Python cannot kill a thread), and at most `max_threads` such threads
exist per policy, so a permanently hung dependency holds at most that many threads.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import math
import queue
import threading
import time
import weakref
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar

from resilient._kernel.clock import CLOCK
from resilient._kernel.layer import Layer, Link
from resilient._kernel.validate import check_int, check_seconds
from resilient.deadline import _DEADLINE
from resilient.instrumentation._hub import HUB

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from datetime import timedelta

    from resilient._kernel.layer import AFn, Args, Fn, Kwargs, Now, Obs

__all__ = ["EVENT_EXCEEDED", "LAYER", "ThreadRunner", "Timeout", "TimeoutPolicy"]

T = TypeVar("T")

DEFAULT_MAX_THREADS = 32
EVENT_EXCEEDED = "timeout.exceeded"

SyncMode = Literal["cooperative", "thread"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Timeout:
    """Time limits of a call. `total` covers every attempt and backoff; `attempt` one try.

    `sync_mode` chooses how a *sync* function is limited: ``"cooperative"`` (default: the
    deadline is published and honoured at every boundary the library controls, the
    function itself is not interrupted) or ``"thread"`` (the attempt runs in a worker
    thread and the caller gets `DeadlineExceededError` at the deadline; at most
    `max_threads` workers per policy). Async functions are always cancelled for real.
    """

    total: float | timedelta | None = None
    attempt: float | timedelta | None = None
    sync_mode: SyncMode = "cooperative"
    max_threads: int = DEFAULT_MAX_THREADS

    def __post_init__(self) -> None:
        if self.total is None and self.attempt is None:
            raise ValueError("Timeout needs timeout.total or timeout.attempt (seconds > 0), got neither")
        if self.total is not None:
            object.__setattr__(self, "total", check_seconds("timeout.total", self.total))
        if self.attempt is not None:
            object.__setattr__(self, "attempt", check_seconds("timeout.attempt", self.attempt))
        if self.sync_mode not in ("cooperative", "thread"):
            raise ValueError(f"timeout.sync_mode must be 'cooperative' or 'thread', got {self.sync_mode!r}")
        check_int("timeout.max_threads", self.max_threads, minimum=1)


Timeout.__module__ = "resilient"


class ThreadRunner:
    """A bounded pool of daemon threads that runs sync attempts under a time limit.

    Daemon threads so a hung attempt never blocks interpreter exit (ThreadPoolExecutor's
    workers are joined at exit). Workers are started on demand up to `max_threads`; a call
    that finds every worker busy waits in the queue, within its own time limit.
    """

    def __init__(self, max_threads: int) -> None:
        self._max = max_threads
        self._work: queue.SimpleQueue[tuple[Future[Any], contextvars.Context, Callable[[], Any]]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads = 0
        self._idle = 0

    @property
    def threads(self) -> int:
        """Worker threads alive now (never more than `max_threads`)."""
        return self._threads

    def run(self, fn: Callable[[], T], timeout: float) -> T:
        """Run `fn` in a worker with the caller's context; raise FutureTimeout past `timeout`."""
        future: Future[T] = Future()
        self._work.put((future, contextvars.copy_context(), fn))
        self._ensure_worker()
        try:
            return future.result(timeout=max(timeout, 0.0))
        except FutureTimeout:
            future.cancel()  # not started yet: it never will be
            raise

    def _ensure_worker(self) -> None:
        with self._lock:
            if self._idle > 0 or self._threads >= self._max:
                return
            self._threads += 1
            self._idle += 1
        threading.Thread(target=self._worker, name="resilient-timeout", daemon=True).start()

    def _worker(self) -> None:
        while True:
            future, context, fn = self._work.get()
            with self._lock:
                self._idle -= 1
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(context.run(fn))
                except BaseException as exc:
                    future.set_exception(exc)
            with self._lock:
                self._idle += 1


class Watch(Protocol):
    """What the watchdog keeps per armed deadline: the task, its deadline, whether it fired."""

    task: asyncio.Task[Any]
    when: float
    fired: bool


class _Watch:
    """One armed deadline: the task to cancel and whether the watchdog fired for it."""

    __slots__ = ("fired", "task", "when")

    def __init__(self, task: asyncio.Task[Any], when: float) -> None:
        self.task = task
        self.when = when
        self.fired = False


class DeadlineWatchdog:
    """Cancels tasks whose deadline passed, for one event loop, with a single timer.

    `asyncio.timeout()` schedules a timer handle per call (about 3 µs on this machine,
    most of an async policy's cost). Here arming is a set insertion and disarming a set
    removal; one loop timer sits at the earliest deadline *known when it was set*. When it
    fires it cancels what is due and re-arms at the earliest deadline still in flight, so
    with the usual constant timeouts it fires about once per timeout period. The set holds
    only calls in flight, never finished ones, so memory follows concurrency, not traffic.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        #: Whether `loop.time()` is `time.monotonic()` (asyncio's own loops; uvloop keeps its
        #: own clock): then a deadline on `time.monotonic` needs no conversion to loop time.
        self.on_monotonic_clock = type(loop).time is asyncio.BaseEventLoop.time
        self._watches: set[Watch] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf

    def arm(self, task: asyncio.Task[Any], when: float) -> _Watch:
        """Cancel `task` at loop time `when` unless disarmed first."""
        # `add`'s two steps written out rather than called: this runs once per async call
        # under a timeout, and a Python call costs more than the two lines.
        watch = _Watch(task, when)
        self._watches.add(watch)
        if when < self._timer_at:
            self._schedule(when)
        return watch

    def add(self, watch: Watch) -> None:
        """`arm` for a watch the caller built (`_edge.asgi_limits.RequestTimer` is its own: one object
        fewer per request); `watch.fired` must be False."""
        self._watches.add(watch)
        if watch.when < self._timer_at:
            self._schedule(watch.when)

    def disarm(self, watch: Watch) -> None:
        """The call finished (or failed) before its deadline: forget it."""
        self._watches.discard(watch)

    def _schedule(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = when
        self._timer = self._loop.call_at(when, self._fire)

    def _fire(self) -> None:
        self._timer = None
        self._timer_at = math.inf
        due_by = self._loop.time() + _CLOCK_RESOLUTION
        earliest = math.inf
        for watch in list(self._watches):
            if watch.when <= due_by:
                self._watches.discard(watch)
                watch.fired = True
                watch.task.cancel()
            elif watch.when < earliest:
                earliest = watch.when
        if earliest < math.inf:
            self._schedule(earliest)


_CLOCK_RESOLUTION = time.get_clock_info("monotonic").resolution
_WATCHDOGS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, DeadlineWatchdog] = weakref.WeakKeyDictionary()
_LAST: tuple[asyncio.AbstractEventLoop | None, DeadlineWatchdog | None] = (None, None)


def watchdog_for(loop: asyncio.AbstractEventLoop) -> DeadlineWatchdog:
    """The watchdog of `loop` (one per loop; the last one used is cached in one tuple read)."""
    global _LAST  # noqa: PLW0603 - a one-entry cache; the tuple is replaced whole, never mutated
    last_loop, last_watchdog = _LAST
    if last_loop is loop and last_watchdog is not None:
        return last_watchdog
    watchdog = _WATCHDOGS.get(loop)
    if watchdog is None:
        watchdog = _WATCHDOGS[loop] = DeadlineWatchdog(loop)
    _LAST = (loop, watchdog)
    return watchdog


# ---------------------------------------------------------------- the layer: total timeout (deadline)

#: The deadline variable's methods, bound once: Python 3.11 calls a method of an imported
#: name through a new bound method object each time.
_current_deadline = _DEADLINE.get
_set_deadline = _DEADLINE.set
_reset_deadline = _DEADLINE.reset


class TimeoutPolicy(Protocol):
    """What the timeout compiles into the policy (the attempt layer reads the attempt bounds)."""

    total_timeout: float | None
    attempt_timeout: float | None
    runner: ThreadRunner | None
    bounded_sync: bool
    bounded_async: bool


def _compile(cp: TimeoutPolicy, options: Mapping[str, Any]) -> None:
    timeout: Timeout | None = options.get("timeout")
    cp.total_timeout = timeout.total if timeout else None  # type: ignore[assignment]
    cp.attempt_timeout = timeout.attempt if timeout else None  # type: ignore[assignment]
    cp.runner = ThreadRunner(timeout.max_threads) if timeout and timeout.sync_mode == "thread" else None
    # Sync attempts need the bounded path to publish a tighter per-attempt deadline or
    # to run in the thread pool; async attempts need it for any timeout (cancellation).
    cp.bounded_sync = timeout is not None and (cp.runner is not None or cp.attempt_timeout is not None)
    cp.bounded_async = timeout is not None


def _link(cp: TimeoutPolicy, inner: Link) -> Link | None:
    """The deadline layer: publishes started + total (clamped to an enclosing deadline)."""
    total = cp.total_timeout
    if total is None:
        return None
    runner = cp.runner
    after_sync, after_async = inner.sync, inner.async_

    def deadline_sync(
        cp: TimeoutPolicy, label: str, fn: Fn, args: Args, kwargs: Kwargs, obs: Obs, now: Now = None
    ) -> Any:
        started = CLOCK.monotonic() if now is None else now
        deadline = started + total
        inherited = _current_deadline()
        if inherited is not None and inherited < deadline:
            deadline = inherited
        token = _set_deadline(deadline)
        try:
            result = after_sync(cp, label, fn, args, kwargs, obs, started)
        finally:
            _reset_deadline(token)
        if runner is None and CLOCK.monotonic() > deadline:  # cooperative: late, but not discarded
            # Which deadline won, by identity of the value, not by arithmetic: in floats
            # (started + total) - started can come out a hair below total.
            scope = "inherited" if deadline is inherited else "total"
            HUB.emit(EVENT_EXCEEDED, label, logging.WARNING, scope=scope, timeout=total, interrupted=False)
        return result

    async def deadline_async(
        cp: TimeoutPolicy, label: str, fn: AFn, args: Args, kwargs: Kwargs, obs: Obs, now: Now = None
    ) -> Any:
        started = CLOCK.monotonic() if now is None else now
        own, inherited = started + total, _current_deadline()
        token = _set_deadline(inherited if inherited is not None and inherited < own else own)
        try:
            return await after_async(cp, label, fn, args, kwargs, obs, started)
        finally:
            _reset_deadline(token)

    return Link(deadline_sync, deadline_async)


LAYER = Layer("timeout", _link, _compile)
