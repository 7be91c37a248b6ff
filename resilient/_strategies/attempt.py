"""One attempt: the breaker's admission, the per-attempt timeout, attempt timing.

The innermost layer (`LAYER`, row "attempt" of the engine's table): it calls the function
itself. The retry layer calls it once per attempt (without retry, the layer before it
does). `now` is the clock reading handed down, `None` when it must be read again. When the
attempt layer would only pass a failure on to a quiet breaker, the retry layer skips it
(its `Link.skippable`) and calls `bounded_sync` / `bounded_async` (or the function) itself.

An attempt is bounded by the tighter of the attempt timeout and the deadline in force; the
bound is published in the deadline context variable while the attempt runs, so calls made
inside it clamp to it. The timeout layer (`timeout.LAYER`) compiles the bounds this module
reads (`attempt_timeout`, `runner`, `bounded_sync`, `bounded_async`); this layer compiles
the breaker (joined by name through `breaker_registry`).
"""

from __future__ import annotations

import asyncio
import logging
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol

from resilient._kernel.aio import trio_bounded
from resilient._kernel.clock import CLOCK
from resilient._kernel.errors import DeadlineExceededError
from resilient._kernel.layer import AFn, Args, Fn, Kwargs, Layer, Link, Now, Obs
from resilient._strategies.breaker import CLOSED
from resilient._strategies.breaker_registry import breaker_for
from resilient._strategies.timeout import EVENT_EXCEEDED, AttemptAbandoned, TimeoutPolicy, watchdog_for
from resilient.deadline import _DEADLINE
from resilient.instrumentation._hub import HUB

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping
    from contextvars import Token

    from resilient._strategies.breaker import BreakerRuntime

__all__ = [
    "LAYER",
    "AttemptPolicy",
    "attempt_async",
    "attempt_async_shared",
    "attempt_sync",
    "bounded_async",
    "bounded_sync",
]

#: The deadline variable's methods, bound once: Python 3.11 calls a method of an imported
#: name through a new bound method object each time.
_current_deadline = _DEADLINE.get
_set_deadline = _DEADLINE.set
_reset_deadline = _DEADLINE.reset


class AttemptPolicy(TimeoutPolicy, Protocol):
    """What one attempt reads of the compiled policy: the attempt bounds and the breaker."""

    breaker: BreakerRuntime | None


def attempt_sync(cp: AttemptPolicy, label: str, fn: Fn, args: Args, kwargs: Kwargs, obs: Obs, now: Now = None) -> Any:
    breaker = cp.breaker
    if breaker is None and obs is None and not cp.bounded_sync:
        return fn(*args, **kwargs)
    # A closed in-process breaker admits without a call; a shared one always asks Redis.
    probe = breaker.acquire(label) if breaker is not None and (breaker.shared or breaker.state is not CLOSED) else False
    timed = obs is not None or (breaker is not None and breaker.timed)
    start = _attempt_start(breaker, now) if timed else 0.0
    try:
        result = bounded_sync(cp, label, fn, args, kwargs) if cp.bounded_sync else fn(*args, **kwargs)
    except BaseException as error:
        _failed(breaker, obs, probe, start, error, label)
        raise
    if timed or probe or (breaker is not None and breaker.reports_success):  # else nothing to record
        _succeeded(breaker, obs, probe, start if timed else None, label)
    return result


async def attempt_async(
    cp: AttemptPolicy, label: str, fn: AFn, args: Args, kwargs: Kwargs, obs: Obs, now: Now = None
) -> Any:
    breaker = cp.breaker
    if breaker is None and obs is None and not cp.bounded_async:
        return await fn(*args, **kwargs)
    # A closed in-process breaker admits without a call; a shared one always asks Redis.
    probe = breaker.acquire(label) if breaker is not None and (breaker.shared or breaker.state is not CLOSED) else False
    timed = obs is not None or (breaker is not None and breaker.timed)
    start = _attempt_start(breaker, now) if timed else 0.0
    try:
        if cp.bounded_async:
            result = await bounded_async(cp, label, fn, args, kwargs)
        else:
            result = await fn(*args, **kwargs)
    except BaseException as error:
        _failed(breaker, obs, probe, start, error, label)
        raise
    if timed or probe or (breaker is not None and breaker.reports_success):  # else nothing to record
        _succeeded(breaker, obs, probe, start if timed else None, label)
    return result


