"""Storage URIs, the global default, and what happens when Redis goes away and comes back."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
import redis
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

import resilient._storage.store as storage_module
from resilient import CircuitBreaker, CircuitOpenError, Policy, RateLimit, instrumentation
from resilient._storage.config import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_TIMEOUT,
    ENV_STORAGE,
    configure_storage,
    parse_storage,
)
from resilient._storage.shared_breaker import SharedBreakerRuntime
from resilient._storage.store import close_stores
from resilient._strategies.breaker_registry import new_breaker
from resilient._strategies.ratelimit import LimiterRuntime, SharedLimiterRuntime
from tests._redis_workers import PrivateRedis, private_redis, with_prefix

RECOVERY_TIMEOUT = 15.0  # reconnect backoff tops out at 2 s; generous for a loaded CI host


@pytest.fixture(autouse=True)
def _isolated_storage(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No global default leaks in or out; every store is closed afterwards."""
    monkeypatch.delenv(ENV_STORAGE, raising=False)
    yield
    configure_storage(None)
    close_stores()


@pytest.fixture
def server() -> Iterator[PrivateRedis]:
    """A redis-server of this test's own, which the test may stop and restart."""
    with private_redis() as started:
        if started is None:
            if os.environ.get("CI") == "true":
                pytest.fail("CI=true but redis-server is not installed")
            pytest.skip("redis-server is not installed")
        yield started


@pytest.fixture
def recovered() -> threading.Event:
    """Set when the library reports `storage.recovered` (the background reconnect succeeded)."""
    event = threading.Event()
    instrumentation.add_listener(lambda e: event.set() if e.name == "storage.recovered" else None)
    return event


# ---------------------------------------------------------------- URIs


@pytest.mark.parametrize(
    ("uri", "scheme", "client_uri"),
    [
        ("redis://localhost:6379/0", "redis", "redis://localhost:6379/0"),
        ("rediss://user:pw@cache.example:6380/1", "rediss", "rediss://user:pw@cache.example:6380/1"),
        (
            "redis+sentinel://s1:26379,s2:26379/mymaster",
            "redis+sentinel",
            "redis+sentinel://s1:26379,s2:26379/mymaster",
        ),
        ("redis+cluster://n1:7000,n2:7001", "redis+cluster", "redis+cluster://n1:7000,n2:7001"),
        ("redis://h/0?key_prefix=shop&timeout=0.05&db=2", "redis", "redis://h/0?db=2"),
    ],
)
def test_redis_uri_forms_are_accepted(uri: str, scheme: str, client_uri: str) -> None:
    """Every Redis form parses; our own query parameters are removed before redis-py sees the URI."""
    spec = parse_storage("storage", uri)
    assert spec is not None
    assert (spec.scheme, spec.uri) == (scheme, client_uri)


def test_uri_parameters_set_prefix_and_timeouts() -> None:
    """key_prefix, timeout and connect_timeout come from the query string, with defaults."""
    spec = parse_storage("storage", "redis://h/0?key_prefix=shop:eu&timeout=0.05&connect_timeout=1")
    assert spec is not None
    assert (spec.key_prefix, spec.timeout, spec.connect_timeout) == ("shop:eu", 0.05, 1.0)
    default = parse_storage("storage", "redis://h/0")
    assert default is not None
    assert (default.key_prefix, default.timeout, default.connect_timeout) == (
        "resilient",
        DEFAULT_TIMEOUT,
        DEFAULT_CONNECT_TIMEOUT,
    )


def test_memory_is_not_a_shared_storage() -> None:
    """memory:// parses to None: the in-process path."""
    assert parse_storage("storage", "memory://") is None


BAD_STORAGES = [
    pytest.param(
        lambda: RateLimit("1/second", storage="mongo://x"),
        ValueError,
        ("rate_limit.storage", "'memory://'", "redis+cluster://", "'mongo://x'"),
        id="scheme",
    ),
    pytest.param(
        lambda: CircuitBreaker(name="b", storage="memory"),
        ValueError,
        ("breaker.storage", "'memory://'", "'memory'"),
        id="not-a-uri",
    ),
    pytest.param(
        lambda: CircuitBreaker(name="b", storage=42),  # type: ignore[arg-type]
        TypeError,
        ("breaker.storage", "URI string", "42"),
        id="type",
    ),
    pytest.param(
        lambda: RateLimit("1/second", storage="redis://h/0?timeout=0"),
        ValueError,
        ("rate_limit.storage timeout", "> 0", "'0'"),
        id="timeout",
    ),
    pytest.param(
        lambda: RateLimit("1/second", storage="redis://h/0?connect_timeout=x"),
        ValueError,
        ("connect_timeout", "'x'"),
        id="connect-timeout",
    ),
    pytest.param(
        lambda: RateLimit("1/second", storage="redis://h/0?key_prefix=a%2Fb"),
        ValueError,
        ("key_prefix", "'a/b'"),
        id="key-prefix",
    ),
    pytest.param(lambda: RateLimit("1/second", name=""), ValueError, ("rate_limit.name", "non-empty"), id="name"),
]


