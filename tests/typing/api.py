"""Every public name of `resilient`, used as a user would, with the types mypy must infer.

Checked by mypy (``mypy tests/typing``), never run: pytest does not collect it.
"""

from __future__ import annotations

import asyncio
import types
from collections.abc import Callable, Coroutine
from datetime import timedelta
from typing import Any, assert_type

import pybreaker
import tenacity

import resilient as rs
from resilient import (
    Bulkhead,
    BulkheadFullError,
    CircuitBreaker,
    CircuitOpenError,
    DeadlineExceededError,
    Fallback,
    Policy,
    RateLimit,
    RateLimitedError,
    ResilienceError,
    Retry,
    RetryBudget,
    Timeout,
    current_request_id,
    deadline,
    instrumentation,
    resilient,
    testing,
)

# ---------------------------------------------------------------- configs

timeout = Timeout(total=5.0, attempt=timedelta(seconds=2), sync_mode="thread", max_threads=4)
assert_type(timeout, Timeout)
retry = Retry(
    attempts=3,
    on=(ConnectionError, TimeoutError),
    on_result=lambda result: result is None,
    initial_delay=0.1,
    max_delay=2.0,
    exp_base=2.0,
    jitter=True,
    wait=tenacity.wait_fixed(0.1),
    stop=tenacity.stop_after_delay(10),
    retry_after=lambda exc, result: None,
    budget=RetryBudget(ratio=0.2, min_per_second=3.0, window=10.0),
)
assert_type(retry, Retry)
assert_type(retry.attempts, int)
assert_type(Retry(on=lambda exc: isinstance(exc, OSError), budget=None), Retry)
assert_type(Retry(on=tenacity.retry_if_exception_type(OSError)), Retry)
breaker = CircuitBreaker(
    name="payments",
    failure_threshold=5,
    failure_rate=0.5,
    window=100,
    minimum_calls=10,
    slow_call_duration=1.0,
    reset_timeout=30.0,
    half_open_max_calls=1,
    success_threshold=1,
    exclude=(KeyError,),
)
assert_type(breaker, CircuitBreaker)
assert_type(breaker.name, str)
assert_type(CircuitBreaker.from_pybreaker(pybreaker.CircuitBreaker(name="legacy")), CircuitBreaker)
rate_limit = RateLimit("100/second", algorithm="moving-window", key=str, max_wait=0.5)
assert_type(rate_limit, RateLimit)
assert_type(rate_limit.limit, str)
bulkhead = Bulkhead(max_concurrent=10, max_wait=0.05)
assert_type(bulkhead, Bulkhead)
assert_type(bulkhead.max_concurrent, int)
fallback = Fallback(lambda exc: None, on=ConnectionError)
assert_type(fallback, Fallback)
assert_type(fallback.is_async, bool)

# ---------------------------------------------------------------- Policy

payments = Policy(
    name="payments",
    timeout=timeout,
    retry=retry,
    breaker=breaker,
    rate_limit=rate_limit,
    bulkhead=bulkhead,
    fallback=fallback,
)
assert_type(payments, Policy)
assert_type(Policy(timeout=2.0, retry=3, breaker="payments", rate_limit="10/second", bulkhead=4, fallback=0), Policy)
assert_type(Policy(timeout=timedelta(seconds=1), retry=True, breaker=pybreaker.CircuitBreaker()), Policy)
assert_type(payments.describe(), dict[str, Any])
assert_type(payments.timeout, Timeout | None)
assert_type(payments.retry, Retry | None)


@payments
def charge(order_id: int, *, amount: float) -> str:
    return f"{order_id}:{amount}"


assert_type(charge(1, amount=2.0), str)


@payments
async def refund(order_id: int) -> bool:
    return order_id > 0


# The decorator keeps the parameters, and a coroutine function stays one: its result can
# go to asyncio.run / asyncio.create_task, which want a Coroutine, not just an Awaitable.
assert_type(asyncio.run(assert_type(refund(1), Coroutine[Any, Any, bool])), bool)
refund_ref: Callable[[int], Coroutine[Any, Any, bool]] = refund

assert_type(payments.call(charge, 1, amount=2.0), str)


