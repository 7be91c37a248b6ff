"""Timeouts: the total deadline, the per-attempt limit, real cancellation, bounded threads."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
import weakref

import pytest

from resilient import DeadlineExceededError, Policy, Retry, Timeout, deadline, resilient, testing
from resilient.instrumentation import Event

from ._scripts import quick
from .test_no_cyclic_garbage import cyclic_garbage


async def test_async_total_timeout_cancels_the_call(events: list[Event]) -> None:
    """A hung coroutine is cancelled at the deadline; the error is also a TimeoutError."""
    cancelled = asyncio.Event()

    @resilient(timeout=0.05)
    async def hang() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    started = time.monotonic()
    with pytest.raises(DeadlineExceededError) as raised:
        await hang()
    assert time.monotonic() - started < 1.0
    assert isinstance(raised.value, TimeoutError)
    assert raised.value.scope == "total"
    assert raised.value.timeout == pytest.approx(0.05)
    assert cancelled.is_set()
    assert [event.name for event in events] == ["timeout.exceeded"]


async def test_async_attempt_timeout_is_retried_within_the_total() -> None:
    """An attempt that times out is retried; the next attempt may succeed."""
    calls = 0

    @resilient(timeout=Timeout(total=5.0, attempt=0.05), retry=quick(3))
    async def slow_then_fast() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            await asyncio.Event().wait()
        return "ok"

    assert await slow_then_fast() == "ok"
    assert calls == 2


async def test_async_total_timeout_bounds_attempts_and_sleeps() -> None:
    """Attempts plus backoff never exceed the total: the deadline error ends the loop."""
    calls = 0

    @resilient(timeout=Timeout(total=0.2, attempt=0.05), retry=Retry(attempts=100, initial_delay=0.01, budget=None))
    async def always_hangs() -> None:
        nonlocal calls
        calls += 1
        await asyncio.Event().wait()

    started = time.monotonic()
    with pytest.raises(DeadlineExceededError):
        await always_hangs()
    elapsed = time.monotonic() - started
    assert elapsed < 0.2 + 0.15
    assert 2 <= calls < 100


async def test_an_async_users_own_timeout_error_is_not_relabelled() -> None:
    """A TimeoutError raised by the function itself keeps its identity."""
    original = TimeoutError("upstream said so")

    @resilient(timeout=5.0)
    async def fails() -> None:
        raise original

    with pytest.raises(TimeoutError) as raised:
        await fails()
    assert raised.value is original


def test_sync_cooperative_timeout_publishes_the_deadline() -> None:
    """Inside a sync call the remaining budget is readable, and is below the timeout."""
    seen: list[float | None] = []

    @resilient(timeout=2.0)
    def read_budget() -> None:
        seen.append(deadline.remaining())

    read_budget()
    assert seen[0] is not None
    assert 0 < seen[0] <= 2.0
    assert deadline.remaining() is None  # restored after the call


def test_sync_cooperative_overrun_keeps_the_result_and_reports_it(events: list[Event]) -> None:
    """Cooperative mode does not interrupt: a late result is returned and the overrun logged."""

    @resilient(timeout=Timeout(attempt=0.01))
    def late() -> str:
        time.sleep(0.03)
        return "late"

    assert late() == "late"
    assert [(e.name, e.fields["interrupted"]) for e in events] == [("timeout.exceeded", False)]


def test_sync_thread_mode_returns_at_the_deadline() -> None:
    """Thread mode: the caller gets DeadlineExceededError at the deadline, not when the call ends."""
    release = threading.Event()

    @resilient(timeout=Timeout(total=0.05, sync_mode="thread"))
    def hang() -> None:
        release.wait(5)

    started = time.monotonic()
    with pytest.raises(DeadlineExceededError):
        hang()
    assert time.monotonic() - started < 1.0
    release.set()


def test_sync_thread_mode_runs_with_the_callers_context_and_result() -> None:
    """Thread mode returns the value and sees the deadline contextvar."""

    @resilient(timeout=Timeout(total=1.0, sync_mode="thread"))
    def budget() -> float | None:
        return deadline.remaining()

    remaining = budget()
    assert remaining is not None
    assert 0 < remaining <= 1.0


def test_sync_thread_mode_bounds_abandoned_threads() -> None:
    """However many calls time out, at most `max_threads` workers ever exist."""
    release = threading.Event()
    policy = Policy(timeout=Timeout(total=0.02, sync_mode="thread", max_threads=3))

    @policy
    def hang() -> None:
        release.wait(5)

    before = threading.active_count()
    for _ in range(10):
        with pytest.raises(DeadlineExceededError):
            hang()
    assert threading.active_count() - before <= 3
    assert policy._compiled.runner is not None
    assert policy._compiled.runner.threads <= 3
    release.set()


def test_sync_thread_mode_gives_callers_arriving_together_a_worker_each() -> None:
    """Callers that queue work at the same instant each get a worker (up to `max_threads`): none times out."""
    callers = 8
    policy = Policy(timeout=Timeout(attempt=5.0, sync_mode="thread", max_threads=32))
    start = threading.Barrier(callers)
    all_inside = threading.Event()  # set by the last call to enter a worker: no timing guess
    lock = threading.Lock()
    inside = 0
    outcomes: list[str] = []

    @policy
    def call() -> str:
        nonlocal inside
        with lock:
            inside += 1
            if inside == callers:
                all_inside.set()
        all_inside.wait(30)  # returns only once every caller runs in a worker of its own
        return "ok"

    def caller() -> None:
        start.wait(10)
        try:
            outcome = call()
        except DeadlineExceededError:
            outcome = "timeout"
        with lock:
            outcomes.append(outcome)

    threads = [threading.Thread(target=caller) for _ in range(callers)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    finally:
        all_inside.set()
    assert outcomes == ["ok"] * callers
    assert policy._compiled.runner is not None
    assert policy._compiled.runner.threads == callers


class Payload:
    """A large argument (100 KB) a weak reference can watch."""

    def __init__(self) -> None:
        self.data = bytearray(100_000)


def test_sync_thread_mode_timed_out_calls_leave_nothing_queued() -> None:
    """While every worker hangs, a timed-out call leaves no work (nor its arguments) queued, and it never runs."""
    release = threading.Event()
    one_more_hung = threading.Semaphore(0)
    lock = threading.Lock()
    ran_after_timing_out = 0
    policy = Policy(timeout=Timeout(total=30.0, sync_mode="thread", max_threads=2))
    runner = policy._compiled.runner
    assert runner is not None

    @policy
    def call(payload: Payload | None, *, hang: bool) -> None:
        nonlocal ran_after_timing_out
        if hang:
            one_more_hung.release()
            release.wait(30)
        elif payload is not None:
            with lock:
                ran_after_timing_out += 1

    blockers = [threading.Thread(target=call, args=(None,), kwargs={"hang": True}) for _ in range(2)]
    try:
        for blocker in blockers:  # one at a time: each is running in its worker before the next starts
            blocker.start()
            assert one_more_hung.acquire(timeout=10)
        refs: list[weakref.ref[Payload]] = []
        timed_out = 0
        for _ in range(50):
            payload = Payload()
            refs.append(weakref.ref(payload))
            try:
                with deadline.scope(0.02):
                    call(payload, hang=False)
            except DeadlineExceededError:
                timed_out += 1
            del payload
        gc.collect()
        assert (timed_out, sum(ref() is not None for ref in refs)) == (50, 0)  # no payload is kept
        assert runner.backlog == 0
    finally:
        release.set()
        for blocker in blockers:
            if blocker.is_alive():
                blocker.join(30)
    call(None, hang=False)  # the pool serves again once the dependency recovers
    assert ran_after_timing_out == 0


def test_sync_thread_mode_failures_leave_no_reference_cycle() -> None:
    """A thread-mode call that raises (or returns) is freed at once: nothing waits for the cycle collector."""

    @resilient(timeout=Timeout(total=5.0, sync_mode="thread"))
    def call(fail: bool) -> str:
        if fail:
            raise KeyError("missing")
        return "ok"

    def failing() -> None:
        with pytest.raises(KeyError):
            call(True)

    assert cyclic_garbage(lambda: call(False)) == []
    assert cyclic_garbage(failing) == []


def test_sync_thread_mode_keeps_the_functions_own_timeout_error() -> None:
    """A TimeoutError the function raises itself (a socket timeout) reaches the caller as it is, not as the deadline."""
    own = TimeoutError("read timed out")

    @resilient(timeout=Timeout(total=5.0, sync_mode="thread"))
    def call() -> None:
        raise own

    with pytest.raises(TimeoutError) as raised:
        call()
    assert raised.value is own


def test_nested_calls_clamp_to_the_outer_deadline() -> None:
    """A nested policy with a longer timeout sees the outer, shorter deadline."""
    seen: list[float | None] = []

    @resilient(timeout=10.0)
    def inner() -> None:
        seen.append(deadline.remaining())

    @resilient(timeout=0.5)
    def outer() -> None:
        inner()

    outer()
    assert seen[0] is not None
    assert seen[0] <= 0.5


async def test_nested_async_calls_clamp_to_the_outer_deadline() -> None:
    """An inner async timeout of 10 s is cancelled by the outer 0.05 s deadline."""

    @resilient(timeout=10.0)
    async def inner() -> None:
        await asyncio.Event().wait()

    @resilient(timeout=0.05)
    async def outer() -> None:
        await inner()

    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await outer()
    assert time.monotonic() - started < 1.0


def test_deadline_scope_nests_and_restores() -> None:
    """`deadline.scope` clamps to an enclosing deadline and restores it on exit."""
    with testing.fake_clock() as clock:
        assert deadline.remaining() is None
        with deadline.scope(5.0):
            assert deadline.remaining() == pytest.approx(5.0)
            with deadline.scope(10.0):
                assert deadline.remaining() == pytest.approx(5.0)
            clock.advance(2.0)
            assert deadline.remaining() == pytest.approx(3.0)
            clock.advance(10.0)
            assert deadline.remaining() == 0.0
        assert deadline.current() is None


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("1500", 1.5),
        (b"250", 0.25),
        ("0", 0.0),
        (" 42 ", 0.042),
        ("-5", None),
        ("abc", None),
        ("", None),
        ("1e3", None),
        ("9" * 20, None),
        (None, None),
    ],
)
def test_deadline_header_parsing_never_fails(header: str | bytes | None, expected: float | None) -> None:
    """Malformed deadline headers are ignored, valid ones become seconds."""
    assert deadline.parse_header(header) == expected


def test_deadline_header_round_trips() -> None:
    """What format_header writes, parse_header reads back (to the millisecond, rounded down)."""
    assert deadline.parse_header(deadline.format_header(1.2345)) == 1.234
    assert deadline.format_header(-1.0) == "0"


@pytest.mark.parametrize("bad", [-1.0, float("nan")])
def test_deadline_scope_rejects_bad_seconds(bad: float) -> None:
    """A negative or NaN deadline is a programming error, reported at once."""
    with pytest.raises(ValueError, match="deadline seconds"), deadline.scope(bad):
        pass


async def test_an_outside_cancellation_is_not_turned_into_a_timeout() -> None:
    """Cancelling the caller's task propagates CancelledError, never DeadlineExceededError."""
    entered = asyncio.Event()

    @resilient(timeout=5.0, retry=quick(3, on=Exception))
    async def hang() -> None:
        entered.set()
        await asyncio.Event().wait()

    task = asyncio.create_task(hang())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_timeout_inside_asyncio_timeout_is_ours_and_the_outer_still_works() -> None:
    """Our deadline fires first inside a longer asyncio.timeout; the outer is unaffected."""

    @resilient(timeout=0.02)
    async def hang() -> None:
        await asyncio.Event().wait()

    async with asyncio.timeout(5):
        with pytest.raises(DeadlineExceededError):
            await hang()
        await asyncio.sleep(0)  # no stray cancellation is left pending on the task


