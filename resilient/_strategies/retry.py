"""Retry: only what is transient, with jittered exponential backoff, within deadline and budget.

Decisions after a failure use tenacity's strategy objects (its `wait_*`, `stop_*` and
`retry_*` work unchanged), but a successful first attempt builds no retry state at all:
tenacity's own loop copies itself and allocates per call, which is what makes `@retry`
hundreds of times a raw call. The final error is the last original exception, never
`tenacity.RetryError`.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, cast

import tenacity

from resilient._kernel.clock import CLOCK
from resilient._kernel.errors import BulkheadFullError, CircuitOpenError, RateLimitedError
from resilient._kernel.layer import Layer, Link
from resilient._kernel.validate import check_int, check_number, check_seconds
from resilient._strategies.attempt import AttemptPolicy, bounded_async, bounded_sync
from resilient._strategies.breaker import OPEN
from resilient._strategies.budget import BudgetRuntime, RetryBudget
from resilient.deadline import _DEADLINE
from resilient.instrumentation._hub import HUB

if TYPE_CHECKING:
    from collections.abc import Mapping

    from resilient._kernel.layer import AFn, Args, Fn, Kwargs, Now, Obs, Step
    from resilient._strategies.breaker import BreakerRuntime

__all__ = [
    "EVENT_BUDGET_EXHAUSTED",
    "EVENT_EXHAUSTED",
    "EVENT_SCHEDULED",
    "LAYER",
    "PROGRAMMING_ERRORS",
    "Retry",
    "RetryCall",
    "RetryPolicy",
    "RetryRuntime",
]

DEFAULT_ATTEMPTS = 3
DEFAULT_INITIAL_DELAY = 0.1
DEFAULT_MAX_DELAY = 10.0
DEFAULT_EXP_BASE = 2.0

EVENT_SCHEDULED = "retry.scheduled"
EVENT_EXHAUSTED = "retry.exhausted"
EVENT_BUDGET_EXHAUSTED = "budget.exhausted"

#: Errors that signal a bug, not a flaky dependency: never retried unless named explicitly
#: in `on=` (``on=ValueError`` retries ValueError; ``on=Exception`` still does not).
PROGRAMMING_ERRORS: tuple[type[Exception], ...] = (
    TypeError,
    ValueError,
    AttributeError,
    NameError,
    LookupError,
    AssertionError,
    NotImplementedError,
    ArithmeticError,
    ImportError,
    SyntaxError,
)

#: The library's own rejections: retrying them would defeat their purpose.
REJECTIONS = (CircuitOpenError, RateLimitedError, BulkheadFullError)

ExceptionFilter = (
    type[BaseException] | tuple[type[BaseException], ...] | Callable[[BaseException], bool] | tenacity.retry_base
)

# Transient errors of HTTP clients, looked up only if the client was imported by the app.
_CLIENT_TRANSIENTS = {
    "httpx": ("TimeoutException", "NetworkError", "RemoteProtocolError", "ProxyError"),
    "requests": ("ConnectionError", "Timeout"),
    "aiohttp": ("ClientConnectionError", "ServerTimeoutError"),
}


def transient_errors() -> tuple[type[BaseException], ...]:
    """Connection errors and timeouts, including those of httpx, requests and aiohttp."""
    found: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for module_name, names in _CLIENT_TRANSIENTS.items():
        module = sys.modules.get(module_name)
        if module is None:
            continue
        sub = getattr(module, "exceptions", module)
        found.extend(cls for name in names if isinstance(cls := getattr(sub, name, None), type))
    return tuple(found)


@dataclass(frozen=True, slots=True, kw_only=True)
class Retry:
    """Retry transient failures: `attempts` counts the first call.

    `on` chooses what is retried: exception types, a predicate ``(exc) -> bool`` or a
    tenacity ``retry_*`` object; the default is connection errors and timeouts (httpx,
    requests and aiohttp ones included). Cancellation, `KeyboardInterrupt`, the library's
    own rejections and programming errors (`TypeError`, `ValueError`, ... unless named in
    `on`) are never retried. `on_result` retries a returned value it flags. Backoff is
    exponential with full jitter, ``uniform(0, min(max_delay, initial_delay * exp_base **
    (n - 1)))``, unless a tenacity `wait` is given; a tenacity `stop` adds a stop condition.
    `retry_after(exc, result)` may return a server-imposed minimum delay (the backoff never
    sleeps less). `budget` caps retries as a share of calls (None turns it off).
    """

    attempts: int = DEFAULT_ATTEMPTS
    on: ExceptionFilter | None = None
    on_result: Callable[[Any], bool] | None = None
    initial_delay: float = DEFAULT_INITIAL_DELAY
    max_delay: float = DEFAULT_MAX_DELAY
    exp_base: float = DEFAULT_EXP_BASE
    jitter: bool = True
    wait: tenacity.wait.wait_base | None = None
    stop: tenacity.stop.stop_base | None = None
    retry_after: Callable[[BaseException | None, Any], float | None] | None = None
    budget: RetryBudget | None = field(default_factory=RetryBudget)

    def __post_init__(self) -> None:
        check_int("retry.attempts", self.attempts, minimum=1)
        initial = check_seconds("retry.initial_delay", self.initial_delay, allow_zero=True)
        maximum = check_seconds("retry.max_delay", self.max_delay, allow_zero=True)
        if maximum < initial:
            raise ValueError(f"retry.max_delay must be >= retry.initial_delay ({initial!r}), got {maximum!r}")
        check_number("retry.exp_base", self.exp_base, minimum=1)
        _check_filter(self.on)
        for name in ("on_result", "retry_after"):
            value = getattr(self, name)
            if value is not None and not callable(value):
                raise TypeError(f"retry.{name} must be callable or None, got {value!r}")
        if self.wait is not None and not callable(self.wait):
            raise TypeError(f"retry.wait must be a tenacity wait strategy, got {self.wait!r}")
        if self.stop is not None and not callable(self.stop):
            raise TypeError(f"retry.stop must be a tenacity stop strategy, got {self.stop!r}")
        if self.budget is not None and not isinstance(self.budget, RetryBudget):
            raise TypeError(f"retry.budget must be a RetryBudget or None, got {self.budget!r}")


Retry.__module__ = "resilient"

_NEVER_RETRIED = (asyncio.CancelledError, KeyboardInterrupt, SystemExit, GeneratorExit)


def _check_filter(on: object) -> None:
    if on is None or isinstance(on, tenacity.retry_base):
        return
    types = on if isinstance(on, tuple) else (on,)
    if all(isinstance(t, type) and issubclass(t, BaseException) for t in types):
        bad = [t.__name__ for t in types if issubclass(t, _NEVER_RETRIED)]
        if bad:
            raise ValueError(f"retry.on must not include cancellation or interpreter exits, got {', '.join(bad)}")
        return
    if callable(on) and not isinstance(on, type | tuple):
        return
    raise TypeError(
        "retry.on must be an exception type, a tuple of them, a predicate (exc) -> bool "
        f"or a tenacity retry strategy, got {on!r}"
    )


# tenacity's strategies receive a RetryCallState, which wants a Retrying; none of the
# strategies we call reads it, so one inert instance serves every call.
_INERT_RETRYING = tenacity.Retrying()


class RetryCall:
    """Per-call retry state: exists only after a first failure, lives in the call's locals."""

    __slots__ = ("state",)

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.state = tenacity.RetryCallState(_INERT_RETRYING, fn, args, kwargs)

    def record(self, attempt: int, error: BaseException | None, result: Any) -> None:
        """Feed the outcome of `attempt` to the tenacity state."""
        state = self.state
        state.attempt_number = attempt
        if error is not None:
            state.set_exception((type(error), error, error.__traceback__))
        else:
            state.set_result(result)


