"""Circuit breaker: opening, failing fast, bounded half-open probes, no lock over the call."""

from __future__ import annotations

import asyncio
import threading
import time

import pybreaker
import pytest

from resilient import CircuitBreaker, CircuitOpenError, Policy, Retry, resilient, testing
from resilient.instrumentation import Event

from ._scripts import MODES, Script, protect


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _fail_n(call: object, n: int) -> None:
    for _ in range(n):
        with pytest.raises(ConnectionError):
            call()  # type: ignore[operator]


def test_opens_after_consecutive_failures_and_fails_fast(mode: str, events: list[Event]) -> None:
    """After `failure_threshold` failures the function is no longer called."""
    script = Script(ConnectionError("down"))
    call = protect(mode, script, breaker=CircuitBreaker(name="dep", failure_threshold=3, reset_timeout=30))
    _fail_n(call, 3)
    with pytest.raises(CircuitOpenError) as raised:
        call()
    assert script.calls == 3
    assert raised.value.breaker == "dep"
    assert 29 < raised.value.retry_after <= 30
    assert testing.breaker_state("dep") == "open"
    assert [e.name for e in events if e.name.startswith("breaker.")][:1] == ["breaker.opened"]


def test_a_success_resets_the_consecutive_count(mode: str) -> None:
    """Failures must be consecutive to open the breaker."""
    script = Script(ConnectionError(), ConnectionError(), "ok", ConnectionError(), ConnectionError(), "ok")
    call = protect(mode, script, breaker=CircuitBreaker(name="dep", failure_threshold=3))
    for _ in range(2):
        _fail_n(call, 2)
        assert call() == "ok"
    assert testing.breaker_state("dep") == "closed"


def test_excluded_business_errors_do_not_count(mode: str) -> None:
    """An error listed in `exclude` is the caller's problem, not the dependency's."""
    script = Script(LookupError("no such order"))
    call = protect(mode, script, breaker=CircuitBreaker(name="dep", failure_threshold=2, exclude=(LookupError,)))
    for _ in range(5):
        with pytest.raises(LookupError):
            call()
    assert testing.breaker_state("dep") == "closed"


def test_half_open_probe_success_closes(mode: str, events: list[Event]) -> None:
    """After the reset timeout one probe goes through; its success closes the breaker."""
    script = Script(ConnectionError(), ConnectionError(), "ok")
    with testing.fake_clock() as clock:
        call = protect(mode, script, breaker=CircuitBreaker(name="dep", failure_threshold=2, reset_timeout=10))
        _fail_n(call, 2)
        clock.advance(10.0)
        assert call() == "ok"
    assert testing.breaker_state("dep") == "closed"
    transitions = [e.name for e in events if e.name in {"breaker.opened", "breaker.half_opened", "breaker.closed"}]
    assert transitions == ["breaker.opened", "breaker.half_opened", "breaker.closed"]


def test_half_open_probe_failure_reopens(mode: str) -> None:
    """A failed probe opens the breaker for another full reset timeout."""
    script = Script(ConnectionError())
    with testing.fake_clock() as clock:
        call = protect(mode, script, breaker=CircuitBreaker(name="dep", failure_threshold=1, reset_timeout=10))
        _fail_n(call, 1)
        clock.advance(10.0)
        _fail_n(call, 1)
        with pytest.raises(CircuitOpenError) as raised:
            call()
    assert raised.value.retry_after == pytest.approx(10.0)
    assert script.calls == 2


def test_failure_rate_model_opens_on_the_window(mode: str) -> None:
    """With `failure_rate`, the breaker opens when the rate over the window reaches it."""
    outcomes: list[object] = ["ok", ConnectionError()] * 5
    script = Script(*outcomes, "ok")
    breaker = CircuitBreaker(name="rate", failure_rate=0.5, window=10, minimum_calls=10)
    call = protect(mode, script, breaker=breaker)
    for outcome in outcomes[:-1]:
        if isinstance(outcome, Exception):
            _fail_n(call, 1)
        else:
            call()
    assert testing.breaker_state("rate") == "closed"  # 9 calls: below minimum_calls
    _fail_n(call, 1)
    assert testing.breaker_state("rate") == "open"