async def use_call_async() -> None:
    assert_type(await payments.call_async(refund, 1), bool)
    assert_type(await refund(1), bool)


# ---------------------------------------------------------------- @resilient


@resilient
def bare(x: int) -> int:
    return x


assert_type(bare(1), int)


@resilient
async def bare_async(x: int) -> int:
    return x


@resilient(timeout=2.0, retry=3, breaker="payments", rate_limit="100/second", bulkhead=10, fallback=None)
def shorthand(order: str) -> list[str]:
    return [order]


assert_type(shorthand("a"), list[str])
assert_type(resilient(retry=2), Policy)


class Service:
    @resilient(retry=2)
    def method(self, x: int) -> str:
        return str(x)

    @staticmethod
    @resilient(retry=2)
    def static(x: int) -> int:
        return x

    @classmethod
    @resilient(retry=2)
    def klass(cls, x: int) -> str:
        return cls.__name__ + str(x)


assert_type(Service().method(1), str)
assert_type(Service.static(1), int)
assert_type(Service.klass(1), str)

# ---------------------------------------------------------------- errors


def handle(error: Exception) -> float | str | None:
    if isinstance(error, RateLimitedError):
        assert_type(error.retry_after, float)
        assert_type(error.limit, str)
        assert_type(error.key, str)
        return error.retry_after
    if isinstance(error, CircuitOpenError):
        assert_type(error.breaker, str)
        return error.retry_after
    if isinstance(error, BulkheadFullError):
        assert_type(error.max_concurrent, int)
        return error.max_wait
    if isinstance(error, DeadlineExceededError):
        assert_type(error.scope, str)
        assert_type(error.timeout, float)
        return error.timeout
    if isinstance(error, ResilienceError):
        assert_type(error.policy, str | None)
        return error.policy
    return None


timeout_error: TimeoutError = DeadlineExceededError(1.0, scope="total")

# ---------------------------------------------------------------- deadline, testing, instrumentation

assert_type(deadline.remaining(), float | None)
assert_type(deadline.current(), float | None)
with deadline.scope(2.0) as instant:
    assert_type(instant, float | None)
assert_type(deadline.format_header(1.5), str)
assert_type(deadline.parse_header(b"1500"), float | None)
assert_type(deadline.HEADER, str)
assert_type(rs.deadline, types.ModuleType)
assert_type(current_request_id(), str | None)

with testing.no_wait() as waits:
    assert_type(waits, list[float])
with testing.fake_clock() as clock:
    assert_type(clock, testing.FakeClock)
    clock.advance(1.0)
    assert_type(clock.monotonic(), float)
testing.reset_breakers()
testing.forget_breakers()
assert_type(testing.breaker_state("payments"), str)
assert_type(testing.describe(payments), dict[str, Any])


def listener(event: instrumentation.Event) -> None:
    assert_type(event.name, str)
    assert_type(event.policy, str)
    assert_type(event.error, BaseException | None)


instrumentation.add_listener(listener)
instrumentation.remove_listener(listener)
instrumentation.configure(traces=True, metrics=False, logs=None)
assert_type(rs.__version__, str)

# ---------------------------------------------------------------- configuration


def _configuration() -> None:
    """Named policies and options from a file (a function: the names need a file to run)."""
    from resilient import config  # noqa: PLC0415 - kept beside its use

    loaded = config.load("resilient.toml", environ={})
    assert_type(loaded, config.Config)
    assert_type(loaded.policy_names(), tuple[str, ...])
    assert_type(Policy.named("payments"), Policy)
    assert_type(Policy.named("payments", retry=3), Policy)
    assert_type(resilient("payments"), Policy)
    assert_type(resilient("payments", timeout=2.0), Policy)
    assert_type(config.policy("payments"), Policy)
    assert_type(config.current(), config.Config)
    assert_type(config.middleware_options(max_in_flight=10), dict[str, Any])
    assert_type(config.httpx_options("api.example.com", retry=3), dict[str, Any])
    config.use(loaded)
    config.use(None)
    error = config.ConfigError(["resilient.toml: policies.x.retry.attempts must be >= 1, got 0"])
    assert_type(error.problems, tuple[str, ...])

    @resilient("payments")
    def charge(order: str) -> int:
        return len(order)

    assert_type(charge("a"), int)
