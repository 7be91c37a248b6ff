"""The outermost layer of a protected call: the decorated function's wrapper.

The wrapper *is* the telemetry-and-fallback layer (`wrap_sync`, `wrap_async`): with nobody
listening and no fallback, nearly every call, it goes straight to the compiled policy's
first configured layer (`CompiledPolicy.sync_entry` / `async_entry`, linked from `_engine/layers.py`);
otherwise `_observed_sync` / `_observed_async` run the call with its span, metrics and
fallback.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import opentelemetry.metrics._internal as _metrics_state
import opentelemetry.trace as _trace_state

from resilient._strategies.breaker import CLOSED
from resilient.instrumentation._hub import HUB, outcome_of

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from resilient._engine.compiled import CompiledPolicy
    from resilient._kernel.layer import Args, Kwargs
    from resilient.instrumentation._otel import CallObservation

__all__ = ["wrap_async", "wrap_sync"]

#: Read on every call to decide whether telemetry is needed at all.
_OTEL = HUB.otel


def wrap_sync(cp: CompiledPolicy, label: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """`fn` under the policy: what the decorator hands back (before `functools.wraps`).

    The wrapper *is* the telemetry-and-fallback layer rather than a function calling it:
    one frame fewer per call. With nobody listening and no fallback (nearly every call)
    it goes straight to the first configured layer; otherwise `_observed_sync` runs the call.
    """
    no_fallback = cp.fallback is None  # fixed for the policy's life

    def run(*args: Any, **kwargs: Any) -> Any:
        # The "anyone listening?" check, inlined: the idle flag plus two identity tests.
        if (
            _OTEL.idle
            and _trace_state._TRACER_PROVIDER is _OTEL._tracer_provider
            and _metrics_state._METER_PROVIDER is _OTEL._meter_provider
        ):
            if no_fallback:
                return cp.sync_entry(cp, label, fn, args, kwargs, None)
            obs = None
        else:
            obs = HUB.begin_call(label)
        return _observed_sync(cp, label, fn, args, kwargs, obs)

    return run


def wrap_async(cp: CompiledPolicy, label: str, fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """`wrap_sync` for a coroutine function: one coroutine fewer per call."""
    no_fallback = cp.fallback is None

    async def run(*args: Any, **kwargs: Any) -> Any:
        if (
            _OTEL.idle
            and _trace_state._TRACER_PROVIDER is _OTEL._tracer_provider
            and _metrics_state._METER_PROVIDER is _OTEL._meter_provider
        ):
            if no_fallback:
                return await cp.async_entry(cp, label, fn, args, kwargs, None)
            obs = None
        else:
            obs = HUB.begin_call(label)
        return await _observed_async(cp, label, fn, args, kwargs, obs)

    return run


def _observed_sync(
    cp: CompiledPolicy, label: str, fn: Callable[..., Any], args: Args, kwargs: Kwargs, obs: CallObservation | None
) -> Any:
    """Run the call with its telemetry (`obs`, None when nobody listens) and the fallback."""
    try:
        result = cp.sync_entry(cp, label, fn, args, kwargs, obs)
    except Exception as error:
        if (value := _recover(cp, obs, error, label)) is _RAISE:
            raise
        return value
    except BaseException:
        _end(cp, obs, None, "cancelled")
        raise
    return _end(cp, obs, None, "success", result)


async def _observed_async(
    cp: CompiledPolicy,
    label: str,
    fn: Callable[..., Awaitable[Any]],
    args: Args,
    kwargs: Kwargs,
    obs: CallObservation | None,
) -> Any:
    """Await the call with its telemetry and the fallback; timeouts cancel it for real."""
    try:
        result = await cp.async_entry(cp, label, fn, args, kwargs, obs)
    except Exception as error:
        if (value := _recover(cp, obs, error, label)) is _RAISE:
            raise
        if cp.fallback is not None and cp.fallback.is_async:  # `_recover` left the handler's awaitable to us
            try:
                value = await value
            except BaseException as fallback_error:
                _end(cp, obs, fallback_error, None)
                raise
            _end(cp, obs, error, "fallback")
        return value
    except BaseException:
        _end(cp, obs, None, "cancelled")
        raise
    return _end(cp, obs, None, "success", result)


#: `_recover`'s answer when the error is to be re-raised (by the caller's bare `raise`: traceback intact).
_RAISE: Any = object()


def _recover(cp: CompiledPolicy, obs: CallObservation | None, error: Exception, label: str) -> Any:
    """The fallback's value for `error` (an async handler's: its awaitable, not yet ended), or `_RAISE`."""
    fallback = cp.fallback
    if fallback is None or not fallback.handles(error):
        _end(cp, obs, error, None)
        return _RAISE
    try:
        value = fallback.value(error, label)
    except BaseException as fallback_error:
        _end(cp, obs, fallback_error, None)
        raise
    if not fallback.is_async:
        _end(cp, obs, error, "fallback")
    return value


def _end(
    cp: CompiledPolicy,
    obs: CallObservation | None,
    error: BaseException | None,
    outcome: str | None,
    result: Any = None,
) -> Any:
    """End the call's telemetry with its outcome; hand back `result` (the caller returns it)."""
    if obs is None:
        return result
    extra: dict[str, Any] = {}
    if error is not None:
        classified, reason = outcome_of(error)
        outcome = outcome or classified
        if reason is not None:
            extra["resilient.rejection" if classified == "rejected" else "resilient.failure"] = reason
    breaker = cp.breaker
    if breaker is not None and (error is not None or breaker.state is not CLOSED):
        # Closed is implied on a success; with an SDK every span attribute costs ~0.5 µs.
        extra["resilient.breaker.state"] = breaker.state
    obs.end(outcome or "success", error, extra)
    return result
