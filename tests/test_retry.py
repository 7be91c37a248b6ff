"""Retry: what is retried, how often, how long it waits, and what the caller finally sees."""

from __future__ import annotations

import asyncio
import logging

import pytest
import tenacity

from resilient import (
    BulkheadFullError,
    CircuitOpenError,
    RateLimitedError,
    Retry,
    RetryBudget,
    deadline,
    testing,
)
from resilient.instrumentation import Event

from ._scripts import MODES, Script, protect, quick


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.mark.parametrize(
    "error",
    [ConnectionError("reset"), TimeoutError("slow"), ConnectionRefusedError("refused")],
)
def test_transient_errors_are_retried_until_success(mode: str, error: Exception) -> None:
    """Connection errors and timeouts are retried and the eventual value is returned."""
    script = Script(error, error, "ok")
    call = protect(mode, script, retry=quick(3))
    assert call() == "ok"
    assert script.calls == 3


@pytest.mark.parametrize(
    "error", [ValueError("bad"), TypeError("bug"), KeyError("k"), AttributeError("a"), ZeroDivisionError()]
)
def test_programming_errors_are_never_retried_by_default(mode: str, error: Exception) -> None:
    """A bug fails at once: the original exception, one call."""
    script = Script(error, "ok")
    call = protect(mode, script, retry=quick(5))
    with pytest.raises(type(error)) as raised:
        call()
    assert raised.value is error
    assert script.calls == 1


def test_programming_errors_are_not_retried_even_with_on_exception(mode: str) -> None:
    """`on=Exception` means any failure of the dependency, still not a TypeError."""
    script = Script(TypeError("bug"), "ok")
    with pytest.raises(TypeError):
        protect(mode, script, retry=quick(3, on=Exception))()
    assert script.calls == 1


def test_a_programming_error_named_explicitly_is_retried(mode: str) -> None:
    """Naming ValueError in `on=` is an explicit choice and is honoured."""
    script = Script(ValueError("flaky parse"), "ok")
    assert protect(mode, script, retry=quick(2, on=ValueError))() == "ok"


def test_the_last_original_exception_is_raised_when_attempts_run_out(mode: str) -> None:
    """The caller gets the last original error, never tenacity.RetryError."""
    errors = [ConnectionError("first"), ConnectionError("second"), ConnectionError("third")]
    script = Script(*errors)
    with pytest.raises(ConnectionError) as raised:
        protect(mode, script, retry=quick(3))()
    assert raised.value is errors[2]
    assert script.calls == 3


@pytest.mark.parametrize(
    "rejection",
    [
        CircuitOpenError("dep", retry_after=1.0),
        RateLimitedError("1/second", retry_after=1.0),
        BulkheadFullError(1, max_wait=0.0),
    ],
)
def test_the_librarys_own_rejections_are_never_retried(mode: str, rejection: Exception) -> None:
    """A rejection from a nested policy passes straight through an outer retry."""
    script = Script(rejection, "ok")
    with pytest.raises(type(rejection)):
        protect(mode, script, retry=quick(5, on=Exception))()
    assert script.calls == 1


def test_predicate_decides_what_is_retried(mode: str) -> None:
    """`on=` accepts a predicate over the exception."""
    script = Script(OSError(104, "reset"), OSError(2, "missing"), "ok")
    call = protect(mode, script, retry=quick(5, on=lambda e: getattr(e, "errno", None) == 104))
    with pytest.raises(OSError, match="missing"):
        call()
    assert script.calls == 2


def test_results_can_be_retried(mode: str) -> None:
    """`on_result` retries a flagged value, and returns the last value when attempts run out."""
    script = Script(None, None, "ready")
    assert protect(mode, script, retry=quick(3, on_result=lambda r: r is None))() == "ready"
    stuck = Script(None)
    assert protect(mode, stuck, retry=quick(2, on_result=lambda r: r is None))() is None
    assert stuck.calls == 2


def test_tenacity_strategies_are_accepted(mode: str) -> None:
    """The user's own tenacity retry, stop and wait objects drive the decisions."""
    script = Script(OSError("x"), OSError("x"), OSError("x"), "ok")
    retry = Retry(
        attempts=10,
        on=tenacity.retry_if_exception_type(OSError),
        stop=tenacity.stop_after_attempt(2),
        wait=tenacity.wait_fixed(0.25),
    )
    with testing.no_wait() as waits, pytest.raises(OSError):
        protect(mode, script, retry=retry)()
    assert script.calls == 2
    assert waits == [0.25]


def test_tenacity_result_predicates_see_results(mode: str) -> None:
    """A tenacity retry_if_result object is consulted on returned values too."""
    script = Script(0, 0, 7)
    retry = quick(5, on=tenacity.retry_if_result(lambda r: r == 0))
    assert protect(mode, script, retry=retry)() == 7


def test_backoff_is_exponential_with_full_jitter_and_a_cap(mode: str) -> None:
    """Each delay lies in [0, min(max_delay, initial * base**(n-1))]."""
    script = Script(*([ConnectionError()] * 6), "ok")
    retry = Retry(attempts=7, initial_delay=0.1, max_delay=0.5, budget=None)
    with testing.no_wait() as waits:
        assert protect(mode, script, retry=retry)() == "ok"
    caps = [min(0.5, 0.1 * 2**n) for n in range(6)]
    assert len(waits) == 6
    assert all(0 <= wait <= cap for wait, cap in zip(waits, caps, strict=True))