class RetryRuntime:
    """The compiled retry strategy of one policy (immutable apart from its budget)."""

    __slots__ = (
        "_explicit_programming",
        "_predicate",
        "_tenacity_on",
        "_types",
        "attempts",
        "budget",
        "checks_results",
        "on_result",
        "retry_after",
        "stop",
        "wait",
    )

    def __init__(self, config: Retry) -> None:
        self.attempts = config.attempts
        self.on_result = config.on_result
        self.retry_after = config.retry_after
        self.stop = config.stop
        self.budget = BudgetRuntime(config.budget) if config.budget is not None else None
        self.wait: Callable[[tenacity.RetryCallState], float] = config.wait or _default_wait(config)
        on = config.on
        self._tenacity_on = on if isinstance(on, tenacity.retry_base) else None
        self._types: tuple[type[BaseException], ...] | None = None
        self._predicate: Callable[[BaseException], bool] | None = None
        self._explicit_programming: tuple[type[BaseException], ...] = ()
        if isinstance(on, type | tuple):
            self._types = on if isinstance(on, tuple) else (on,)
            self._explicit_programming = tuple(t for t in self._types if issubclass(t, PROGRAMMING_ERRORS))
        elif on is not None and self._tenacity_on is None:
            self._predicate = cast("Callable[[BaseException], bool]", on)
        self.checks_results = self.on_result is not None or self._tenacity_on is not None

    def is_retryable(self, error: Exception, call: RetryCall) -> bool:
        """Is this failure worth another attempt (ignoring attempts, deadline and budget)?"""
        if isinstance(error, REJECTIONS):
            return False
        if self._tenacity_on is not None:
            return bool(self._tenacity_on(call.state))
        if self._predicate is not None:
            return bool(self._predicate(error))
        if self._types is not None:
            if not isinstance(error, self._types):
                return False
            return not isinstance(error, PROGRAMMING_ERRORS) or isinstance(error, self._explicit_programming)
        return isinstance(error, transient_errors())

    def is_retryable_result(self, result: Any, call: RetryCall) -> bool:
        """Does the returned value ask for another attempt?"""
        if self.on_result is not None and self.on_result(result):
            return True
        return self._tenacity_on is not None and bool(self._tenacity_on(call.state))

    def next_delay(
        self,
        call: RetryCall,
        attempt: int,
        error: BaseException | None,
        result: Any,
        now: float,
        deadline: float | None,
        label: str,
    ) -> float | None:
        """The backoff before the next attempt, or None to give up (and say why)."""
        if attempt >= self.attempts or (self.stop is not None and self.stop(call.state)):
            _emit_exhausted(label, attempt, error, "attempts")
            return None
        delay = max(float(self.wait(call.state)), 0.0)
        if self.retry_after is not None:
            hint = self.retry_after(error, result)
            if hint is not None:
                delay = max(delay, hint)
        if deadline is not None and now + delay >= deadline:
            _emit_exhausted(label, attempt, error, "deadline")
            return None
        if self.budget is not None and not self.budget.try_withdraw(now):
            HUB.emit(EVENT_BUDGET_EXHAUSTED, label, logging.WARNING, error, attempt=attempt)
            return None
        call.state.idle_for += delay
        HUB.emit(EVENT_SCHEDULED, label, logging.INFO, error, attempt=attempt, delay=round(delay, 6))
        return delay


