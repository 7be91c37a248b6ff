"""Rate limit: admission before any work, reject with `retry_after` or wait up to `max_wait`.

Scenarios run through a decorated sync function and a decorated async function alike
(the `mode` fixture). Time is a `resilient.testing.fake_clock()`: the limiter's windows
read it and its waits advance it, so nothing here sleeps.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any, cast

import limits
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resilient import Policy, RateLimit, RateLimitedError, Retry, deadline, instrumentation
from resilient._kernel.clock import CLOCK
from resilient._strategies.rate_windows import MovingWindow
from resilient._strategies.ratelimit import ALGORITHMS, Algorithm, LimiterRuntime
from resilient.testing import FakeClock, fake_clock

from ._scripts import protect_awaitable as protect


@pytest.fixture(params=["sync", "async"])
def mode(request: pytest.FixtureRequest) -> str:
    """Run a scenario through a sync and through an async decorated function."""
    return cast("str", request.param)


@pytest.fixture
def clock() -> Iterator[FakeClock]:
    """A fake clock that the limiter reads and that its waits advance."""
    with fake_clock() as fake:
        yield fake


class Counter:
    """A protected function body that counts its calls and echoes its arguments."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def __call__(self, *args: Any) -> str:
        self.calls.append(args)
        return "ok"


def limiter_of(policy: Policy) -> LimiterRuntime:
    """The compiled limiter of a policy."""
    limiter = policy._compiled.limiter
    assert limiter is not None
    return limiter


# ---------------------------------------------------------------- behaviour through the decorator


@pytest.mark.parametrize("algorithm", ALGORITHMS)
async def test_admits_limit_calls_then_rejects(mode: str, algorithm: Algorithm, clock: FakeClock) -> None:
    """Each algorithm admits `limit` calls, then raises RateLimitedError with a positive retry_after."""
    body = Counter()
    call = protect(Policy(rate_limit=RateLimit("3/minute", algorithm=algorithm)), body, mode)
    for _ in range(3):
        assert await call() == "ok"
    with pytest.raises(RateLimitedError) as caught:
        await call()
    assert len(body.calls) == 3
    assert caught.value.limit == "3/minute"
    assert 0 < caught.value.retry_after <= 120
    assert caught.value.key == ""
    assert "3/minute" in str(caught.value)
    assert clock.now == 1_000.0  # no wait happened


@pytest.mark.parametrize("algorithm", ALGORITHMS)
async def test_admits_again_once_the_window_has_passed(mode: str, algorithm: Algorithm, clock: FakeClock) -> None:
    """After the rejection's retry_after has elapsed the limiter admits a call again."""
    call = protect(Policy(rate_limit=RateLimit("2/second", algorithm=algorithm)), Counter(), mode)
    await call()
    await call()
    with pytest.raises(RateLimitedError) as caught:
        await call()
    clock.advance(caught.value.retry_after)
    assert await call() == "ok"


async def test_rejection_is_never_retried(mode: str, clock: FakeClock) -> None:
    """A rate-limit rejection is not retried, even by a retry that accepts every Exception."""
    body = Counter()
    policy = Policy(rate_limit="1/minute", retry=Retry(attempts=5, on=Exception))
    call = protect(policy, body, mode)
    await call()
    with pytest.raises(RateLimitedError):
        await call()
    assert len(body.calls) == 1
    assert clock.now == 1_000.0  # no backoff was slept either


async def test_key_function_limits_each_key_independently(mode: str, clock: FakeClock) -> None:
    """With `key=`, each key has its own limit; exhausting one leaves the others untouched."""
    body = Counter()
    call = protect(Policy(rate_limit=RateLimit("1/minute", key=lambda user: user)), body, mode)
    assert await call("alice") == "ok"
    assert await call("bob") == "ok"
    with pytest.raises(RateLimitedError) as caught:
        await call("alice")
    assert caught.value.key == "alice"
    with pytest.raises(RateLimitedError):
        await call("bob")
    assert await call("carol") == "ok"
    assert body.calls == [("alice",), ("bob",), ("carol",)]