def test_sync_total_overrun_is_reported_too(events: list[Event]) -> None:
    """With only a total timeout, a cooperative call that ends late is reported, not discarded."""

    @resilient(timeout=0.01)
    def late() -> str:
        time.sleep(0.03)
        return "late"

    assert late() == "late"
    assert [(e.name, e.fields["scope"], e.fields["interrupted"]) for e in events] == [
        ("timeout.exceeded", "total", False)
    ]


async def test_a_call_that_swallows_our_cancellation_leaves_no_pending_cancel() -> None:
    """If the function eats the CancelledError, our cancel request is withdrawn from the task."""

    @resilient(timeout=0.02)
    async def stubborn() -> str:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            return "swallowed"
        return "unreachable"

    assert await stubborn() == "swallowed"
    task = asyncio.current_task()
    assert task is not None
    assert task.cancelling() == 0
    await asyncio.sleep(0)  # and no stray cancellation arrives at the next await


async def test_concurrent_deadlines_each_fire_on_time() -> None:
    """Calls with different timeouts sharing the loop's watchdog each end near their own deadline."""
    from resilient._strategies.timeout import watchdog_for  # noqa: PLC0415

    async def timed(seconds: float) -> float:
        @resilient(timeout=seconds)
        async def hang() -> None:
            await asyncio.Event().wait()

        started = time.monotonic()
        with pytest.raises(DeadlineExceededError):
            await hang()
        return time.monotonic() - started

    timeouts = [0.2, 0.05, 0.15, 0.1, 0.05, 0.2]
    elapsed = await asyncio.gather(*(timed(t) for t in timeouts))
    for limit, took in zip(timeouts, elapsed, strict=True):
        assert limit <= took + 0.005  # never early (beyond clock resolution)
        assert took < limit + 0.1  # and promptly after
    assert not watchdog_for(asyncio.get_running_loop())._watches  # nothing left armed