def _emit_exhausted(label: str, attempt: int, error: BaseException | None, reason: str) -> None:
    HUB.emit(EVENT_EXHAUSTED, label, logging.WARNING, error, attempts=attempt, reason=reason)


def _default_wait(config: Retry) -> Callable[[tenacity.RetryCallState], float]:
    """Exponential backoff capped at `max_delay`, with full jitter unless turned off."""
    if config.jitter:
        return tenacity.wait_random_exponential(
            multiplier=config.initial_delay, max=config.max_delay, exp_base=config.exp_base
        )
    return tenacity.wait_exponential(multiplier=config.initial_delay, max=config.max_delay, exp_base=config.exp_base)


# ---------------------------------------------------------------- the layer: retry and its budget

_current_deadline = _DEADLINE.get


class RetryPolicy(AttemptPolicy, Protocol):
    """What the retry layer reads of the compiled policy: its runtime, and the attempt's."""

    retry: RetryRuntime | None


def _compile(cp: RetryPolicy, options: Mapping[str, Any]) -> None:
    config: Retry | None = options.get("retry")
    cp.retry = RetryRuntime(config) if config else None


def _link(cp: RetryPolicy, inner: Link) -> Link | None:
    """The retry loop around the next layer (the attempt, or one call fewer: see `Link.skippable`)."""
    retry = cp.retry
    if retry is None:
        return None
    return Link(_retry_sync(retry, cp.breaker, inner), _retry_async(retry, cp.breaker, inner))


