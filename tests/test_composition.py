"""The strategies compose in the documented order: fallback, rate limit, bulkhead, timeout, retry, breaker."""

from __future__ import annotations

import asyncio
import threading

import pytest

from resilient import (
    Bulkhead,
    BulkheadFullError,
    CircuitBreaker,
    DeadlineExceededError,
    Fallback,
    Policy,
    RateLimit,
    RateLimitedError,
    Retry,
    Timeout,
    deadline,
    testing,
)

from ._scripts import MODES, Script, protect, protect_awaitable

RETRY = Retry(attempts=3, initial_delay=0.0, max_delay=0.0, budget=None)


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_a_rate_limit_rejection_is_not_retried(mode: str) -> None:
    """The limiter sits outside the retry loop: a rejected call never reaches the function."""
    script = Script("ok")
    call = protect(mode, script, rate_limit=RateLimit("1/minute"), retry=Retry(attempts=5, on=Exception))
    assert call() == "ok"
    with pytest.raises(RateLimitedError):
        call()
    assert script.calls == 1


def test_one_logical_call_takes_one_rate_slot_whatever_its_retries(mode: str) -> None:
    """Retries do not consume rate-limit slots: admission happens once per call."""
    script = Script(ConnectionError(), ConnectionError(), "ok")
    call = protect(mode, script, rate_limit="1/minute", retry=RETRY)
    assert call() == "ok"
    assert script.calls == 3


def test_the_fallback_answers_rejections_too(mode: str) -> None:
    """Fallback is outermost: an open circuit or a rate limit becomes the fallback value."""
    script = Script(ConnectionError())
    call = protect(
        mode,
        script,
        fallback=Fallback(lambda exc: f"cached ({type(exc).__name__})"),
        breaker=CircuitBreaker(name="fb", failure_threshold=1),
    )
    assert call() == "cached (ConnectionError)"
    assert call() == "cached (CircuitOpenError)"
    assert script.calls == 1


def test_the_fallback_sees_the_error_after_retries(mode: str) -> None:
    """Retries run first; the fallback gets the last original error."""
    last = ConnectionError("third")
    script = Script(ConnectionError("first"), ConnectionError("second"), last)
    seen: list[BaseException] = []

    def remember(exc: BaseException) -> str:
        seen.append(exc)
        return "fallback"

    call = protect(mode, script, retry=RETRY, fallback=remember)
    assert call() == "fallback"
    assert seen == [last]


def test_the_total_timeout_bounds_attempts_and_backoff(mode: str) -> None:
    """Backoff that would cross the total deadline is not slept; the last error is raised."""
    script = Script(ConnectionError("down"))
    retry = Retry(attempts=10, initial_delay=0.4, max_delay=0.4, jitter=False, budget=None)
    with testing.fake_clock(), pytest.raises(ConnectionError):
        protect(mode, script, timeout=1.0, retry=retry)()
    assert script.calls == 3  # t=0, 0.4, 0.8; the next attempt would start at 1.2


def test_the_total_timeout_starts_after_a_rate_limit_wait(mode: str) -> None:
    """The rate limit is outside the deadline: a call that waited for its slot gets its whole timeout."""
    seen: list[float | None] = []

    def body() -> None:
        seen.append(deadline.remaining())

    policy = Policy(timeout=2.0, rate_limit=RateLimit("1/second", max_wait=5.0))
    call = protect_awaitable(policy, body, mode)

    async def twice() -> float:
        await call()
        started = clock.now
        await call()  # waits (the fake clock advances) for the slot the first call took
        return started

    with testing.fake_clock() as clock:
        started = asyncio.run(twice())
    assert clock.now - started == pytest.approx(1.0)
    assert seen == [2.0, 2.0]


def test_a_retry_holds_one_bulkhead_slot(mode: str) -> None:
    """The bulkhead is outside retry: retries of one call do not need extra slots."""
    script = Script(ConnectionError(), ConnectionError(), "ok")
    assert protect(mode, script, bulkhead=Bulkhead(max_concurrent=1), retry=RETRY)() == "ok"


def test_bulkhead_rejection_is_not_retried_and_frees_nothing() -> None:
    """A call rejected by a full bulkhead fails fast while the holder keeps its slot."""
    inside = threading.Event()
    release = threading.Event()
    policy = Policy(bulkhead=1, retry=Retry(attempts=5, on=Exception))

    @policy
    def hold() -> str:
        inside.set()
        release.wait(5)
        return "held"

    holder = threading.Thread(target=hold)
    holder.start()
    assert inside.wait(5)
    with pytest.raises(BulkheadFullError):
        hold()
    release.set()
    holder.join()
    assert hold() == "held"


async def test_attempt_timeout_sits_inside_the_breaker() -> None:
    """Attempt timeouts count as breaker failures, so a hanging dependency trips it."""
    policy = Policy(timeout=Timeout(attempt=0.02), breaker=CircuitBreaker(name="hang", failure_threshold=2))

    @policy
    async def hang() -> None:
        await asyncio.Event().wait()

    for _ in range(2):
        with pytest.raises(DeadlineExceededError):
            await hang()
    assert testing.breaker_state("hang") == "open"


def test_describe_lists_layers_outer_to_inner() -> None:
    """The descriptor shows exactly the configured layers, in execution order."""
    policy = Policy(name="p", retry=3, timeout=1.0, rate_limit="5/second", fallback=0)
    assert list(testing.describe(policy)) == ["name", "fallback", "rate_limit", "timeout", "retry"]
