"""Circuit breakers kept in a real Redis: one state for every process, atomic transitions."""

from __future__ import annotations

import pybreaker
import pytest
import redis

from resilient import CircuitBreaker, CircuitOpenError, Policy, instrumentation, testing
from resilient._storage.shared_breaker import DEFAULT_TTL, SharedBreakerRuntime
from resilient._strategies.breaker import BreakerRuntime
from resilient._strategies.breaker_registry import breaker_for, new_breaker
from tests._redis_workers import (
    JOIN_TIMEOUT,
    BreakerSpec,
    fail_fast_worker,
    join_all,
    probe_worker,
    run_processes,
    spawn,
)

PROCESSES = 4
THREADS = 4


def _fail(runtime: BreakerRuntime, times: int) -> None:
    for _ in range(times):
        probe = runtime.acquire("test")
        runtime.on_failure(ConnectionError("down"), probe=probe, label="test")


def _age_open_breaker(client: redis.Redis, runtime: BreakerRuntime) -> None:
    """Move the stored opened-at instant back by the reset timeout: Redis' clock, fast-forwarded."""
    key = runtime.key  # type: ignore[attr-defined]
    client.hincrby(key, "o", -round(runtime.config.reset_timeout * 1000) - 1)


def _open_elsewhere(spec: BreakerSpec) -> None:
    """Open the breaker from a runtime of its own, as another process would."""
    other = new_breaker(spec.config())
    _fail(other, spec.failure_threshold)
    assert other.state == "open"


@pytest.mark.slow
@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])
def test_open_in_one_process_fails_fast_in_another(uri: str, use_async: bool) -> None:
    """A breaker opened by failures here makes a running process fail fast without calling its function."""
    spec = BreakerSpec(uri)
    context = spawn()
    ready, opened, results = context.Event(), context.Event(), context.Queue()
    processes = run_processes(fail_fast_worker, lambda _i: (spec, ready, opened, results, use_async), 1)
    assert ready.wait(JOIN_TIMEOUT)
    _open_elsewhere(spec)
    opened.set()
    first, second, calls = results.get(timeout=JOIN_TIMEOUT)
    join_all(processes)
    results.close()
    results.join_thread()
    assert (first, second, calls) == ("ok", "open", 1)


@pytest.mark.slow
@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])
def test_half_open_probes_are_bounded_across_processes(uri: str, client: redis.Redis, use_async: bool) -> None:
    """With half_open_max_calls=2, 4 processes x 4 threads admit exactly 2 probes; the rest fail fast."""
    spec = BreakerSpec(uri, half_open_max_calls=2)
    opener = new_breaker(spec.config())
    _fail(opener, spec.failure_threshold)
    _age_open_breaker(client, opener)
    context = spawn()
    barrier = context.Barrier(PROCESSES * THREADS)
    arrived, release = context.Queue(), context.Event()
    args = (spec, THREADS, barrier, arrived, release, use_async)
    processes = run_processes(probe_worker, lambda _i: args, PROCESSES)
    outcomes = sorted(arrived.get(timeout=JOIN_TIMEOUT) for _ in range(PROCESSES * THREADS))
    release.set()
    join_all(processes)
    arrived.close()
    arrived.join_thread()
    assert outcomes == ["probe"] * 2 + ["rejected"] * 14
    assert client.hget(opener.key, "s") == b"closed"  # type: ignore[attr-defined]


def test_a_new_process_joins_the_stored_state(uri: str, client: redis.Redis) -> None:
    """A runtime created after the breaker opened reads the open state and overwrites nothing."""
    spec = BreakerSpec(uri)
    _open_elsewhere(spec)
    key = f"{uri.rsplit('=', 1)[1]}:breaker:{spec.name}:state"
    before = client.hgetall(key)
    joiner = breaker_for(spec.config())
    assert isinstance(joiner, SharedBreakerRuntime)
    with pytest.raises(CircuitOpenError) as caught:
        joiner.acquire("test")
    assert caught.value.retry_after > 0
    assert joiner.state == "open"
    assert client.hgetall(key) == before


def test_state_lives_in_one_prefixed_hash_with_a_ttl(uri: str, prefix: str, client: redis.Redis) -> None:
    """Counts and state sit under {prefix}:breaker:{name}:state, which expires when abandoned."""
    runtime = new_breaker(BreakerSpec(uri, name="payments").config())
    _fail(runtime, 1)
    key = f"{prefix}:breaker:payments:state"
    assert client.hgetall(key) == {b"f": b"1"}
    assert 0 < client.pttl(key) <= DEFAULT_TTL * 1000


def test_a_success_anywhere_resets_consecutive_failures(uri: str) -> None:
    """Failures are consecutive across processes: a success elsewhere resets the shared count."""
    spec = BreakerSpec(uri)
    first, second = new_breaker(spec.config()), new_breaker(spec.config())
    _fail(first, 2)
    probe = second.acquire("test")
    assert second.reports_success  # Redis told it there are failures to reset
    second.on_success(probe=probe, duration=0.0, label="test")
    _fail(first, 2)
    assert first.state == "closed"
    _fail(first, 1)
    assert first.state == "open"


def test_a_closed_clean_breaker_skips_the_success_round_trip(uri: str) -> None:
    """With no failures stored, a success needs no report: one round trip per call."""
    runtime = new_breaker(BreakerSpec(uri).config())
    assert runtime.acquire("test") is False
    assert not runtime.reports_success