def _retry_sync(retry: RetryRuntime, breaker: BreakerRuntime | None, inner: Link) -> Step:
    attempt_sync, skippable = inner.sync, inner.skippable
    budget = retry.budget

    def retry_sync(cp: RetryPolicy, label: str, fn: Fn, args: Args, kwargs: Kwargs, obs: Obs, now: Now = None) -> Any:
        if budget is not None:
            budget.deposit(now)
        bounded = cp.bounded_sync
        # Without telemetry the attempt layer adds only the breaker, and while that is quiet
        # (`BreakerRuntime.quiet`) its whole part is to hear of a failure: this layer then
        # calls the function (within the attempt's bound, if any) and reports that itself.
        direct = skippable and obs is None
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
                if (delay := _delay_after_error(breaker, retry, call, attempt, error, label, quiet)) is None:
                    raise
            else:
                if not (retry.checks_results or (quiet and breaker is not None and breaker.reports_success)):
                    return result
                call = call or RetryCall(fn, args, kwargs)
                if (delay := _delay_after_result(breaker, retry, call, attempt, result, label, quiet)) is None:
                    return result
            CLOCK.sleep(delay)
            attempt += 1
            now = None

    return retry_sync


def _retry_async(retry: RetryRuntime, breaker: BreakerRuntime | None, inner: Link) -> Step:
    attempt_async, skippable = inner.async_, inner.skippable
    budget = retry.budget

    async def retry_async(
        cp: RetryPolicy, label: str, fn: AFn, args: Args, kwargs: Kwargs, obs: Obs, now: Now = None
    ) -> Any:
        if budget is not None:
            budget.deposit(now)
        bounded = cp.bounded_async
        direct = skippable and obs is None  # as in `retry_sync`: one coroutine fewer per attempt
        attempt = 1
        call: RetryCall | None = None
        while True:
            quiet = direct and (breaker is None or breaker.quiet)
            try:
                if quiet:
                    result = await (bounded_async(cp, label, fn, args, kwargs) if bounded else fn(*args, **kwargs))
                else:
                    result = await attempt_async(cp, label, fn, args, kwargs, obs, now)
            except Exception as error:
                call = call or RetryCall(fn, args, kwargs)
                if (delay := _delay_after_error(breaker, retry, call, attempt, error, label, quiet)) is None:
                    raise
            else:
                if not (retry.checks_results or (quiet and breaker is not None and breaker.reports_success)):
                    return result
                call = call or RetryCall(fn, args, kwargs)
                if (delay := _delay_after_result(breaker, retry, call, attempt, result, label, quiet)) is None:
                    return result
            await CLOCK.asleep(delay)
            attempt += 1
            now = None

    return retry_async


def _delay_after_error(
    breaker: BreakerRuntime | None,
    retry: RetryRuntime,
    call: RetryCall,
    attempt: int,
    error: Exception,
    label: str,
    quiet: bool,
) -> float | None:
    """The wait before the next attempt after `error`; None when it is to be raised.

    `quiet`: the retry layer called the function itself, so the breaker has yet to hear of
    the failure (first: it may open the breaker, which ends the retries).
    """
    if quiet and breaker is not None:
        breaker.on_failure(error, probe=False, label=label)
    call.record(attempt, error, None)
    # The breaker is open now: another attempt would only fail fast, so give up with the real error.
    if not retry.is_retryable(error, call) or (breaker is not None and breaker.state is OPEN):
        return None
    return retry.next_delay(call, attempt, error, None, CLOCK.monotonic(), _current_deadline(), label)


def _delay_after_result(
    breaker: BreakerRuntime | None,
    retry: RetryRuntime,
    call: RetryCall,
    attempt: int,
    result: Any,
    label: str,
    quiet: bool,
) -> float | None:
    """The wait before the next attempt after `result`; None to return it.

    `quiet`: the retry layer called the function itself, so a breaker that counted a failure
    elsewhere meanwhile hears of this success here (it resets the count, as the attempt
    layer's check after the call would have).
    """
    if quiet and breaker is not None and breaker.reports_success:
        breaker.on_success(probe=False, duration=0.0, label=label)
    if not retry.checks_results:
        return None
    call.record(attempt, None, result)
    if not retry.is_retryable_result(result, call):
        return None
    return retry.next_delay(call, attempt, None, result, CLOCK.monotonic(), _current_deadline(), label)


LAYER = Layer("retry", _link, _compile)
