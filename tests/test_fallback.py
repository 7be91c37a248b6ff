"""Fallback: a final failure it is configured for becomes a value; everything else propagates.

Each scenario runs through a decorated sync function and a decorated async function (the
`mode` fixture).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, cast

import pytest

from resilient import (
    CircuitBreaker,
    CircuitOpenError,
    Fallback,
    Policy,
    RateLimitedError,
    ResilienceError,
    Retry,
    instrumentation,
)
from resilient.testing import fake_clock, no_wait

from ._scripts import protect_awaitable as protect


@pytest.fixture(params=["sync", "async"])
def mode(request: pytest.FixtureRequest) -> str:
    """Run a scenario through a sync and through an async decorated function."""
    return cast("str", request.param)


def raising(error: BaseException) -> Callable[..., Any]:
    """A function body that raises `error`."""

    def body(*_: Any) -> Any:
        raise error

    return body


def recording(seen: list[BaseException], value: str) -> Callable[[BaseException], str]:
    """A fallback handler that records the exception it answers and returns `value`."""

    def handler(exc: BaseException) -> str:
        seen.append(exc)
        return value

    return handler


async def test_plain_value_replaces_a_failure(mode: str) -> None:
    """A non-callable fallback is returned as is when the function fails."""
    call = protect(Policy(fallback=Fallback([])), raising(ConnectionError("down")), mode)
    assert await call() == []


async def test_shorthand_value(mode: str) -> None:
    """`fallback=0` is `Fallback(0)`."""
    call = protect(Policy(fallback=0), raising(ConnectionError("down")), mode)
    assert await call() == 0


async def test_fallback_to_none_needs_the_config_object(mode: str) -> None:
    """`Fallback(None)` returns None on failure (the shorthand `fallback=None` means no fallback)."""
    error = ConnectionError("down")
    assert await protect(Policy(fallback=Fallback(None)), raising(error), mode)() is None
    with pytest.raises(ConnectionError):
        await protect(Policy(fallback=None), raising(error), mode)()


async def test_callable_receives_the_exception(mode: str) -> None:
    """A callable fallback is called with the final exception and its result returned."""
    error = ConnectionError("down")
    seen: list[BaseException] = []

    def handler(exc: BaseException) -> str:
        seen.append(exc)
        return "cached"

    assert await protect(Policy(fallback=handler), raising(error), mode)() == "cached"
    assert seen == [error]


async def test_success_does_not_touch_the_fallback(mode: str, events: list[instrumentation.Event]) -> None:
    """A call that succeeds returns its own value and the handler is not called."""
    calls: list[BaseException] = []
    call = protect(Policy(fallback=calls.append), lambda: "real", mode)
    assert await call() == "real"
    assert calls == []
    assert not [event for event in events if event.name == "fallback.used"]


async def test_async_handler_on_async_function() -> None:
    """An async handler is awaited when it answers an async function's failure."""

    async def handler(exc: BaseException) -> str:
        await asyncio.sleep(0)
        return f"async {type(exc).__name__}"

    @Policy(fallback=handler)
    async def fetch() -> str:
        raise ConnectionError

    assert await fetch() == "async ConnectionError"


async def test_async_callable_object_handler_is_awaited() -> None:
    """A handler object whose __call__ is async is awaited like an async function."""

    class Handler:
        async def __call__(self, exc: BaseException) -> str:
            return "from object"

    @Policy(fallback=Handler())
    async def fetch() -> str:
        raise ConnectionError

    result = await fetch()
    if asyncio.iscoroutine(result):  # the bug: the handler's coroutine comes back unawaited
        result.close()
    assert result == "from object"


@pytest.mark.parametrize(
    ("on", "answered", "propagated"),
    [
        (ConnectionError, ConnectionRefusedError("child class"), KeyError("other")),
        ((KeyError, TimeoutError), TimeoutError("listed"), ConnectionError("not listed")),
        (lambda exc: "retryable" in str(exc), RuntimeError("retryable"), RuntimeError("fatal")),
    ],
    ids=["type", "tuple", "predicate"],
)
async def test_on_limits_which_failures_are_answered(
    mode: str, on: Any, answered: Exception, propagated: Exception
) -> None:
    """With `on=`, only matching failures become the value; others propagate unchanged."""
    policy = Policy(fallback=Fallback("fallback", on=on))
    assert await protect(policy, raising(answered), mode)() == "fallback"
    with pytest.raises(type(propagated)) as caught:
        await protect(policy, raising(propagated), mode)()
    assert caught.value is propagated


async def test_open_circuit_is_answered_by_default(mode: str) -> None:
    """A CircuitOpenError rejection is answered by a default fallback."""
    seen: list[BaseException] = []
    policy = Policy(
        breaker=CircuitBreaker(name="fallback-open", failure_threshold=1),
        fallback=recording(seen, "degraded"),
    )
    call = protect(policy, raising(ConnectionError("down")), mode)
    assert await call() == "degraded"  # the failure that opens the circuit
    assert await call() == "degraded"  # rejected by the open circuit
    assert isinstance(seen[0], ConnectionError)
    assert isinstance(seen[1], CircuitOpenError)
    assert seen[1].breaker == "fallback-open"