async def attempt_async_shared(
    cp: AttemptPolicy,
    label: str,
    fn: AFn,
    args: Args,
    kwargs: Kwargs,
    obs: Obs,
    now: Now = None,  # noqa: ARG001 - stale after the Redis round trip below
) -> Any:
    """`attempt_async` for a breaker kept in Redis: its decisions are awaited (redis.asyncio)."""
    breaker: BreakerRuntime = cp.breaker  # type: ignore[assignment]
    probe = await breaker.aacquire(label)  # always: another process may have opened it
    timed = obs is not None or breaker.timed
    start = CLOCK.monotonic() if timed else 0.0
    try:
        if cp.bounded_async:
            result = await bounded_async(cp, label, fn, args, kwargs)
        else:
            result = await fn(*args, **kwargs)
    except Exception as error:
        if obs is not None:
            obs.attempt_finished(CLOCK.monotonic() - start, ok=False)
        await breaker.aon_failure(error, probe=probe, label=label)
        raise
    except BaseException:
        await breaker.aon_abandon(probe)
        raise
    duration = CLOCK.monotonic() - start if timed else 0.0
    if obs is not None:
        obs.attempt_finished(duration, ok=True)
    if probe or breaker.reports_success:
        await breaker.aon_success(probe=probe, duration=duration, label=label)
    return result


def _failed(
    breaker: BreakerRuntime | None, obs: Obs, probe: bool, start: float, error: BaseException, label: str
) -> None:
    """Report an attempt that raised: a failure (an Exception), else abandoned (cancelled, interrupted)."""
    if not isinstance(error, Exception):
        if breaker is not None:
            breaker.on_abandon(probe)
        return
    if obs is not None:
        obs.attempt_finished(CLOCK.monotonic() - start, ok=False)
    if breaker is not None:
        breaker.on_failure(error, probe=probe, label=label)


def _succeeded(breaker: BreakerRuntime | None, obs: Obs, probe: bool, start: float | None, label: str) -> None:
    """Report an attempt that returned (`start`: None when nothing timed it)."""
    duration = CLOCK.monotonic() - start if start is not None else 0.0
    if obs is not None:
        obs.attempt_finished(duration, ok=True)
    if breaker is not None and (probe or breaker.reports_success):
        breaker.on_success(probe=probe, duration=duration, label=label)


def _attempt_start(breaker: BreakerRuntime | None, now: float | None) -> float:
    """The attempt's start: the reading handed down, unless a Redis round trip made it stale."""
    if now is None or (breaker is not None and breaker.shared):
        return CLOCK.monotonic()
    return now


def _attempt_end(cp: AttemptPolicy, deadline: float | None, now: float) -> float | None:
    """The instant the attempt must end by: the tighter of its own timeout and the deadline."""
    limit = cp.attempt_timeout
    if limit is None:
        return deadline
    own = now + limit
    return deadline if deadline is not None and deadline <= own else own


def _exceeded_limit(cp: AttemptPolicy, deadline: float | None, end: float, now: float) -> tuple[str, float]:
    """Which limit `end` is (scope) and that limit in seconds; worked out only once it is exceeded."""
    if end is deadline:  # the deadline won (`_attempt_end` hands back that very object)
        return ("total" if cp.total_timeout is not None else "inherited"), cp.total_timeout or max(end - now, 0.0)
    return "attempt", cp.attempt_timeout or 0.0