async def test_key_function_receives_keyword_arguments(mode: str, clock: FakeClock) -> None:
    """The key function receives the call's positional and keyword arguments."""
    call = protect(Policy(rate_limit=RateLimit("1/minute", key=lambda *, tenant: tenant)), lambda **_: "ok", mode)
    await call(tenant="a")
    await call(tenant="b")
    with pytest.raises(RateLimitedError):
        await call(tenant="a")


@pytest.mark.parametrize("algorithm", ALGORITHMS)
async def test_max_wait_waits_for_a_slot_then_admits(mode: str, algorithm: Algorithm, clock: FakeClock) -> None:
    """With max_wait, a caller over the limit waits (advancing the fake clock) and is then admitted."""
    body = Counter()
    call = protect(Policy(rate_limit=RateLimit("1/second", algorithm=algorithm, max_wait=5.0)), body, mode)
    await call()
    assert await call() == "ok"
    assert len(body.calls) == 2
    assert 0 < clock.now - 1_000.0 <= 5.0


async def test_max_wait_shorter_than_needed_rejects_at_once(mode: str, clock: FakeClock) -> None:
    """A caller whose slot is further away than max_wait is rejected without waiting."""
    call = protect(Policy(rate_limit=RateLimit("1/minute", max_wait=1.0)), Counter(), mode)
    await call()
    with pytest.raises(RateLimitedError) as caught:
        await call()
    assert caught.value.retry_after > 1.0
    assert clock.now == 1_000.0


async def test_max_wait_never_waits_past_an_enclosing_deadline(mode: str, clock: FakeClock) -> None:
    """A wait that would end after the enclosing deadline is a rejection, taken at once."""
    call = protect(Policy(rate_limit=RateLimit("1/second", algorithm="moving-window", max_wait=5.0)), Counter(), mode)
    await call()
    with deadline.scope(0.5), pytest.raises(RateLimitedError):
        await call()
    assert clock.now == 1_000.0
    with deadline.scope(3.0):
        assert await call() == "ok"
    assert clock.now == 1_001.0