def test_slow_calls_count_as_failures() -> None:
    """A call slower than `slow_call_duration` counts against the breaker."""

    @resilient(breaker=CircuitBreaker(name="slow", failure_threshold=2, slow_call_duration=0.01))
    def slow() -> str:
        time.sleep(0.02)
        return "late"

    assert slow() == "late"
    assert slow() == "late"
    assert testing.breaker_state("slow") == "open"


def test_a_breaker_opened_by_this_call_ends_its_retries_with_the_real_error(mode: str) -> None:
    """When an attempt's failure opens the breaker, no backoff is slept: the original error is raised."""
    last = ConnectionError("second")
    script = Script(ConnectionError("first"), last)
    call = protect(
        mode,
        script,
        retry=Retry(attempts=5, initial_delay=0, max_delay=0, budget=None),
        breaker=CircuitBreaker(name="dep", failure_threshold=2),
    )
    with testing.no_wait() as waits, pytest.raises(ConnectionError) as raised:
        call()
    assert raised.value is last
    assert script.calls == 2
    assert waits == [0.0]  # one backoff, between the two attempts; none after the breaker opened


def test_a_retried_call_re_enters_the_breaker(mode: str) -> None:
    """Each attempt passes the breaker: if it opened during the backoff, the retry fails fast."""
    from resilient._kernel.clock import CLOCK  # noqa: PLC0415

    breaker = CircuitBreaker(name="shared-dep", failure_threshold=2)
    script = Script(TimeoutError("slow"), "never reached")
    call = protect(mode, script, retry=Retry(attempts=3, initial_delay=0.1, budget=None), breaker=breaker)

    @resilient(breaker="shared-dep")
    def other_caller() -> None:
        raise ConnectionError("down")

    def during_backoff(seconds: float) -> None:  # another caller trips the shared breaker meanwhile
        with pytest.raises(ConnectionError):
            other_caller()

    with testing.fake_clock():
        CLOCK.on_skipped_wait = during_backoff
        with pytest.raises(CircuitOpenError):
            call()
    assert script.calls == 1


def test_breakers_are_shared_by_name() -> None:
    """Two functions naming the same breaker trip it together."""

    @resilient(breaker=CircuitBreaker(name="shared", failure_threshold=2))
    def a() -> None:
        raise ConnectionError

    @resilient(breaker="shared")
    def b() -> str:
        return "never reached"

    _fail_n(a, 2)
    with pytest.raises(CircuitOpenError):
        b()


def test_an_existing_pybreaker_is_driven_with_its_listeners() -> None:
    """A user's pybreaker.CircuitBreaker keeps its storage, thresholds and listeners."""
    changes: list[tuple[str, str]] = []

    class Recorder(pybreaker.CircuitBreakerListener):
        def state_change(self, cb: pybreaker.CircuitBreaker, old: object, new: object) -> None:
            changes.append((getattr(old, "name", "?"), getattr(new, "name", "?")))

    legacy = pybreaker.CircuitBreaker(fail_max=2, reset_timeout=60, listeners=[Recorder()], name="legacy")

    @resilient(breaker=legacy)
    def call() -> None:
        raise ConnectionError

    _fail_n(call, 2)
    assert legacy.current_state == "open"
    assert changes == [("closed", "open")]
    with pytest.raises(CircuitOpenError):
        call()