def bounded_sync(cp: AttemptPolicy, label: str, fn: Callable[..., Any], args: Args, kwargs: Kwargs) -> Any:
    """Call `fn` within the attempt's bound: cooperative, or in the thread runner."""
    deadline = _current_deadline()
    now = CLOCK.monotonic()
    end = _attempt_end(cp, deadline, now)
    if end is None:
        return fn(*args, **kwargs)
    token = _set_deadline(end) if end is not deadline else None
    try:
        if cp.runner is None:
            result = fn(*args, **kwargs)
            if CLOCK.monotonic() > end:  # cooperative: report the overrun, keep the result
                scope, seconds = _exceeded_limit(cp, deadline, end, now)
                HUB.emit(EVENT_EXCEEDED, label, logging.WARNING, scope=scope, timeout=seconds, interrupted=False)
            return result
        remaining = end - CLOCK.monotonic()
        if remaining <= 0:
            raise _exceeded(cp, label, deadline, end, now)
        try:
            return cp.runner.run(partial(fn, *args, **kwargs), remaining)
        except AttemptAbandoned:  # the function's own TimeoutError passes through
            raise _exceeded(cp, label, deadline, end, now) from None
    finally:
        if token is not None:
            _reset_deadline(token)


async def bounded_async(
    cp: AttemptPolicy,
    label: str,
    fn: Callable[..., Awaitable[Any]],
    args: Args,
    kwargs: Kwargs,
) -> Any:
    """Await `fn` within the attempt's bound: the task is cancelled when it runs out."""
    deadline = _current_deadline()
    now = CLOCK.monotonic()
    end = _attempt_end(cp, deadline, now)
    if end is None:
        return await fn(*args, **kwargs)
    remaining = end - now
    if remaining <= 0:
        raise _exceeded(cp, label, deadline, end, now)
    token = _set_deadline(end) if end is not deadline else None
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # no asyncio loop: a trio task (or none, which `trio_bounded` reports)
        return await _bounded_trio(cp, label, fn, args, kwargs, (deadline, end, now), token)
    # asyncio.timeout() semantics (cancel the task; tell our cancellation from anyone
    # else's by the task's cancel count), armed on the loop's shared watchdog.
    task = asyncio.current_task(loop)  # given the loop: Python 3.11's current_task would look it up again
    if task is None:  # not inside a task (a bare coroutine driven by hand): no cancellation
        return await fn(*args, **kwargs)
    cancelling = task.cancelling()
    watchdog = watchdog_for(loop)
    watch = watchdog.arm(task, loop.time() + remaining)
    try:
        return await fn(*args, **kwargs)
    except asyncio.CancelledError:
        if watch.fired:
            watch.fired = False
            if task.uncancel() <= cancelling:
                raise _exceeded(cp, label, deadline, end, now) from None
        raise
    finally:
        watchdog.disarm(watch)
        if watch.fired:  # we cancelled, but the call swallowed it: withdraw our cancel request
            task.uncancel()
        if token is not None:
            _reset_deadline(token)


async def _bounded_trio(
    cp: AttemptPolicy,
    label: str,
    fn: Callable[..., Awaitable[Any]],
    args: Args,
    kwargs: Kwargs,
    bound: tuple[float | None, float, float],
    token: Token[float | None] | None,
) -> Any:
    """`bounded_async` on trio: the attempt runs in a cancel scope that ends at its bound."""
    deadline, end, now = bound
    try:
        expired, result = await trio_bounded(end - now, fn, args, kwargs)
    finally:
        if token is not None:
            _reset_deadline(token)
    if expired:
        raise _exceeded(cp, label, deadline, end, now)
    return result


def _exceeded(cp: AttemptPolicy, label: str, deadline: float | None, end: float, now: float) -> DeadlineExceededError:
    """Report the attempt's bound as exceeded (`interrupted`) and build the error naming it."""
    scope, seconds = _exceeded_limit(cp, deadline, end, now)
    HUB.emit(EVENT_EXCEEDED, label, logging.WARNING, scope=scope, timeout=seconds, interrupted=True)
    return DeadlineExceededError(seconds, scope=scope, policy=label)


def _compile(cp: AttemptPolicy, options: Mapping[str, Any]) -> None:
    config = options.get("breaker")
    cp.breaker = breaker_for(config) if config is not None else None


def _link(cp: AttemptPolicy, _inner: Link) -> Link:
    """Always present (it calls the function); a breaker kept in Redis is awaited on the async side."""
    shared = cp.breaker is not None and cp.breaker.shared
    return Link(attempt_sync, attempt_async_shared if shared else attempt_async, skippable=True)


LAYER = Layer("attempt", _link, _compile)