async def test_rate_limit_rejection_is_answered_by_default(mode: str) -> None:
    """A RateLimitedError rejection is answered by a default fallback, without calling the function."""
    body_calls: list[int] = []

    def body() -> str:
        body_calls.append(1)
        return "ran"

    policy = Policy(rate_limit="1/minute", fallback=lambda exc: type(exc).__name__)
    with fake_clock():
        call = protect(policy, body, mode)
        assert await call() == "ran"
        assert await call() == "RateLimitedError"
    assert body_calls == [1]


async def test_on_can_exclude_rejections(mode: str) -> None:
    """`on=` naming only the user's errors lets the library's rejections propagate."""
    policy = Policy(rate_limit="1/minute", fallback=Fallback("cached", on=ConnectionError))
    with fake_clock():
        call = protect(policy, raising(ConnectionError()), mode)
        assert await call() == "cached"
        with pytest.raises(RateLimitedError):
            await call()


async def test_fallback_answers_after_retries_are_exhausted(mode: str) -> None:
    """The fallback sees the last original exception once every retry has failed."""
    errors = [ConnectionError(str(attempt)) for attempt in range(3)]
    remaining = list(errors)

    def body() -> None:
        raise remaining.pop(0)

    seen: list[BaseException] = []
    policy = Policy(retry=Retry(attempts=3, budget=None), fallback=recording(seen, "after retries"))
    with no_wait():
        assert await protect(policy, body, mode)() == "after retries"
    assert seen == [errors[2]]


@pytest.mark.parametrize("error_type", [KeyboardInterrupt, SystemExit, asyncio.CancelledError])
async def test_interrupts_and_cancellation_are_never_answered(mode: str, error_type: type[BaseException]) -> None:
    """KeyboardInterrupt, SystemExit and CancelledError propagate even with a catch-all fallback."""
    handler_calls: list[BaseException] = []
    call = protect(Policy(fallback=handler_calls.append), raising(error_type()), mode)
    with pytest.raises(error_type):
        await call()
    assert handler_calls == []


async def test_task_cancellation_is_not_answered() -> None:
    """Cancelling the task running a protected call cancels it; the fallback stays out of it."""
    started = asyncio.Event()
    handler_calls: list[BaseException] = []

    @Policy(fallback=handler_calls.append)
    async def slow() -> None:
        started.set()
        await asyncio.Event().wait()

    task = asyncio.create_task(slow())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert handler_calls == []


async def test_a_failing_handler_propagates_its_own_error(mode: str) -> None:
    """When the handler raises, the caller gets the handler's error, chained to the original."""
    original = ConnectionError("down")
    handler_error = LookupError("no cached value")

    def handler(exc: BaseException) -> None:
        raise handler_error

    with pytest.raises(LookupError) as caught:
        await protect(Policy(fallback=handler), raising(original), mode)()
    assert caught.value is handler_error
    assert caught.value.__context__ is original


async def test_fallback_used_event(mode: str, events: list[instrumentation.Event]) -> None:
    """Answering a failure emits `fallback.used` with the policy and the answered error."""
    error = ConnectionError("down")
    await protect(Policy(name="profile", fallback="anonymous"), raising(error), mode)()
    used = [event for event in events if event.name == "fallback.used"]
    assert len(used) == 1
    assert used[0].policy == "profile"
    assert used[0].error is error


async def test_propagated_failures_emit_no_fallback_event(mode: str, events: list[instrumentation.Event]) -> None:
    """A failure the fallback does not handle emits no `fallback.used`."""
    with pytest.raises(KeyError):
        await protect(Policy(fallback=Fallback(1, on=ConnectionError)), raising(KeyError()), mode)()
    assert not [event for event in events if event.name == "fallback.used"]


def test_sync_function_with_async_handler_is_rejected_at_decoration() -> None:
    """Decorating a sync function with an async fallback handler raises TypeError at once."""

    async def handler(exc: BaseException) -> int:
        return 1

    policy = Policy(fallback=handler)

    def fetch() -> int:
        return 0

    with pytest.raises(TypeError, match=r"async.*sync function"):
        policy(fetch)


def test_policy_call_with_async_handler_is_rejected() -> None:
    """Policy.call (a sync run) with an async fallback handler raises TypeError, like the decorator."""

    async def handler(exc: BaseException) -> int:
        return 1

    def fetch() -> int:
        raise ConnectionError

    try:
        result = Policy(fallback=handler).call(fetch)
    except TypeError:
        return
    if asyncio.iscoroutine(result):  # the bug: an unawaited coroutine comes back as the value
        result.close()
    pytest.fail(f"Policy.call returned {result!r}")


def test_fallback_is_a_resilience_layer_not_an_error_wrapper() -> None:
    """Rejections the fallback answers are ResilienceErrors; the user's errors are not wrapped."""
    seen: list[BaseException] = []
    with fake_clock():
        policy = Policy(rate_limit="1/minute", fallback=seen.append)
        policy.call(raising(ConnectionError()))
        policy.call(raising(ConnectionError()))
    assert type(seen[0]) is ConnectionError
    assert isinstance(seen[1], RateLimitedError)
    assert isinstance(seen[1], ResilienceError)
