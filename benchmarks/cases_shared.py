"""Section 12: shared state in Redis against the same safeguard in memory, in one run.

Each sub-section's baseline is the memory-storage row, so its ratio column reads
"Redis costs N x memory" directly; the raw PING row (one round trip on the same client, nothing
else) shows what Redis storage cannot go below. A rate-limit check is one Lua script per
call (`limits`' hit); a breaker call is one Lua script on admission and, while no
failure is stored, nothing after the call. Keys go under a prefix of their own,
deleted when the section ends.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

from benchmarks._harness import Case, SyncBench
from benchmarks._support import HUGE_RATE, abind, awork, bind, resilient_api, work
from benchmarks.cases_redis import reachable_client, redis_url

if TYPE_CHECKING:
    from collections.abc import Callable
    from contextlib import ExitStack

SECTION = "12. shared state"


def _storage(stack: ExitStack, *, shared: bool) -> str:
    """memory://, or the local Redis under a fresh prefix whose keys are deleted afterwards."""
    if not shared:
        return "memory://"
    client = reachable_client(stack)
    prefix = f"bench-{uuid.uuid4().hex[:10]}"
    stack.callback(_delete_prefix, client, prefix)
    stack.callback(resilient_api("close_stores", "resilient._storage.store"))
    return f"{redis_url()}{'&' if '?' in redis_url() else '?'}key_prefix={prefix}"


def _store(stack: ExitStack) -> Any:
    """The library's own store for the local Redis: its clients are the ones the rows use."""
    parse = resilient_api("parse_storage", "resilient._storage.config")
    return resilient_api("store_for", "resilient._storage.store")(parse("storage", _storage(stack, shared=True)))


def ping(stack: ExitStack) -> SyncBench:
    """One PING on the sync client the Redis rows use: the round trip nothing can avoid."""
    return _store(stack).client().ping  # type: ignore[no-any-return]


def ping_async(stack: ExitStack) -> SyncBench:
    """One PING on the running loop's ``redis.asyncio`` client (closed with the loop)."""
    store = _store(stack)

    async def one_ping() -> object:
        return await store.loop_clients().client.ping()

    return one_ping


def _delete_prefix(client: Any, prefix: str) -> None:
    keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
    if keys:
        client.delete(*keys)


def _protect(options: dict[str, Any], *, is_async: bool) -> SyncBench:
    decorator = resilient_api("resilient")(**options)
    return abind(decorator(awork)) if is_async else bind(decorator(work))


def rate_limit(*, shared: bool, is_async: bool) -> Callable[[ExitStack], SyncBench]:
    """A rate limit that is never reached, its windows in memory or in Redis."""

    def setup(stack: ExitStack) -> SyncBench:
        limit = resilient_api("RateLimit")(HUGE_RATE, storage=_storage(stack, shared=shared), name="bench")
        return _protect({"rate_limit": limit}, is_async=is_async)

    return setup


def breaker(*, shared: bool, is_async: bool) -> Callable[[ExitStack], SyncBench]:
    """A closed breaker around a function that succeeds, its state in memory or in Redis."""

    def setup(stack: ExitStack) -> SyncBench:
        storage = _storage(stack, shared=shared)
        name = f"bench-{'redis' if shared else 'memory'}-{uuid.uuid4().hex[:8]}"
        config = resilient_api("CircuitBreaker")(name=name, storage=storage)
        return _protect({"breaker": config}, is_async=is_async)

    return setup


def cases() -> list[Case]:
    """Rate-limit checks and breaker calls: Redis vs memory, sync and async, with a PING for scale."""
    built: list[Case] = []
    for mode, ping_setup in (("sync", ping), ("async", ping_async)):
        is_async = mode == "async"
        for what, make in (("rate limit", rate_limit), ("breaker", breaker)):
            section = f"{SECTION} · {what} · {mode}"
            built += [
                Case(
                    section=section,
                    name=f"resilient {what}, memory storage",
                    tag="memory",
                    baseline=True,
                    is_async=is_async,
                    setup=make(shared=False, is_async=is_async),
                ),
                Case(
                    section=section,
                    name=f"resilient {what}, redis storage",
                    is_async=is_async,
                    peers=("raw PING",),
                    setup=make(shared=True, is_async=is_async),
                ),
                Case(section=section, name="raw PING", tag="PING", is_async=is_async, setup=ping_setup),
            ]
    return built