def test_backoff_without_jitter_is_deterministic(mode: str) -> None:
    """`jitter=False` gives the plain capped exponential sequence."""
    script = Script(*([ConnectionError()] * 4), "ok")
    retry = Retry(attempts=5, initial_delay=0.1, max_delay=0.3, jitter=False, budget=None)
    with testing.no_wait() as waits:
        protect(mode, script, retry=retry)()
    assert waits == pytest.approx([0.1, 0.2, 0.3, 0.3])


def test_retry_after_hint_is_a_minimum_delay(mode: str) -> None:
    """A server-imposed delay from `retry_after` is never shortened by the backoff."""
    script = Script(ConnectionError(), "ok")
    retry = Retry(attempts=2, initial_delay=0.01, max_delay=0.01, retry_after=lambda exc, result: 2.0)
    with testing.no_wait() as waits:
        protect(mode, script, retry=retry)()
    assert waits == [2.0]


def test_no_sleep_runs_past_the_deadline(mode: str) -> None:
    """A backoff that would end after the deadline is not slept: the last error is raised."""
    script = Script(ConnectionError("down"), "ok")
    retry = Retry(attempts=3, initial_delay=5.0, max_delay=5.0, jitter=False)
    with testing.fake_clock(), deadline.scope(1.0), pytest.raises(ConnectionError):
        protect(mode, script, retry=retry)()
    assert script.calls == 1


def test_cancellation_is_never_retried_or_swallowed() -> None:
    """A CancelledError raised by the dependency propagates untouched after one call."""
    script = Script(asyncio.CancelledError(), "ok")
    with pytest.raises(asyncio.CancelledError):
        protect("async", script, retry=quick(5, on=Exception))()
    assert script.calls == 1


def test_keyboard_interrupt_propagates_untouched() -> None:
    """KeyboardInterrupt is never caught by the retry loop."""
    script = Script(KeyboardInterrupt(), "ok")
    with pytest.raises(KeyboardInterrupt):
        protect("sync", script, retry=quick(5, on=Exception))()
    assert script.calls == 1


def test_retries_are_reported(mode: str, events: list[Event]) -> None:
    """Each retry emits retry.scheduled; giving up emits retry.exhausted at WARNING."""
    script = Script(ConnectionError("down"))
    with pytest.raises(ConnectionError):
        protect(mode, script, name="payments", retry=quick(3))()
    names = [event.name for event in events]
    assert names == ["retry.scheduled", "retry.scheduled", "retry.exhausted"]
    scheduled = events[0]
    assert scheduled.policy == "payments"
    assert scheduled.fields["attempt"] == 1
    assert isinstance(scheduled.error, ConnectionError)
    assert events[-1].level == logging.WARNING
    assert events[-1].fields == {"attempts": 3, "reason": "attempts"}


def test_budget_caps_retries_when_the_dependency_is_down(mode: str, events: list[Event]) -> None:
    """With everything failing, retries stay within ratio * calls + floor, and say so."""
    budget = RetryBudget(ratio=0.2, min_per_second=0.0, window=10.0)
    script = Script(ConnectionError("down"))
    call = protect(mode, script, retry=quick(3, budget=budget))
    with testing.fake_clock():
        for _ in range(100):
            with pytest.raises(ConnectionError):
                call()
    retries = script.calls - 100
    assert retries <= 0.2 * 100 + 1
    assert retries >= 0.2 * 100 - 2  # the budget is used, not merely refused
    assert any(event.name == "budget.exhausted" for event in events)


def test_budget_refills_as_the_window_slides(mode: str) -> None:
    """After the window passes, old calls and retries no longer count."""
    budget = RetryBudget(ratio=0.0, min_per_second=0.2, window=10.0)  # 2 retries per window
    script = Script(ConnectionError("down"))
    call = protect(mode, script, retry=quick(2, budget=budget))
    with testing.fake_clock() as clock:
        for _ in range(5):
            with pytest.raises(ConnectionError):
                call()
        assert script.calls == 5 + 2
        clock.advance(11.0)
        with pytest.raises(ConnectionError):
            call()
        assert script.calls == 7 + 2


def test_concurrent_calls_keep_their_own_retry_state() -> None:
    """One shared policy, many threads: each call's attempts are its own (tenacity#93)."""
    import threading  # noqa: PLC0415

    from resilient import Policy  # noqa: PLC0415

    policy = Policy(retry=quick(3, budget=None))
    attempts: dict[int, int] = {}
    lock = threading.Lock()

    @policy
    def flaky(ident: int) -> int:
        with lock:
            attempts[ident] = attempts.get(ident, 0) + 1
            count = attempts[ident]
        if count < 3:
            raise ConnectionError
        return ident

    results: list[int] = []
    threads = [threading.Thread(target=lambda i=i: results.append(flaky(i))) for i in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == list(range(32))
    assert set(attempts.values()) == {3}
