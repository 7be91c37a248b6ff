"""Section 11: a rate-limit check kept in Redis against the round trip it cannot avoid."""

from __future__ import annotations

import functools
import os
from typing import TYPE_CHECKING, Any

from benchmarks._harness import Case, SyncBench, UnavailableError
from benchmarks._support import HUGE_RATE, abind, awork, bind, peer, resilient_api, work

if TYPE_CHECKING:
    from collections.abc import Callable
    from contextlib import ExitStack

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
CONNECT_TIMEOUT = 0.5


def redis_url() -> str:
    return os.environ.get("REDIS_URL", DEFAULT_REDIS_URL)


def reachable_client(stack: ExitStack) -> Any:
    """A sync client that answered one PING, or UnavailableError."""
    redis = peer("redis")
    client = redis.Redis.from_url(redis_url(), socket_connect_timeout=CONNECT_TIMEOUT)
    stack.callback(client.close)
    try:
        client.ping()
    except redis.RedisError as exc:
        raise UnavailableError(f"redis unreachable at {redis_url()}: {exc}") from exc
    return client


def raw_ping(stack: ExitStack) -> SyncBench:
    return reachable_client(stack).ping  # type: ignore[no-any-return]


def raw_ping_async(stack: ExitStack) -> SyncBench:
    reachable_client(stack)
    client = peer("redis.asyncio").Redis.from_url(redis_url())
    return client.ping  # type: ignore[no-any-return]


def limits_hit(stack: ExitStack) -> SyncBench:
    reachable_client(stack)
    limiter = peer("limits.strategies").FixedWindowRateLimiter(peer("limits.storage").storage_from_string(redis_url()))
    return functools.partial(limiter.hit, peer("limits").parse(HUGE_RATE), "bench-redis")


def limits_hit_async(stack: ExitStack) -> SyncBench:
    reachable_client(stack)
    storage = peer("limits.storage").storage_from_string(f"async+{redis_url()}", implementation="redispy")
    limiter = peer("limits.aio.strategies").FixedWindowRateLimiter(storage)
    return functools.partial(limiter.hit, peer("limits").parse(HUGE_RATE), "bench-redis-async")


def resilient_check(*, is_async: bool) -> Callable[[ExitStack], SyncBench]:
    """A resilient rate limit whose state lives in Redis, around the trivial function."""

    def setup(stack: ExitStack) -> SyncBench:
        reachable_client(stack)
        limit = resilient_api("RateLimit")(HUGE_RATE, storage=redis_url())
        decorator = resilient_api("resilient")(rate_limit=limit)
        return abind(decorator(awork)) if is_async else bind(decorator(work))

    return setup


def cases() -> list[Case]:
    cases: list[Case] = []
    for mode, ping, hit in (("sync", raw_ping, limits_hit), ("async", raw_ping_async, limits_hit_async)):
        section = f"11. redis ({redis_url()}) · {mode}"
        is_async = mode == "async"
        cases += [
            Case(section=section, name="raw PING", tag="PING", baseline=True, is_async=is_async, setup=ping),
            Case(
                section=section,
                name="resilient rate limit, redis storage",
                is_async=is_async,
                peers=("limits FixedWindow.hit, redis",),
                setup=resilient_check(is_async=is_async),
            ),
            Case(section=section, name="limits FixedWindow.hit, redis", tag="limits", is_async=is_async, setup=hit),
        ]
    return cases