def test_eight_threads_through_one_breaker_run_in_parallel() -> None:
    """No lock is held over the call: 8 threads x 0.1 s take ~0.1 s, not 0.8 s."""
    barrier = threading.Barrier(8)

    @resilient(breaker=CircuitBreaker(name="parallel"))
    def work() -> None:
        time.sleep(0.1)

    def run() -> None:
        barrier.wait()
        work()

    threads = [threading.Thread(target=run) for _ in range(8)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert time.monotonic() - started < 0.3


async def test_a_hundred_tasks_through_one_breaker_run_concurrently() -> None:
    """100 concurrent tasks through one breaker overlap fully."""
    inside = 0
    peak = 0
    all_in = asyncio.Event()

    @resilient(breaker=CircuitBreaker(name="tasks"))
    async def work() -> None:
        nonlocal inside, peak
        inside += 1
        peak = max(peak, inside)
        if inside == 100:
            all_in.set()
        await all_in.wait()
        inside -= 1

    await asyncio.wait_for(asyncio.gather(*(work() for _ in range(100))), 5)
    assert peak == 100


@pytest.mark.parametrize("probes", [1, 3])
def test_half_open_admits_exactly_the_configured_probes_threads(probes: int) -> None:
    """20 concurrent callers after the reset timeout: exactly `probes` reach the function."""
    release = threading.Event()
    reached = 0
    settled = threading.Condition()
    fail = True

    @resilient(breaker=CircuitBreaker(name="probe", failure_threshold=1, reset_timeout=5, half_open_max_calls=probes))
    def dependency() -> None:
        nonlocal reached
        if fail:
            raise ConnectionError
        with settled:
            reached += 1
            settled.notify()
        release.wait(5)

    rejected = 0
    start = threading.Barrier(21)

    def caller() -> None:
        nonlocal rejected
        start.wait()
        try:
            dependency()
        except CircuitOpenError:
            with settled:
                rejected += 1
                settled.notify()

    with testing.fake_clock() as clock:
        _fail_n(dependency, 1)
        fail = False
        clock.advance(5.0)
        threads = [threading.Thread(target=caller) for _ in range(20)]
        for thread in threads:
            thread.start()
        start.wait()
        with settled:  # every caller has either been rejected or is inside the function
            assert settled.wait_for(lambda: rejected + reached == 20, timeout=5)
        assert reached == probes
        assert rejected == 20 - probes
        release.set()
        for thread in threads:
            thread.join()
    assert testing.breaker_state("probe") == "closed"


@pytest.mark.parametrize("probes", [1, 2])
async def test_half_open_admits_exactly_the_configured_probes_tasks(probes: int) -> None:
    """The same for asyncio tasks: exactly `probes` of 20 get through."""
    release = asyncio.Event()
    reached = 0
    fail = True

    @resilient(breaker=CircuitBreaker(name="aprobe", failure_threshold=1, reset_timeout=5, half_open_max_calls=probes))
    async def dependency() -> None:
        nonlocal reached
        if fail:
            raise ConnectionError
        reached += 1
        await release.wait()

    with testing.fake_clock() as clock:
        with pytest.raises(ConnectionError):
            await dependency()
        fail = False
        clock.advance(5.0)
        tasks = [asyncio.create_task(dependency()) for _ in range(20)]
        done, _ = await asyncio.wait(tasks, timeout=0.5)  # the rejected ones finish at once
        assert len(done) == 20 - probes
        assert all(isinstance(task.exception(), CircuitOpenError) for task in done)
        assert reached == probes
        release.set()
        await asyncio.gather(*(t for t in tasks if t not in done))
    assert testing.breaker_state("aprobe") == "closed"


async def test_a_cancelled_probe_gives_its_slot_back() -> None:
    """A probe cancelled mid-call does not leave the breaker stuck half-open."""
    hang = asyncio.Event()

    @resilient(breaker=CircuitBreaker(name="cancel", failure_threshold=1, reset_timeout=1))
    async def dependency(fail: bool) -> str:
        if fail:
            raise ConnectionError
        await hang.wait()
        return "ok"

    with testing.fake_clock() as clock:
        with pytest.raises(ConnectionError):
            await dependency(fail=True)
        clock.advance(1.0)
        probe = asyncio.create_task(dependency(fail=False))
        await asyncio.sleep(0)
        probe.cancel()
        with pytest.raises(asyncio.CancelledError):
            await probe
        hang.set()
        assert await dependency(fail=False) == "ok"


def test_reset_breakers_closes_everything() -> None:
    """`testing.reset_breakers()` closes every named breaker."""
    call = protect("sync", Script(ConnectionError()), breaker=CircuitBreaker(name="dep", failure_threshold=1))
    _fail_n(call, 1)
    assert testing.breaker_state("dep") == "open"
    testing.reset_breakers()
    assert testing.breaker_state("dep") == "closed"


def test_policy_shares_breaker_between_sync_and_async() -> None:
    """One Policy decorating a sync and an async function drives one breaker."""
    policy = Policy(breaker=CircuitBreaker(name="both", failure_threshold=2))

    @policy
    def sync_fail() -> None:
        raise ConnectionError

    @policy
    async def async_call() -> str:
        return "unreachable"

    _fail_n(sync_fail, 2)
    with pytest.raises(CircuitOpenError):
        asyncio.run(async_call())


# A retried call through a closed breaker with nothing to record on success skips the
# attempt layer (`BreakerRuntime.quiet`): its failures must still count, and its success
# must still clear a failure another caller counted while it ran.

_RETRY_ONCE = Retry(attempts=2, initial_delay=0, max_delay=0, budget=None, on=TimeoutError)


def test_a_retried_call_through_a_closed_breaker_still_counts_each_failed_attempt(mode: str) -> None:
    script = Script(ConnectionError("one"), ConnectionError("two"), "unreachable")
    retry = Retry(attempts=3, initial_delay=0, max_delay=0, budget=None)
    call = protect(mode, script, retry=retry, breaker=CircuitBreaker(name="dep", failure_threshold=2))
    with testing.no_wait(), pytest.raises(ConnectionError):
        call()
    assert script.calls == 2
    assert testing.breaker_state("dep") == "open"


def test_a_success_ending_after_another_callers_failure_resets_the_count_threads() -> None:
    entered, release = threading.Event(), threading.Event()

    @resilient(retry=_RETRY_ONCE, breaker=CircuitBreaker(name="dep", failure_threshold=2))
    def slow_success() -> str:
        entered.set()
        release.wait(5)
        return "ok"

    @resilient(breaker="dep")
    def failing() -> None:
        raise ConnectionError("down")

    results: list[str] = []
    thread = threading.Thread(target=lambda: results.append(slow_success()))
    thread.start()
    assert entered.wait(5)  # admitted while the breaker had no failure to clear
    _fail_n(failing, 1)
    release.set()
    thread.join(5)
    _fail_n(failing, 1)  # counts from zero again: the success in between cleared the first
    assert results == ["ok"]
    assert testing.breaker_state("dep") == "closed"


async def test_a_success_ending_after_another_callers_failure_resets_the_count_tasks() -> None:
    entered, release = asyncio.Event(), asyncio.Event()

    @resilient(retry=_RETRY_ONCE, breaker=CircuitBreaker(name="dep", failure_threshold=2))
    async def slow_success() -> str:
        entered.set()
        await release.wait()
        return "ok"

    @resilient(breaker="dep")
    async def failing() -> None:
        raise ConnectionError("down")

    task = asyncio.create_task(slow_success())
    await entered.wait()
    with pytest.raises(ConnectionError):
        await failing()
    release.set()
    assert await task == "ok"
    with pytest.raises(ConnectionError):
        await failing()
    assert testing.breaker_state("dep") == "closed"


def test_a_stale_probe_success_does_not_close_the_next_half_open_period() -> None:
    """A probe admitted in a half-open period that already failed reports into that period only."""
    stale_inside = threading.Event()
    release_stale = threading.Event()
    fresh_inside = threading.Event()
    release_fresh = threading.Event()

    @resilient(breaker=CircuitBreaker(name="stale", failure_threshold=1, reset_timeout=10, half_open_max_calls=2))
    def dependency(action: str) -> str:
        if action == "fail":
            raise ConnectionError
        if action == "ok":
            return action
        inside, release = (stale_inside, release_stale) if action == "stale" else (fresh_inside, release_fresh)
        inside.set()
        assert release.wait(5)
        return action

    results: dict[str, object] = {}

    def call(action: str) -> None:
        try:
            results[action] = dependency(action)
        except Exception as error:  # recorded for the asserts below
            results[action] = error

    with testing.fake_clock() as clock:
        _fail_n(lambda: dependency("fail"), 1)
        clock.advance(10.0)  # half-open period 1: two probes
        stale = threading.Thread(target=call, args=("stale",))
        stale.start()
        assert stale_inside.wait(5)
        _fail_n(lambda: dependency("fail"), 1)  # the other probe of period 1 fails: open again
        assert testing.breaker_state("stale") == "open"
        clock.advance(10.0)  # half-open period 2
        fresh = threading.Thread(target=call, args=("fresh",))
        fresh.start()
        assert fresh_inside.wait(5)
        release_stale.set()
        stale.join(5)
        assert results["stale"] == "stale"
        assert testing.breaker_state("stale") == "half-open"  # period 1's probe closed nothing
        assert dependency("ok") == "ok"  # period 2's second probe slot is still free
        assert testing.breaker_state("stale") == "closed"
        release_fresh.set()
        fresh.join(5)
    assert results["fresh"] == "fresh"
    _fail_n(lambda: dependency("fail"), 1)  # probe counts stayed sane: closed, then opens as usual
    with pytest.raises(CircuitOpenError):
        dependency("fail")