async def test_max_wait_bounds_the_total_wait_under_contention(
    mode: str, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """max_wait bounds the whole wait of a caller, even when others keep taking the freed slot."""
    # Real-time mode (no skipped waits), with the sleep itself faked: it advances the clock and
    # lets a competing caller take the slot that just freed up, twice.
    CLOCK.skip_waits = False
    policy = Policy(rate_limit=RateLimit("1/second", algorithm="moving-window", max_wait=1.5))
    limiter = limiter_of(policy)
    steals = [2]

    def fake_sleep(seconds: float) -> None:
        clock.advance(seconds)
        if steals[0]:
            steals[0] -= 1
            assert limiter.try_acquire("") == 0.0  # a competitor is admitted first

    async def fake_asleep(seconds: float) -> None:
        fake_sleep(seconds)

    monkeypatch.setattr(time, "sleep", fake_sleep)
    monkeypatch.setattr("resilient._kernel.clock.asyncio.sleep", fake_asleep)
    call = protect(policy, Counter(), mode)
    await call()
    with pytest.raises(RateLimitedError):
        await call()
    assert clock.now - 1_000.0 <= 1.5


async def test_rejected_event_is_emitted(mode: str, clock: FakeClock, events: list[instrumentation.Event]) -> None:
    """A rejection emits `ratelimit.rejected` with the policy, the limit and retry_after."""
    call = protect(Policy(name="search", rate_limit="1/minute"), Counter(), mode)
    await call()
    with pytest.raises(RateLimitedError) as caught:
        await call()
    rejected = [event for event in events if event.name == "ratelimit.rejected"]
    assert len(rejected) == 1
    assert rejected[0].policy == "search"
    assert rejected[0].fields["limit"] == "1/minute"
    assert rejected[0].fields["retry_after"] == pytest.approx(caught.value.retry_after, abs=1e-3)
    assert caught.value.policy == "search"


async def test_multiple_limits_all_apply(mode: str, clock: FakeClock) -> None:
    """With 'a;b' notation every limit applies; the rejection waits for the strictest one."""
    call = protect(Policy(rate_limit=RateLimit("2/second;3/minute", algorithm="moving-window")), Counter(), mode)
    await call()
    await call()
    with pytest.raises(RateLimitedError) as per_second:
        await call()
    assert per_second.value.retry_after == pytest.approx(1.0)
    clock.advance(1.0)
    await call()
    with pytest.raises(RateLimitedError) as per_minute:
        await call()
    assert per_minute.value.retry_after == pytest.approx(59.0)


def test_policies_decorating_two_functions_share_one_limiter(clock: FakeClock) -> None:
    """One Policy object used on two functions limits their calls together."""
    policy = Policy(rate_limit="2/minute")

    @policy
    def first() -> int:
        return 1

    @policy
    def second() -> int:
        return 2

    assert first() + second() == 3
    with pytest.raises(RateLimitedError):
        first()


def test_separate_decorations_get_separate_limiters(clock: FakeClock) -> None:
    """Each `@resilient(rate_limit=...)` has its own limiter."""
    from resilient import resilient  # noqa: PLC0415 - the decorator reads better under its own name

    @resilient(rate_limit="1/minute")
    def first() -> int:
        return 1

    @resilient(rate_limit="1/minute")
    def second() -> int:
        return 2

    assert first() + second() == 3


def test_zero_amount_is_rejected_at_construction() -> None:
    """A limit of zero calls is a configuration error, raised when the policy is built."""
    with pytest.raises(ValueError, match=r"rate_limit\.limit.*'0/second'"):
        RateLimit("0/second", algorithm="moving-window")


# ---------------------------------------------------------------- per-key state is bounded


def test_key_count_never_exceeds_max_keys(clock: FakeClock) -> None:
    """However many distinct keys arrive, the limiter holds state for at most max_keys."""
    limiter = LimiterRuntime(RateLimit("1/minute", key=str, max_keys=10))
    for index in range(250):
        assert limiter.try_acquire(f"client-{index}") == 0.0
        assert limiter.key_count <= 10


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_expired_keys_are_swept_first(algorithm: Algorithm, clock: FakeClock) -> None:
    """When the key table is full, keys whose windows expired are dropped and live ones kept."""
    limiter = LimiterRuntime(RateLimit("1/second", algorithm=algorithm, key=str, max_keys=4))
    limiter.try_acquire("old-1")
    limiter.try_acquire("old-2")
    clock.advance(10.0)
    limiter.try_acquire("live-1")
    limiter.try_acquire("live-2")
    limiter.try_acquire("new")  # table full: the sweep drops the two expired keys
    assert limiter.key_count == 3
    assert limiter.try_acquire("live-1") > 0  # its state survived the sweep


def test_key_of_uses_the_key_function() -> None:
    """`key_of` applies the key function to the call's arguments (str of its result)."""
    limiter = LimiterRuntime(RateLimit("1/second", key=lambda a, b=0: a + b))
    assert limiter.key_of((1,), {"b": 2}) == "3"
    assert LimiterRuntime(RateLimit("1/second")).key_of((1,), {}) == ""


# ---------------------------------------------------------------- properties of the algorithms

# Arrival times are multiples of 1/16 s after a start that is a multiple of the period, so
# window boundaries are exact binary fractions: these properties test the algorithms, not
# float rounding (arrivals exactly on a boundary, where off-by-one bugs live, are common).
TICKS_PER_SECOND = 16
PERIODS = {"second": 1, "2 seconds": 2, "minute": 60}
START = 960.0  # a multiple of every period above


@st.composite
def arrivals(draw: st.DrawFn) -> tuple[int, str, int, list[float]]:
    """(amount, limit string, period seconds, sorted arrival instants over ~4 windows)."""
    amount = draw(st.integers(1, 5))
    unit = draw(st.sampled_from(sorted(PERIODS)))
    period = PERIODS[unit]
    span = 4 * period * TICKS_PER_SECOND
    ticks = draw(st.lists(st.integers(0, span), min_size=1, max_size=40))
    times = [START + tick / TICKS_PER_SECOND for tick in sorted(ticks)]
    return amount, f"{amount} per {unit}", period, times


def run_limiter(algorithm: Algorithm, limit: str, times: list[float]) -> tuple[list[float], list[float]]:
    """Drive a fresh limiter with one call per arrival; (admitted instants, retry_afters)."""
    admitted: list[float] = []
    retry_afters: list[float] = []
    with fake_clock(start=times[0]) as clock:
        limiter = LimiterRuntime(RateLimit(limit, algorithm=algorithm))
        for now in times:
            clock.now = now
            wait = limiter.try_acquire("")
            if wait == 0.0:
                admitted.append(now)
            else:
                retry_afters.append(wait)
    return admitted, retry_afters


SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(arrivals())
def test_moving_window_is_exact(case: tuple[int, str, int, list[float]]) -> None:
    """Moving window: a call is admitted iff fewer than `amount` were admitted in the last period."""
    amount, limit, period, times = case
    admitted, _ = run_limiter("moving-window", limit, times)
    model: list[float] = []
    for now in times:
        if sum(1 for t in model if t > now - period) < amount:
            model.append(now)
    assert admitted == model
    for end in admitted:  # any window (end - period, end] holds at most `amount` admissions
        assert sum(1 for t in admitted if end - period < t <= end) <= amount


@SETTINGS
@given(arrivals())
def test_fixed_window_never_exceeds_limit_in_a_window(case: tuple[int, str, int, list[float]]) -> None:
    """Fixed window: windows aligned to the first admitted call each admit at most `amount`, exactly."""
    amount, limit, period, times = case
    admitted, _ = run_limiter("fixed-window", limit, times)
    first = times[0]
    model: dict[int, int] = {}
    expected: list[float] = []
    for now in times:
        window = int((now - first) // period)
        if model.get(window, 0) < amount:
            model[window] = model.get(window, 0) + 1
            expected.append(now)
    assert admitted == expected


@SETTINGS
@given(arrivals())
def test_sliding_window_guarantees(case: tuple[int, str, int, list[float]]) -> None:
    """Sliding window (a two-window counter): what it guarantees, and no more.

    - each window aligned to multiples of the period admits at most `amount` calls;
    - at every admission, previous-window count x (share of the span from that window's
      start to its last admission still within one period) + current count <= amount;
    - a steady `amount` calls per period, one period apart, are all admitted (the classic
      weighted counter rejected every other call of a steady "1/minute");
    - any sliding window of one period holds at most 2 x `amount` calls (an approximation:
      unlike the moving window it may exceed `amount` across an edge).
    """
    amount, limit, period, times = case
    admitted, _ = run_limiter("sliding-window", limit, times)
    per_window: dict[int, list[float]] = {}
    for now in admitted:
        window = int(now // period)
        before = per_window.get(window - 1, [])
        share = 0.0
        if before and before[-1] > now - period:
            span = before[-1] - (window - 1) * period
            share = 1.0 if span <= 0 else min((before[-1] - (now - period)) / span, 1.0)
        per_window.setdefault(window, []).append(now)
        assert len(before) * share + len(per_window[window]) <= amount + 1e-9
    assert max(len(calls) for calls in per_window.values()) <= amount
    for end in admitted:
        assert sum(1 for t in admitted if end - period < t <= end) <= 2 * amount


def test_sliding_window_admits_a_steady_one_per_period() -> None:
    """A steady "1/minute", one call a minute off the window edges, is always admitted."""
    admitted, rejected = run_limiter("sliding-window", "1/minute", [START + 20.0 + 60.0 * n for n in range(10)])
    assert (len(admitted), rejected) == (10, [])


@SETTINGS
@given(arrivals(), st.sampled_from(ALGORITHMS))
def test_retry_after_is_positive_and_within_the_period(
    case: tuple[int, str, int, list[float]], algorithm: Algorithm
) -> None:
    """Every rejection carries 0 < retry_after <= period, whatever the algorithm."""
    _, limit, period, times = case
    _, retry_afters = run_limiter(algorithm, limit, times)
    assert all(0 < wait <= period for wait in retry_afters)


@st.composite
def float_arrivals(draw: st.DrawFn) -> tuple[str, list[float]]:
    """(limit string, sorted arbitrary float instants over a few seconds)."""
    amount = draw(st.integers(1, 5))
    offsets = draw(st.lists(st.floats(0.0, 4.0, allow_nan=False), min_size=1, max_size=40))
    return f"{amount}/second", [1_000.0 + offset for offset in sorted(offsets)]


def wait_out_rejections(algorithm: Algorithm, limit: str, times: list[float]) -> None:
    """Each rejected caller waits exactly retry_after and must then be admitted at once."""
    with fake_clock(start=times[0]) as clock:
        limiter = LimiterRuntime(RateLimit(limit, algorithm=algorithm))
        for now in times:
            if now < clock.now:
                continue  # that arrival fell inside a wait we simulated; time only moves forward
            clock.now = now
            wait = limiter.try_acquire("")
            if wait:
                assert wait > 0
                clock.advance(wait)
                assert limiter.try_acquire("") == 0.0, (clock.now, wait)


@SETTINGS
@given(float_arrivals(), st.sampled_from(ALGORITHMS))
def test_waiting_retry_after_admits_when_nobody_else_came(case: tuple[str, list[float]], algorithm: Algorithm) -> None:
    """A rejected caller that waits exactly retry_after (nobody else admitted meanwhile) gets in."""
    wait_out_rejections(algorithm, *case)


def test_sliding_window_admits_exactly_at_retry_after() -> None:
    """Sliding window: waiting exactly retry_after is enough (a float-rounding case hypothesis found)."""
    wait_out_rejections("sliding-window", "3/second", [1000.0] * 4 + [1001.5])


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_state_reports_remaining_calls_without_consuming_them(algorithm: Algorithm, clock: FakeClock) -> None:
    """`LimiterRuntime.state` says how many calls are left and when the window resets, read-only."""
    limiter = LimiterRuntime(RateLimit("5/second", algorithm=algorithm))
    assert limiter.state("") == []  # a key never seen has no state
    for _ in range(3):
        assert limiter.try_acquire("") == 0.0
    (before,) = limiter.state("")
    (again,) = limiter.state("")
    assert before == again  # reading twice consumes nothing
    remaining, reset_after = before
    assert remaining == 2
    assert 0.0 < reset_after <= 1.0
    for _ in range(2):
        assert limiter.try_acquire("") == 0.0
    assert limiter.state("")[0][0] == 0
    assert limiter.try_acquire("") > 0.0


class _CountingWindow(MovingWindow):
    """A moving window that counts how often the key table's eviction reads its expiry."""

    __slots__ = ("_expires",)
    reads = 0

    @property
    def expires(self) -> float:
        _CountingWindow.reads += 1
        return self._expires

    @expires.setter
    def expires(self, value: float) -> None:
        self._expires = value


def _entries_visited_per_new_key(table_size: int, new_keys: int) -> float:
    """Fill a table of `table_size` keys, then count expiry reads per new key at the full table."""
    with fake_clock() as clock:
        limiter = LimiterRuntime(RateLimit("5/minute", key=str, max_keys=table_size))
        limiter._window_type = _CountingWindow
        for index in range(table_size):
            limiter.try_acquire(f"fill-{index}")
            clock.advance(0.001)
        # Keys now expire one by one at the pace new ones arrive: the churn that made the
        # old sweep read the whole table for each new key.
        clock.advance(60.0 - table_size * 0.001)
        _CountingWindow.reads = 0
        for index in range(new_keys):
            clock.advance(0.001)
            limiter.try_acquire(f"new-{index}")
        assert limiter.key_count <= table_size
        return _CountingWindow.reads / new_keys


def test_a_new_key_at_a_full_table_costs_the_same_whatever_its_size() -> None:
    """Eviction visits a bounded number of entries per new key: 100 or 20,000 keys alike."""
    small = _entries_visited_per_new_key(100, 2_000)
    large = _entries_visited_per_new_key(20_000, 2_000)
    assert large <= 3
    assert large <= small + 1  # flat in the table size (the old sweep read every entry)


def test_a_busy_key_survives_churn_at_a_full_table(clock: FakeClock) -> None:
    """The least recently used key is evicted: a key in use keeps its state while others churn."""
    limiter = LimiterRuntime(RateLimit("3/minute", key=str, max_keys=50))
    for _ in range(3):
        assert limiter.try_acquire("busy") == 0.0
    for index in range(1_000):
        limiter.try_acquire(f"churn-{index}")
        if index % 10 == 0:
            assert limiter.try_acquire("busy") > 0  # still limited: its windows were kept
    assert limiter.key_count == 50


@st.composite
def limits_and_calls(draw: st.DrawFn) -> tuple[str, float, list[float]]:
    """(limit string, its longest period, arbitrary float call instants, bursts included)."""
    amounts = draw(st.lists(st.integers(1, 50), min_size=1, max_size=2))
    units = draw(st.lists(st.sampled_from(["second", "minute", "hour"]), min_size=len(amounts), max_size=len(amounts)))
    longest = max({"second": 1.0, "minute": 60.0, "hour": 3600.0}[unit] for unit in units)
    gaps = draw(st.lists(st.floats(0.0, longest / 4, allow_nan=False), min_size=1, max_size=120))
    times, now = [], 5_000.0 + draw(st.floats(0.0, longest, allow_nan=False))
    for gap in gaps:
        now += gap
        times.append(now)
    return ";".join(f"{a}/{u}" for a, u in zip(amounts, units, strict=True)), longest, times


@SETTINGS
@given(limits_and_calls(), st.sampled_from(ALGORITHMS))
def test_retry_after_never_exceeds_the_window(case: tuple[str, float, list[float]], algorithm: Algorithm) -> None:
    """Over arbitrary limits and call patterns, every rejection says 0 < retry_after <= the window."""
    limit, longest, times = case
    _, retry_afters = run_limiter(algorithm, limit, times)
    assert all(0 < wait <= longest for wait in retry_afters)
    if ";" not in limit:
        assert all(wait <= float(limits.parse(limit).get_expiry()) for wait in retry_afters)


def test_the_middleware_and_the_decorator_share_one_default_and_retry_after_fits_the_window() -> None:
    """The middleware limits with RateLimit's default algorithm; a 429 for 3/minute says at most 60 s."""
    from resilient._edge.core import Limiter, rate_limit_headers  # noqa: PLC0415 - the middleware's limiter
    from resilient._edge.options import EdgeOptions  # noqa: PLC0415

    default = EdgeOptions().rate_limit_algorithm
    assert default == RateLimit("3/minute").algorithm
    with fake_clock(start=6_000.0 + 1.0) as clock:  # one second into an aligned minute
        limiter = Limiter("3/minute", default, "memory://", "default")
        for _ in range(3):
            assert limiter.hit("client", want_state=False) is None
            clock.advance(0.5)
        decision = limiter.hit("client", want_state=False)
    assert decision is not None
    assert not decision.admitted
    assert 0 < decision.reset_after <= 60.0
    assert 1 <= int(dict(rate_limit_headers(decision, b"default", legacy=True))[b"retry-after"]) <= 60
