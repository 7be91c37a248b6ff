"""Sections 1-5: each strategy alone, resilient against the peer a user would pick."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from benchmarks._harness import Case, Setup, SyncBench
from benchmarks._support import (
    HUGE_RATE,
    HUGE_RATE_AMOUNT,
    abind,
    awork,
    bind,
    breaker,
    peer,
    raw_case,
    resilient_decorator,
    work,
)

if TYPE_CHECKING:
    from contextlib import ExitStack

Decorator = Callable[[Callable[..., Any]], Any]


def decorated(make: Callable[[], Decorator], *, is_async: bool) -> Setup:
    """A setup that decorates the work function once and times calls through it."""

    def setup(_stack: ExitStack) -> SyncBench:
        decorator = make()
        return abind(decorator(awork)) if is_async else bind(decorator(work))

    return setup


def pair(section: str, name: str, make: Callable[[], Decorator], **extra: Any) -> list[Case]:
    """The same decorator measured on a sync and on an async function."""
    return [
        Case(
            section=f"{section} · {mode}",
            name=name,
            is_async=mode == "async",
            setup=decorated(make, is_async=mode == "async"),
            **extra,
        )
        for mode in ("sync", "async")
    ]


def sync_sections(section: str) -> list[Case]:
    return [raw_case(f"{section} · sync"), raw_case(f"{section} · async", is_async=True)]


# 1. baseline ------------------------------------------------------------------------------


def passthrough() -> Decorator:
    def decorator(function: Callable[..., Any]) -> Any:
        if asyncio.iscoroutinefunction(function):

            @functools.wraps(function)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                return await function(*args, **kwargs)

            return async_wrapper

        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return function(*args, **kwargs)

        return wrapper

    return decorator


def baseline_cases() -> list[Case]:
    section = "1. baseline"
    return [*sync_sections(section), *pair(section, "functools.wraps pass-through", passthrough, tag="wraps")]


# 2. retry ---------------------------------------------------------------------------------


def tenacity_retry() -> Decorator:
    tenacity = peer("tenacity")
    decorator: Decorator = tenacity.retry(stop=tenacity.stop_after_attempt(3), wait=tenacity.wait_exponential())
    return decorator


def stamina_retry() -> Decorator:
    decorator: Decorator = peer("stamina").retry(on=Exception, attempts=3)
    return decorator


def backoff_retry() -> Decorator:
    backoff = peer("backoff")
    decorator: Decorator = backoff.on_exception(backoff.expo, Exception, max_tries=3)
    return decorator


def retry_cases() -> list[Case]:
    section = "2. retry, success first time"
    peers = ("tenacity @retry", "stamina.retry", "backoff.on_exception")
    return [
        *sync_sections(section),
        *pair(section, "resilient(retry=3)", lambda: resilient_decorator(retry=3), peers=peers),
        *pair(section, "tenacity @retry", tenacity_retry, tag="tenacity"),
        *pair(section, "stamina.retry", stamina_retry, tag="stamina"),
        *pair(section, "backoff.on_exception", backoff_retry, tag="backoff"),
    ]


# 3. breaker -------------------------------------------------------------------------------


def pybreaker_decorator() -> Decorator:
    decorator: Decorator = peer("pybreaker").CircuitBreaker(name="bench-pybreaker")
    return decorator


def circuitbreaker_decorator() -> Decorator:
    decorator: Decorator = peer("circuitbreaker").circuit(name="bench-circuitbreaker")
    return decorator


def purgatory_sync() -> Decorator:
    decorator: Decorator = peer("purgatory").SyncCircuitBreakerFactory()("bench-purgatory")
    return decorator


def purgatory_async() -> Decorator:
    decorator: Decorator = peer("purgatory").AsyncCircuitBreakerFactory()("bench-purgatory")
    return decorator


def breaker_cases() -> list[Case]:
    section = "3. circuit breaker, closed"
    sync, asy = f"{section} · sync", f"{section} · async"
    sync_peers = ("pybreaker", "circuitbreaker @circuit", "purgatory")
    async_peers = ("circuitbreaker @circuit", "purgatory")
    return [
        *sync_sections(section),
        Case(
            section=sync,
            name="resilient(breaker=CircuitBreaker)",
            peers=sync_peers,
            setup=decorated(lambda: resilient_decorator(breaker=breaker("bench-b-sync")), is_async=False),
        ),
        Case(
            section=asy,
            name="resilient(breaker=CircuitBreaker)",
            peers=async_peers,
            is_async=True,
            setup=decorated(lambda: resilient_decorator(breaker=breaker("bench-b-async")), is_async=True),
        ),
        Case(section=sync, name="pybreaker", setup=decorated(pybreaker_decorator, is_async=False)),
        *pair(section, "circuitbreaker @circuit", circuitbreaker_decorator, tag="circuitbreaker"),
        Case(section=sync, name="purgatory", setup=decorated(purgatory_sync, is_async=False)),
        Case(section=asy, name="purgatory", is_async=True, setup=decorated(purgatory_async, is_async=True)),
    ]


# 4. rate limit ----------------------------------------------------------------------------


def limits_sync(strategy: str) -> Decorator:
    """limits' strategy with a memory storage, hit before every call, as a user writes it."""
    limits = peer("limits")
    limiter = getattr(peer("limits.strategies"), strategy)(peer("limits.storage").MemoryStorage())
    item = limits.parse(HUGE_RATE)

    def decorator(function: Callable[[int], int]) -> Callable[[int], int]:
        def limited(x: int) -> int:
            if not limiter.hit(item, "bench"):
                raise RuntimeError("rate limited")
            return function(x)

        return limited

    return decorator


