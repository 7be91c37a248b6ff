"""Rate limits kept in a real Redis: one budget for every process, all three algorithms."""

from __future__ import annotations

import asyncio

import pytest
import redis

from resilient import Policy, RateLimit, RateLimitedError
from resilient._strategies.ratelimit import ALGORITHMS, Algorithm, LimiterRuntime, SharedLimiterRuntime
from tests._redis_workers import (
    JOIN_TIMEOUT,
    hammer_async,
    hammer_sync,
    join_all,
    run_processes,
    spawn,
)

PROCESSES = 4
THREADS = 4
ATTEMPTS = 10  # per thread and algorithm: 160 tries at a limit of 100


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_processes_share_one_budget(uri: str, mode: str) -> None:
    """4 processes x 4 threads (or tasks) admit exactly 100 calls of a 100/minute limit, per algorithm."""
    context = spawn()
    barrier = context.Barrier(PROCESSES)
    results = context.Queue()
    target = hammer_sync if mode == "sync" else hammer_async
    processes = run_processes(target, lambda _i: (uri, THREADS, ATTEMPTS, barrier, results), PROCESSES)
    totals = [results.get(timeout=JOIN_TIMEOUT) for _ in processes]
    join_all(processes)
    results.close()
    results.join_thread()
    for algorithm in ALGORITHMS:
        assert sum(t[algorithm] for t in totals) == 100, algorithm
    if mode == "async":
        assert sum(t["direct"] for t in totals) == 100


def test_redis_storage_builds_the_shared_runtime(uri: str) -> None:
    """A Redis storage yields a SharedLimiterRuntime; memory keeps the in-process class."""
    assert type(LimiterRuntime(RateLimit("1/second", storage=uri))) is SharedLimiterRuntime
    memory = LimiterRuntime(RateLimit("1/second", storage="memory://"))
    assert type(memory) is LimiterRuntime
    assert not memory.shared


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_rejection_carries_retry_after_from_the_window(uri: str, algorithm: Algorithm) -> None:
    """The call past the limit is rejected with retry_after taken from the strategy's window stats."""
    policy = Policy(rate_limit=RateLimit("3/minute", algorithm=algorithm, storage=uri, name="ra"))
    for _ in range(3):
        assert policy.call(int) == 0
    with pytest.raises(RateLimitedError) as caught:
        policy.call(int)
    assert 0 < caught.value.retry_after <= 60


@pytest.mark.parametrize(
    ("algorithm", "stored"),
    [
        ("fixed-window", "{p}:ratelimit:LIMITER/orders/fixed-window/alice/5/1/minute"),
        ("sliding-window", "{p}:ratelimit:{{LIMITER/orders/sliding-window/alice/5/1/minute}}"),
        ("moving-window", "{p}:ratelimit:LIMITER/orders/moving-window/alice/5/1/minute"),
    ],
)
def test_keys_carry_prefix_scope_algorithm_and_key(
    uri: str, prefix: str, client: redis.Redis, algorithm: Algorithm, stored: str
) -> None:
    """Each algorithm maps to its limits strategy and writes keys under the app prefix, scope and call key."""
    limit = RateLimit("5/minute", algorithm=algorithm, storage=uri, key=lambda user: user, name="orders")
    Policy(rate_limit=limit).call(str, "alice")
    key = stored.format(p=prefix)
    assert client.exists(key)
    assert 0 < client.pttl(key) <= 120_000


def test_named_limits_have_separate_budgets(uri: str) -> None:
    """Two named limits never share a budget; their names scope the keys."""
    first = Policy(rate_limit=RateLimit("1/minute", storage=uri, name="first"))
    second = Policy(rate_limit=RateLimit("1/minute", storage=uri, name="second"))
    assert first.call(int) == 0
    assert second.call(int) == 0
    with pytest.raises(RateLimitedError):
        first.call(int)


def test_policy_name_scopes_an_unnamed_limit(uri: str) -> None:
    """Without a RateLimit name, the scope is the policy's name (passed by the compiler), else "default"."""
    limit = RateLimit("1/minute", storage=uri)
    assert LimiterRuntime(limit, scope="checkout").scope == "checkout"  # type: ignore[attr-defined]
    assert LimiterRuntime(limit).scope == "default"  # type: ignore[attr-defined]
    assert LimiterRuntime(RateLimit("1/minute", storage=uri, name="own"), scope="x").scope == "own"  # type: ignore[attr-defined]


def test_multiple_items_reject_on_the_first_full_one(uri: str) -> None:
    """With ``"2/minute;100/hour"`` the minute item rejects the third call."""
    policy = Policy(rate_limit=RateLimit("2/minute;100/hour", storage=uri, name="multi"))
    policy.call(int)
    policy.call(int)
    with pytest.raises(RateLimitedError) as caught:
        policy.call(int)
    assert caught.value.retry_after <= 60


async def test_async_twin_uses_redis_asyncio(uri: str) -> None:
    """`atry_acquire` counts in the same Redis budget as the sync path, from inside an event loop."""
    limiter = LimiterRuntime(RateLimit("4/minute", storage=uri, name="twin"))
    assert limiter.shared
    waits = await asyncio.gather(*(limiter.atry_acquire("k") for _ in range(3)))
    assert waits == [0.0, 0.0, 0.0]
    assert limiter.try_acquire("k") == 0.0
    assert await limiter.atry_acquire("k") > 0


async def test_memory_twin_is_the_sync_path() -> None:
    """On memory, `atry_acquire` is the in-process decision (no I/O, no Redis)."""
    limiter = LimiterRuntime(RateLimit("1/minute"))
    assert await limiter.atry_acquire("") == 0.0
    assert await limiter.atry_acquire("") > 0


def test_loop_clients_are_closed_with_their_loop(uri: str) -> None:
    """Async clients live per event loop and are closed when asyncio.run shuts the loop down."""
    limiter = LimiterRuntime(RateLimit("10/minute", storage=uri, name="loops"))

    async def once() -> float:
        return await limiter.atry_acquire("k")

    assert asyncio.run(once()) == 0.0
    assert asyncio.run(once()) == 0.0
    store = limiter._store  # type: ignore[attr-defined]
    assert len(store._loops) == 0
