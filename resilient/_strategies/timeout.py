"""Timeout: a total deadline over all attempts and backoff, and a per-attempt limit.

Async: real cancellation (`asyncio.timeout_at`). Sync, by default ("cooperative"): no
thread is started and nothing is interrupted; the deadline is published in a context
variable so nested `@resilient` calls, `resilient.httpx` transports and your own code
(`resilient.deadline.remaining()`) clamp their waits to it, no new attempt starts and no
backoff sleeps past it. Sync "thread" mode runs each attempt in a bounded pool of daemon
worker threads and returns at the deadline; the abandoned attempt runs on to completion
in its thread (Python cannot kill a thread), and at most `max_threads` such threads
exist per policy, so a permanently hung dependency holds at most that many threads; an
attempt still queued when its caller gives up leaves the queue and never runs.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import math
import threading
import time
import weakref
from collections import deque
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

__all__ = ["EVENT_EXCEEDED", "LAYER", "AttemptAbandoned", "ThreadRunner", "Timeout", "TimeoutPolicy"]

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


class AttemptAbandoned(Exception):  # noqa: N818 - not an error of the call: the caller stopped waiting
    """`ThreadRunner.run` gave up waiting. Not a `TimeoutError`, so one the function raises keeps its identity."""


class ThreadRunner:
    """A bounded pool of daemon threads that runs sync attempts under a time limit.

    Daemon threads so a hung attempt never blocks interpreter exit (ThreadPoolExecutor's
    workers are joined at exit). Workers are started on demand, up to `max_threads`: a job
    queued while there are no more idle workers than jobs waiting starts one, so callers
    arriving together each get a worker. A caller that finds every worker busy waits in the
    queue, within its own time limit; when that passes, its job leaves the queue (with its
    arguments) and never runs. A job already running when its caller gives up runs on; what
    it returns then goes to `on_late` (if set), so that a resource in it can be released.
    """

    def __init__(self, max_threads: int, on_late: Callable[[object], None] | None = None) -> None:
        self._max = max_threads
        #: Called in the worker with what an abandoned job returned, or the exception it raised.
        self.on_late = on_late
        self._lock = threading.Lock()
        self._work_ready = threading.Condition(self._lock)
        self._queue: deque[_Job] = deque()
        self._threads = 0
        self._idle = 0

    @property
    def threads(self) -> int:
        """Worker threads alive now (never more than `max_threads`)."""
        return self._threads

    @property
    def backlog(self) -> int:
        """Jobs waiting for a worker now: only those whose callers are still waiting."""
        return len(self._queue)

    def run(self, fn: Callable[[], T], timeout: float) -> T:
        """Run `fn` in a worker with the caller's context; raise `AttemptAbandoned` past `timeout`."""
        job = _Job(fn, contextvars.copy_context())
        self._submit(job)
        try:
            finished = job.finished.acquire(timeout=max(timeout, 0.0))
        except BaseException:  # interrupted while waiting (KeyboardInterrupt): the caller left
            if not self._abandon(job) and self.on_late is not None:  # done meanwhile: nobody reads it
                _discard(self.on_late, job.error if job.error is not None else job.result)
            raise
        if not finished and self._abandon(job):
            raise AttemptAbandoned
        return job.outcome()  # type: ignore[no-any-return]

    def _submit(self, job: _Job) -> None:
        with self._lock:
            self._queue.append(job)
            if self._idle:
                self._work_ready.notify()
            # Idle workers may not have woken yet to take the jobs queued before this one:
            # one more worker unless enough of them are waiting for every queued job.
            start = len(self._queue) > self._idle and self._threads < self._max
            if start:
                self._threads += 1
        if start:
            self._start_worker(job)

    def _start_worker(self, job: _Job) -> None:
        try:
            threading.Thread(target=self._work, name="resilient-timeout", daemon=True).start()
        except BaseException:  # no thread to be had (RuntimeError: can't start new thread)
            with self._lock:
                self._threads -= 1
                if job.state is _QUEUED:
                    self._queue.remove(job)
            raise

    def _abandon(self, job: _Job) -> bool:
        """The caller gives up on `job`: False if it finished meanwhile (its outcome stands)."""
        with self._lock:
            if job.state is _DONE:
                return False
            if job.state is _QUEUED:  # it never starts, and nothing keeps its arguments
                self._queue.remove(job)
                job.fn = job.context = None
            job.state = _ABANDONED
            return True

    def _work(self) -> None:
        while True:
            job = self._next_job()
            self._run(job)
            del job  # an idle worker keeps nothing of the last job

    def _next_job(self) -> _Job:
        with self._lock:
            while not self._queue:
                self._idle += 1
                try:
                    self._work_ready.wait()
                finally:
                    self._idle -= 1
            job = self._queue.popleft()
            job.state = _RUNNING
            return job

    def _run(self, job: _Job) -> None:
        # Handed straight on: an error's traceback holds `_call`'s frame and so this one,
        # which must not keep the error in a local (a reference cycle per failed call).
        self._finish(job, *_call(job.context, job.fn))  # type: ignore[arg-type]

    def _finish(self, job: _Job, result: object, error: BaseException | None) -> None:
        with self._lock:
            job.fn = job.context = None
            late = job.state is _ABANDONED
            if not late:
                job.state = _DONE
                job.result, job.error = result, error
        if not late:
            job.finished.release()
            return
        on_late = self.on_late
        if on_late is not None:
            _discard(on_late, error if error is not None else result)


_QUEUED, _RUNNING, _DONE, _ABANDONED = "queued", "running", "done", "abandoned"


class _Job:
    """One attempt handed to the pool; `state` changes under the runner's lock only."""

    __slots__ = ("context", "error", "finished", "fn", "result", "state")

    def __init__(self, fn: Callable[[], Any], context: contextvars.Context) -> None:
        self.fn: Callable[[], Any] | None = fn
        self.context: contextvars.Context | None = context
        self.state = _QUEUED
        self.result: Any = None
        self.error: BaseException | None = None
        #: Held until the job is done: the caller waits on it (a bare lock is the cheapest wait).
        self.finished = threading.Lock()
        self.finished.acquire()

    def outcome(self) -> Any:
        """The result, or raise the error (handed over once: neither the job nor this frame keeps it)."""
        error, self.error = self.error, None
        if error is None:
            return self.result
        try:
            raise error
        finally:
            del error  # the traceback holds this frame: no cycle through the local


def _discard(on_late: Callable[[object], None], outcome: object) -> None:
    """Hand what an abandoned job produced to `on_late`; a failure there is logged, the worker lives on."""
    try:
        on_late(outcome)
    except Exception:
        logging.getLogger("resilient.timeout").exception("discarding a late result with %r failed", on_late)


def _call(context: contextvars.Context, fn: Callable[[], Any]) -> tuple[Any, BaseException | None]:
    """`fn()` in `context`: (result, None) or (None, the exception), without a job in the frame."""
    try:
        return context.run(fn), None
    except BaseException as exc:  # every outcome goes back to the caller, as Future.set_exception does
        return None, exc


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