@pytest.mark.parametrize(("build", "error", "fragments"), BAD_STORAGES)
def test_bad_storage_fails_at_construction(build: object, error: type[Exception], fragments: tuple[str, ...]) -> None:
    """A bad storage is rejected when the config is built, naming the field, what is allowed and the value."""
    with pytest.raises(error) as caught:
        build()  # type: ignore[operator]
    for fragment in fragments:
        assert fragment in str(caught.value)


def test_passwords_never_appear_in_errors_or_reprs() -> None:
    """A URI's password is masked in error messages and left out of the config's repr."""
    with pytest.raises(ValueError, match=r"\*\*\*") as caught:
        RateLimit("1/second", storage="redis://:hunter2@h/0?timeout=-1")
    assert "hunter2" not in str(caught.value)
    assert "hunter2" not in repr(RateLimit("1/second", storage="redis://:hunter2@h/0"))
    assert "hunter2" not in repr(CircuitBreaker(name="b", storage="redis://:hunter2@h/0"))


def test_a_redis_uri_without_redis_installed_says_which_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without redis-py, a Redis storage fails at construction and names the extra to install."""
    monkeypatch.setitem(sys.modules, "redis", None)
    with pytest.raises(ImportError, match=r"pip install 'resilient\[redis\]'"):
        RateLimit("1/second", storage="redis://h/0")


# ---------------------------------------------------------------- the global default


def test_configure_storage_sets_the_default_for_later_policies(redis_url: str) -> None:
    """configure_storage() makes configs without a storage shared; None goes back to memory."""
    configure_storage(redis_url)
    assert isinstance(LimiterRuntime(RateLimit("1/second")), SharedLimiterRuntime)
    assert isinstance(new_breaker(CircuitBreaker(name="default")), SharedBreakerRuntime)
    assert type(LimiterRuntime(RateLimit("1/second", storage="memory://"))) is LimiterRuntime
    configure_storage(None)
    assert type(LimiterRuntime(RateLimit("1/second"))) is LimiterRuntime


def test_the_environment_sets_the_default(monkeypatch: pytest.MonkeyPatch, redis_url: str) -> None:
    """RESILIENT_STORAGE is the default when configure_storage() was not called."""
    monkeypatch.setenv(ENV_STORAGE, redis_url)
    assert isinstance(new_breaker(CircuitBreaker(name="env")), SharedBreakerRuntime)
    monkeypatch.setenv(ENV_STORAGE, "nosuch://")
    with pytest.raises(ValueError, match=ENV_STORAGE):
        LimiterRuntime(RateLimit("1/second"))


def test_configure_storage_validates() -> None:
    """A bad default is rejected when configured, not at the first call."""
    with pytest.raises(ValueError, match=r"storage must be 'memory://' or a Redis URI"):
        configure_storage("memcached://h")


# ---------------------------------------------------------------- degradation


def _ok() -> str:
    return "ok"


async def _aok() -> str:
    return "ok"


def _degraded(events: list[instrumentation.Event]) -> list[instrumentation.Event]:
    return [e for e in events if e.name == "storage.degraded"]


def _outage_policy(uri: str) -> tuple[Policy, CircuitBreaker]:
    breaker = CircuitBreaker(name="outage", failure_threshold=2, reset_timeout=30.0, storage=uri)
    return Policy(rate_limit=RateLimit("1000/minute", storage=uri, name="outage"), breaker=breaker), breaker


@pytest.mark.slow
def test_an_outage_degrades_to_local_state_and_recovery_restores_sharing(
    server: PrivateRedis, events: list[instrumentation.Event], recovered: threading.Event
) -> None:
    """Stopping Redis fails no call and says so once; after a restart the state is shared again."""
    prefix = f"outage-{uuid.uuid4().hex[:8]}"
    uri = with_prefix(server.url, prefix)
    policy, breaker = _outage_policy(uri)
    assert policy.call(_ok) == "ok"
    server.stop()
    calls = [threading.Thread(target=lambda: [policy.call(_ok) for _ in range(10)]) for _ in range(4)]
    for thread in calls:
        thread.start()
    for thread in calls:
        thread.join()
    assert all(policy.call(_ok) == "ok" for _ in range(10))
    (degraded,) = _degraded(events)
    assert degraded.level == logging.WARNING
    assert "ConnectionError" in degraded.fields["reason"]
    assert degraded.fields["storage"] == server.url  # our own query parameters are not part of it
    server.start()
    # The one wait on time in this file: the background reconnect, signalled by its event.
    assert recovered.wait(RECOVERY_TIMEOUT)
    assert policy.call(_ok) == "ok"
    client = redis.Redis.from_url(server.url)
    try:
        assert client.exists(
            f"{prefix}:ratelimit:LIMITER/outage/moving-window//1000/1/minute"  # the default algorithm
        )
    finally:
        client.close()
    other = new_breaker(breaker)  # another process, in effect
    for _ in range(2):
        other.on_failure(ConnectionError("down"), probe=other.acquire("test"), label="test")
    with pytest.raises(CircuitOpenError):
        policy.call(_ok)


@pytest.mark.slow
async def test_an_outage_degrades_async_callers_too(
    server: PrivateRedis, events: list[instrumentation.Event], recovered: threading.Event
) -> None:
    """Async calls and the async twins keep working through an outage and share state after it."""
    uri = with_prefix(server.url, f"aoutage-{uuid.uuid4().hex[:8]}")
    policy, breaker = _outage_policy(uri)
    limiter = LimiterRuntime(RateLimit("1000/minute", storage=uri, name="twin"))
    runtime = new_breaker(breaker)
    assert await policy.call_async(_aok) == "ok"
    assert await limiter.atry_acquire("k") == 0.0
    server.stop()
    for _ in range(5):
        assert await policy.call_async(_aok) == "ok"
        assert await limiter.atry_acquire("k") == 0.0
        probe = await runtime.aacquire("test")
        await runtime.aon_success(probe=probe, duration=0.0, label="test")
    assert len(_degraded(events)) == 1
    server.start()
    assert recovered.wait(RECOVERY_TIMEOUT)
    for _ in range(2):
        await runtime.aon_failure(ConnectionError("down"), probe=await runtime.aacquire("test"), label="test")
    with pytest.raises(CircuitOpenError):
        await policy.call_async(_aok)


@pytest.mark.slow
def test_a_silent_redis_costs_one_timeout_then_local_state(
    events: list[instrumentation.Event], metric_reader: InMemoryMetricReader
) -> None:
    """A Redis that accepts but never answers degrades after `timeout` seconds, counted in the metric."""
    with socket.socket() as black_hole:
        black_hole.bind(("127.0.0.1", 0))
        black_hole.listen(64)
        port = black_hole.getsockname()[1]
        policy = Policy(rate_limit=RateLimit("10/second", storage=f"redis://127.0.0.1:{port}/0?timeout=0.05"))
        started = time.perf_counter()
        assert policy.call(_ok) == "ok"
        first = time.perf_counter() - started
        started = time.perf_counter()
        assert policy.call(_ok) == "ok"
        second = time.perf_counter() - started
        close_stores()
    assert 0.05 <= first < 1.0
    assert second < 0.05
    (degraded,) = _degraded(events)
    assert "Timeout" in degraded.fields["reason"]
    data = metric_reader.get_metrics_data()
    assert data is not None
    points = [
        getattr(point, "value", 0)
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        if metric.name == "resilient.storage.degraded"
        for point in metric.data.data_points
    ]
    assert sum(points) >= 1


def test_memory_runtimes_never_touch_the_storage_module(monkeypatch: pytest.MonkeyPatch) -> None:
    """On memory, no store is created: the in-process path is the one it always was."""
    monkeypatch.setattr(storage_module, "store_for", None)
    limiter = LimiterRuntime(RateLimit("1/second"))
    runtime = new_breaker(CircuitBreaker(name="mem"))
    assert (limiter.shared, runtime.shared) == (False, False)
    assert limiter.try_acquire("") == 0.0


async def test_async_callers_never_block_the_event_loop() -> None:
    """While an async call waits on a silent Redis, other tasks of the loop keep running."""
    with socket.socket() as black_hole:
        black_hole.bind(("127.0.0.1", 0))
        black_hole.listen(64)
        uri = f"redis://127.0.0.1:{black_hole.getsockname()[1]}/0?timeout=0.2&connect_timeout=0.2"
        policy = Policy(
            rate_limit=RateLimit("10/second", storage=uri), breaker=CircuitBreaker(name="loop", storage=uri)
        )
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        task = asyncio.create_task(ticker())
        assert await policy.call_async(_aok) == "ok"
        task.cancel()
        close_stores()
    assert ticks >= 5