async def test_finished_calls_leave_nothing_armed() -> None:
    """Thousands of fast calls under a timeout keep the watchdog's set empty (memory follows concurrency)."""
    from resilient._strategies.timeout import watchdog_for  # noqa: PLC0415

    @resilient(timeout=5.0)
    async def fast() -> int:
        return 1

    assert sum(await asyncio.gather(*(fast() for _ in range(2000)))) == 2000
    assert not watchdog_for(asyncio.get_running_loop())._watches


# Which limit ran out, as the error and the `timeout.exceeded` event name it: the attempt's
# own, the policy's total, or a deadline inherited from the caller.


@pytest.mark.parametrize(
    ("total", "attempt", "scope"),
    [(5.0, 0.03, "attempt"), (0.03, 5.0, "total")],
    ids=["the attempt's own limit", "a total tighter than the attempt"],
)
async def test_an_exceeded_limit_names_its_scope_and_timeout(total: float, attempt: float, scope: str) -> None:
    @resilient(timeout=Timeout(total=total, attempt=attempt))
    async def hang() -> None:
        await asyncio.Event().wait()

    with pytest.raises(DeadlineExceededError) as raised:
        await hang()
    assert raised.value.scope == scope
    assert raised.value.timeout == pytest.approx(0.03)


async def test_an_inherited_deadline_names_the_inherited_scope_and_the_budget_left() -> None:
    @resilient(timeout=Timeout(attempt=5.0))
    async def hang() -> None:
        await asyncio.Event().wait()

    with deadline.scope(0.2), pytest.raises(DeadlineExceededError) as raised:
        await hang()
    assert raised.value.scope == "inherited"
    assert 0 < raised.value.timeout <= 0.2  # what was left of the caller's budget


def test_a_sync_attempt_timeout_in_thread_mode_names_the_attempt_scope() -> None:
    release = threading.Event()

    @resilient(timeout=Timeout(total=5.0, attempt=0.03, sync_mode="thread"))
    def hang() -> None:
        release.wait(5)

    try:
        with pytest.raises(DeadlineExceededError) as raised:
            hang()
    finally:
        release.set()
    assert raised.value.scope == "attempt"
    assert raised.value.timeout == pytest.approx(0.03)
