"""The two drivers, sync and async, that run a compiled policy around one call.

Order, outer to inner: telemetry, fallback, rate limit, bulkhead, total timeout, retry
(+ budget), circuit breaker, attempt timeout, the function. Each layer is one function;
a layer the policy leaves out costs one `is None` test. Both drivers call the same
non-blocking decisions on the compiled strategies and differ only in `await`, the sleep,
the bulkhead wait and the timeout primitive. The outermost layer, telemetry and fallback,
is the decorated function's wrapper itself (`_wrapper.wrap_sync`, `wrap_async`); the
innermost, one attempt (circuit breaker, attempt timeout), is in `_attempt`.

Each layer has the same signature and hands over to the next *configured* layer through
a pointer chosen at compile time (`CompiledPolicy.sync_after_admit`, ...), so a layer the
policy leaves out costs nothing, not even a function call. The retry layer calls the
attempt layer unless that has nothing to do but hear of a failure (no attempt timeout, no
telemetry, a quiet breaker or none); the deadline is read from its context variable where
it is needed.

A layer that read the clock hands the reading on (`now`), so one call reads the clock
once where it would read it up to four times (rate limit, deadline, retry budget, attempt
timing): `None` means "read it yourself", and any wait in between resets it to `None`.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from resilient._engine.attempt import Args, Kwargs, attempt_sync, bounded_async, bounded_sync
from resilient._kernel.clock import CLOCK
from resilient._strategies.breaker import OPEN
from resilient._strategies.retry import RetryCall, RetryRuntime
from resilient._strategies.timeout import EVENT_EXCEEDED
from resilient.deadline import _DEADLINE
from resilient.instrumentation._hub import HUB

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from resilient._engine.compiled import CompiledPolicy
    from resilient._strategies.ratelimit import LimiterRuntime
    from resilient.instrumentation._otel import CallObservation

__all__ = [
    "admit_async",
    "admit_sync",
    "deadline_async",
    "deadline_sync",
    "retry_async",
    "retry_sync",
]

#: The deadline variable's methods, bound once: Python 3.11 calls a method of an imported
#: name through a new bound method object each time.
_current_deadline = _DEADLINE.get
_set_deadline = _DEADLINE.set
_reset_deadline = _DEADLINE.reset


# ---------------------------------------------------------------- rate limit + bulkhead


def admit_sync(
    cp: CompiledPolicy,
    label: str,
    fn: Callable[..., Any],
    args: Args,
    kwargs: Kwargs,
    obs: CallObservation | None,
    now: float | None = None,
) -> Any:
    limiter = cp.limiter
    if limiter is not None:
        key = limiter.key_of(args, kwargs) if limiter.keyed else ""
        now = CLOCK.monotonic()
        wait = limiter.try_acquire(key, now)
        if wait:
            _wait_for_rate_slot_sync(limiter, key, wait, label)
            now = None
    bulkhead = cp.bulkhead
    if bulkhead is None:
        return cp.sync_after_admit(cp, label, fn, args, kwargs, obs, now)
    if not bulkhead.try_acquire():
        bulkhead.acquire_sync(_clamp_wait(bulkhead.max_wait), label)
        now = None
    try:
        return cp.sync_after_admit(cp, label, fn, args, kwargs, obs, now)
    finally:
        bulkhead.release()


async def admit_async(
    cp: CompiledPolicy,
    label: str,
    fn: Callable[..., Awaitable[Any]],
    args: Args,
    kwargs: Kwargs,
    obs: CallObservation | None,
    now: float | None = None,
) -> Any:
    limiter = cp.limiter
    if limiter is not None:
        key = limiter.key_of(args, kwargs) if limiter.keyed else ""
        if limiter.shared:  # a Redis round trip: the reading would be stale after it
            wait = await limiter.atry_acquire(key)
        else:
            now = CLOCK.monotonic()
            wait = limiter.try_acquire(key, now)
        if wait:
            await _wait_for_rate_slot_async(limiter, key, wait, label)
            now = None
    bulkhead = cp.bulkhead
    if bulkhead is None:
        return await cp.async_after_admit(cp, label, fn, args, kwargs, obs, now)
    if not bulkhead.try_acquire():
        await bulkhead.acquire_async(_clamp_wait(bulkhead.max_wait), label)
        now = None
    try:
        return await cp.async_after_admit(cp, label, fn, args, kwargs, obs, now)
    finally:
        bulkhead.release()


def _wait_for_rate_slot_sync(limiter: LimiterRuntime, key: str, wait: float, label: str) -> None:
    """Sleep until a slot frees up; `max_wait` (clamped to the deadline) bounds the whole wait."""
    budget = limiter.wait_budget(_current_deadline())
    while wait:
        if wait > budget:
            raise limiter.reject(key, wait, label)
        CLOCK.sleep(wait)
        budget -= wait
        wait = limiter.try_acquire(key)


async def _wait_for_rate_slot_async(limiter: LimiterRuntime, key: str, wait: float, label: str) -> None:
    budget = limiter.wait_budget(_current_deadline())
    while wait:
        if wait > budget:
            raise limiter.reject(key, wait, label)
        await CLOCK.asleep(wait)
        budget -= wait
        wait = await limiter.atry_acquire(key) if limiter.shared else limiter.try_acquire(key)


def _delay_after_error(
    cp: CompiledPolicy, retry: RetryRuntime, call: RetryCall, attempt: int, error: Exception, label: str, quiet: bool
) -> float | None:
    """The wait before the next attempt after `error`; None when it is to be raised.

    `quiet`: the retry layer called the function itself, so the breaker has yet to hear of
    the failure (first: it may open the breaker, which ends the retries).
    """
    if quiet and cp.breaker is not None:
        cp.breaker.on_failure(error, probe=False, label=label)
    call.record(attempt, error, None)
    if not retry.is_retryable(error, call) or _breaker_opened(cp):
        return None
    return retry.next_delay(call, attempt, error, None, CLOCK.monotonic(), _current_deadline(), label)


def _delay_after_result(retry: RetryRuntime, call: RetryCall, attempt: int, result: Any, label: str) -> float | None:
    """The wait before the next attempt after `result` (`on_result` asked for one); None to return it."""
    call.record(attempt, None, result)
    if not retry.is_retryable_result(result, call):
        return None
    return retry.next_delay(call, attempt, None, result, CLOCK.monotonic(), _current_deadline(), label)


def _breaker_opened(cp: CompiledPolicy) -> bool:
    """The breaker is open now: another attempt would only fail fast, so give up with the real error."""
    return cp.breaker is not None and cp.breaker.state is OPEN


def _clamp_wait(wait: float) -> float:
    deadline = _current_deadline()
    if deadline is None or wait <= 0:
        return wait
    return min(wait, max(deadline - CLOCK.monotonic(), 0.0))


# ---------------------------------------------------------------- total timeout (deadline)


def deadline_sync(
    cp: CompiledPolicy,
    label: str,
    fn: Callable[..., Any],
    args: Args,
    kwargs: Kwargs,
    obs: CallObservation | None,
    now: float | None = None,
) -> Any:
    started = CLOCK.monotonic() if now is None else now
    deadline = started + cp.total_timeout  # type: ignore[operator]
    inherited = _current_deadline()
    if inherited is not None and inherited < deadline:
        deadline = inherited
    token = _set_deadline(deadline)
    try:
        result = cp.sync_after_deadline(cp, label, fn, args, kwargs, obs, started)
    finally:
        _reset_deadline(token)
    if cp.runner is None and CLOCK.monotonic() > deadline:  # cooperative: late, but not discarded
        # Which deadline won, by identity of the value, not by arithmetic: in floats
        # (started + total) - started can come out a hair below total.
        scope = "inherited" if deadline is inherited else "total"
        HUB.emit(EVENT_EXCEEDED, label, logging.WARNING, scope=scope, timeout=cp.total_timeout, interrupted=False)
    return result


async def deadline_async(
    cp: CompiledPolicy,
    label: str,
    fn: Callable[..., Awaitable[Any]],
    args: Args,
    kwargs: Kwargs,
    obs: CallObservation | None,
    now: float | None = None,
) -> Any:
    started = CLOCK.monotonic() if now is None else now
    deadline = started + cp.total_timeout  # type: ignore[operator]
    inherited = _current_deadline()
    if inherited is not None and inherited < deadline:
        deadline = inherited
    token = _set_deadline(deadline)
    try:
        return await cp.async_after_deadline(cp, label, fn, args, kwargs, obs, started)
    finally:
        _reset_deadline(token)


# ---------------------------------------------------------------- retry and its budget


def retry_sync(
    cp: CompiledPolicy,
    label: str,
    fn: Callable[..., Any],
    args: Args,
    kwargs: Kwargs,
    obs: CallObservation | None,
    now: float | None = None,
) -> Any:
    retry: RetryRuntime = cp.retry  # type: ignore[assignment]
    if retry.budget is not None:
        retry.budget.deposit(now)
    breaker = cp.breaker
    bounded = cp.bounded_sync
    # Without telemetry the attempt layer adds only the breaker, and while that is quiet
    # (`BreakerRuntime.quiet`) its whole part is to hear of a failure: this layer then
    # calls the function (within the attempt's bound, if any) and reports that itself.
    direct = obs is None
    attempt = 1
    call: RetryCall | None = None
    while True:
        quiet = direct and (breaker is None or breaker.quiet)
        try:
            if quiet:
                result = bounded_sync(cp, label, fn, args, kwargs) if bounded else fn(*args, **kwargs)
            else:
                result = attempt_sync(cp, label, fn, args, kwargs, obs, now)
        except Exception as error:
            call = call or RetryCall(fn, args, kwargs)
            delay = _delay_after_error(cp, retry, call, attempt, error, label, quiet)
            if delay is None:
                raise
        else:
            if quiet and breaker is not None and breaker.reports_success:
                # A failure elsewhere counted meanwhile: this success resets the count, as
                # the attempt layer's check after the call would have.
                breaker.on_success(probe=False, duration=0.0, label=label)
            if not retry.checks_results:
                return result
            call = call or RetryCall(fn, args, kwargs)
            delay = _delay_after_result(retry, call, attempt, result, label)
            if delay is None:
                return result
        CLOCK.sleep(delay)
        attempt += 1
        now = None


async def retry_async(
    cp: CompiledPolicy,
    label: str,
    fn: Callable[..., Awaitable[Any]],
    args: Args,
    kwargs: Kwargs,
    obs: CallObservation | None,
    now: float | None = None,
) -> Any:
    retry: RetryRuntime = cp.retry  # type: ignore[assignment]
    if retry.budget is not None:
        retry.budget.deposit(now)
    breaker = cp.breaker
    bounded = cp.bounded_async
    # As in `retry_sync`: with a quiet breaker, one coroutine fewer per attempt.
    direct = obs is None
    attempt = 1
    call: RetryCall | None = None
    while True:
        quiet = direct and (breaker is None or breaker.quiet)
        try:
            if quiet:
                result = await (bounded_async(cp, label, fn, args, kwargs) if bounded else fn(*args, **kwargs))
            else:
                result = await cp.async_attempt(cp, label, fn, args, kwargs, obs, now)
        except Exception as error:
            call = call or RetryCall(fn, args, kwargs)
            delay = _delay_after_error(cp, retry, call, attempt, error, label, quiet)
            if delay is None:
                raise
        else:
            if quiet and breaker is not None and breaker.reports_success:
                # A failure elsewhere counted meanwhile: this success resets the count, as
                # the attempt layer's check after the call would have.
                breaker.on_success(probe=False, duration=0.0, label=label)
            if not retry.checks_results:
                return result
            call = call or RetryCall(fn, args, kwargs)
            delay = _delay_after_result(retry, call, attempt, result, label)
            if delay is None:
                return result
        await CLOCK.asleep(delay)
        attempt += 1
        now = None