def test_probe_permits_are_leases(uri: str, client: redis.Redis) -> None:
    """A probe that never reports frees its permit after reset_timeout, so half-open cannot stick."""
    spec = BreakerSpec(uri, half_open_max_calls=1)
    runtime = new_breaker(spec.config())
    _fail(runtime, spec.failure_threshold)
    _age_open_breaker(client, runtime)
    assert runtime.acquire("test") is True  # the probe's process "dies" here
    with pytest.raises(CircuitOpenError):
        runtime.acquire("test")
    client.hincrby(runtime.key, "pa", -round(spec.reset_timeout * 1000) - 1)  # type: ignore[attr-defined]
    assert runtime.acquire("test") is True


def test_a_late_probe_report_from_an_older_half_open_changes_nothing(uri: str, client: redis.Redis) -> None:
    """Transitions bump an epoch, so a success reported for a probe of an older half-open period is ignored."""
    spec = BreakerSpec(uri)
    late, other = new_breaker(spec.config()), new_breaker(spec.config())
    key = late.key  # type: ignore[attr-defined]
    _fail(late, spec.failure_threshold)
    _age_open_breaker(client, late)
    assert late.acquire("test") is True  # a probe that will report very late
    client.hincrby(key, "pa", -round(spec.reset_timeout * 1000) - 1)  # its lease runs out
    _fail(other, 1)  # another probe fails: open again
    _age_open_breaker(client, other)
    assert other.acquire("test") is True  # a new half-open period
    late.on_success(probe=True, duration=0.0, label="test")
    assert client.hget(key, "s") == b"half-open"
    other.on_success(probe=True, duration=0.0, label="test")
    assert client.hget(key, "s") == b"closed"


def test_transition_events_fire_in_the_process_that_made_them(uri: str, events: list[instrumentation.Event]) -> None:
    """The opener reports breaker.opened once; a runtime that only observes the open state does not."""
    spec = BreakerSpec(uri)
    opener, observer = new_breaker(spec.config()), new_breaker(spec.config())
    _fail(opener, spec.failure_threshold)
    with pytest.raises(CircuitOpenError):
        observer.acquire("test")
    assert observer.state == "open"
    assert [e.name for e in events if e.name == "breaker.opened"] == ["breaker.opened"]


def test_failure_rate_window_is_local_and_opens_the_shared_state(uri: str) -> None:
    """A process whose own window reaches the failure rate opens the breaker for every process."""
    config = CircuitBreaker(name="rate", failure_rate=0.5, window=4, minimum_calls=4, storage=uri)
    first, second = new_breaker(config), new_breaker(config)
    for failed in (False, True, False, True):
        probe = first.acquire("test")
        if failed:
            first.on_failure(ConnectionError("x"), probe=probe, label="test")
        else:
            first.on_success(probe=probe, duration=0.0, label="test")
    with pytest.raises(CircuitOpenError):
        second.acquire("test")


def test_policy_calls_go_through_the_shared_state(uri: str) -> None:
    """A policy with a Redis breaker opens after the threshold and then fails fast without calling."""
    calls: list[int] = []

    def flaky() -> None:
        calls.append(1)
        raise ConnectionError("down")

    policy = Policy(breaker=BreakerSpec(uri).config())
    for _ in range(3):
        with pytest.raises(ConnectionError):
            policy.call(flaky)
    with pytest.raises(CircuitOpenError):
        policy.call(flaky)
    assert len(calls) == 3
    assert testing.breaker_state("dependency") == "open"


async def test_async_twins_share_the_same_state(uri: str, client: redis.Redis) -> None:
    """aacquire / aon_failure / aon_success drive the same Redis state as the sync methods."""
    spec = BreakerSpec(uri)
    runtime = new_breaker(spec.config())
    for _ in range(spec.failure_threshold):
        probe = await runtime.aacquire("test")
        await runtime.aon_failure(ConnectionError("down"), probe=probe, label="test")
    with pytest.raises(CircuitOpenError):
        await runtime.aacquire("test")
    _age_open_breaker(client, runtime)
    assert await runtime.aacquire("test") is True
    await runtime.aon_abandon(probe=True)
    assert await runtime.aacquire("test") is True
    await runtime.aon_success(probe=True, duration=0.0, label="test")
    assert runtime.state == "closed"


async def test_memory_twins_are_the_sync_path() -> None:
    """On memory, the async twins are the in-process decisions."""
    runtime = new_breaker(CircuitBreaker(name="mem", failure_threshold=1))
    assert not runtime.shared
    probe = await runtime.aacquire("test")
    await runtime.aon_failure(ConnectionError("x"), probe=probe, label="test")
    with pytest.raises(CircuitOpenError):
        await runtime.aacquire("test")


def test_reset_closes_the_shared_state(uri: str) -> None:
    """reset() closes the breaker in Redis too, so every process sees it closed."""
    spec = BreakerSpec(uri)
    runtime = new_breaker(spec.config())
    _fail(runtime, spec.failure_threshold)
    runtime.reset()
    assert new_breaker(spec.config()).acquire("test") is False


def test_a_pybreaker_breaker_keeps_its_own_storage(uri: str) -> None:
    """A user's pybreaker breaker cannot also take a Redis storage: construction says why."""
    with pytest.raises(ValueError, match=r"breaker.storage cannot be combined with breaker.pybreaker"):
        CircuitBreaker(name="pb", pybreaker=pybreaker.CircuitBreaker(), storage=uri)