def limits_async(strategy: str) -> Decorator:
    limits = peer("limits")
    storage = peer("limits.aio.storage").MemoryStorage()
    limiter = getattr(peer("limits.aio.strategies"), strategy)(storage)
    item = limits.parse(HUGE_RATE)

    def decorator(function: Callable[[int], Awaitable[int]]) -> Callable[[int], Awaitable[int]]:
        async def limited(x: int) -> int:
            if not await limiter.hit(item, "bench"):
                raise RuntimeError("rate limited")
            return await function(x)

        return limited

    return decorator


def pyrate_limiter() -> Decorator:
    pyrate = peer("pyrate_limiter")
    limiter = pyrate.Limiter(pyrate.Rate(HUGE_RATE_AMOUNT, pyrate.Duration.SECOND))
    decorator: Decorator = limiter.as_decorator(name="bench")
    return decorator


# limits' moving window and pyrate-limiter's bucket keep one entry per admitted call in the
# window, trimmed by a background thread; under a limit that is never reached the list holds
# every call of the last second. Those rows run alone (``isolated``) so the trimming is
# charged to them rather than to whichever row it interrupts.
GROWING_STATE = {"MovingWindow"}


def rate_limit_cases() -> list[Case]:
    section = "4. rate limit, never exceeded"
    peers = ("limits FixedWindow.hit", "limits MovingWindow.hit", "pyrate-limiter")
    resilient_name = f'resilient(rate_limit="{HUGE_RATE}")'
    cases = [
        *sync_sections(section),
        *pair(section, resilient_name, lambda: resilient_decorator(rate_limit=HUGE_RATE), peers=peers),
    ]
    for label, strategy in (("FixedWindow", "FixedWindowRateLimiter"), ("MovingWindow", "MovingWindowRateLimiter")):
        cases += limits_pair(section, label, strategy)
    return [*cases, *pair(section, "pyrate-limiter", pyrate_limiter, isolated=True)]


def limits_pair(section: str, label: str, strategy: str) -> list[Case]:
    common: dict[str, Any] = {
        "name": f"limits {label}.hit",
        "tag": f"limits {label}",
        "isolated": label in GROWING_STATE,
    }
    return [
        Case(
            section=f"{section} · sync",
            setup=decorated(functools.partial(limits_sync, strategy), is_async=False),
            **common,
        ),
        Case(
            section=f"{section} · async",
            is_async=True,
            setup=decorated(functools.partial(limits_async, strategy), is_async=True),
            **common,
        ),
    ]


# 5. timeout -------------------------------------------------------------------------------


def asyncio_timeout() -> Decorator:
    def decorator(function: Callable[[int], Awaitable[int]]) -> Callable[[int], Awaitable[int]]:
        async def bounded(x: int) -> int:
            async with asyncio.timeout(5.0):
                return await function(x)

        return bounded

    return decorator


def timeout_cases() -> list[Case]:
    section = "5. timeout"
    sync, asy = f"{section} · sync", f"{section} · async"
    make = functools.partial(resilient_decorator, timeout=5.0)
    return [
        *sync_sections(section),
        Case(section=sync, name="resilient(timeout=5.0), cooperative", setup=decorated(make, is_async=False)),
        Case(
            section=asy,
            name="resilient(timeout=5.0)",
            peers=("async with asyncio.timeout",),
            is_async=True,
            setup=decorated(make, is_async=True),
        ),
        Case(
            section=asy,
            name="async with asyncio.timeout",
            tag="asyncio.timeout",
            is_async=True,
            setup=decorated(asyncio_timeout, is_async=True),
        ),
    ]


def cases() -> list[Case]:
    return [*baseline_cases(), *retry_cases(), *breaker_cases(), *rate_limit_cases(), *timeout_cases()]
