"""Sections 6-8: the full stack against a hand-assembled one, the cost of telemetry, and a
breaker shared by eight threads."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import re
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from benchmarks._harness import Case, Phase, SyncBench
from benchmarks._support import (
    HUGE_RATE,
    PHASES,
    abind,
    awork,
    bind,
    breaker,
    peer,
    raw_case,
    resilient_api,
    resilient_decorator,
    sdk_tracer,
    work,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from contextlib import ExitStack

THREADS = 8
CALLS_PER_THREAD = 5
SLEEP_SECONDS = 0.01


# 6. full stack ----------------------------------------------------------------------------


FULL_STACK = "resilient(timeout,retry,breaker,rate_limit,bulkhead)"
FULL_STACK_SHORT = "resilient(...)"


def full_options(name: str) -> dict[str, object]:
    return {"timeout": 5.0, "retry": 3, "breaker": breaker(name), "rate_limit": HUGE_RATE, "bulkhead": 1000}


def resilient_full(
    name: str, *, is_async: bool, enter: Callable[[ExitStack], None] = lambda _stack: None
) -> Callable[[ExitStack], SyncBench]:
    def setup(stack: ExitStack) -> SyncBench:
        enter(stack)
        decorator = resilient_decorator(**full_options(name))
        return abind(decorator(awork)) if is_async else bind(decorator(work))

    return setup


def enter_traces_only(stack: ExitStack) -> None:
    """The goal's condition: an SDK *tracer* provider, and no meter provider to feed.

    The SDK phase installs a meter provider too (the ASGI and httpx peers record metrics);
    switching resilient's metrics off is what a service without a meter provider runs.
    The naive composition records no metrics, so this row is its like-for-like comparison.
    """
    configure = resilient_api("configure", "resilient.instrumentation")
    configure(metrics=False)
    stack.callback(configure, metrics=True)


def naive_sync(*, with_span: bool) -> Callable[[ExitStack], SyncBench]:
    """tenacity retry around a pybreaker call, a limits hit and a filtered structlog debug."""

    def setup(_stack: ExitStack) -> SyncBench:
        tenacity, limits = peer("tenacity"), peer("limits")
        guarded: Callable[[int], int] = peer("pybreaker").CircuitBreaker(name="naive-sync")(work)
        retried: Callable[[int], int] = tenacity.retry(
            stop=tenacity.stop_after_attempt(3), wait=tenacity.wait_exponential()
        )(guarded)
        limiter = peer("limits.strategies").FixedWindowRateLimiter(peer("limits.storage").MemoryStorage())
        item, log = limits.parse(HUGE_RATE), peer("structlog").get_logger("naive")

        def call(x: int) -> int:
            if not limiter.hit(item, "naive"):
                raise RuntimeError("rate limited")
            log.debug("calling", function="work")
            return retried(x)

        return bind(with_sync_span(call) if with_span else call)

    return setup


def with_sync_span(function: Callable[[int], int]) -> Callable[[int], int]:
    tracer = sdk_tracer()

    def spanned(x: int) -> int:
        with tracer.start_as_current_span("work"):
            return function(x)

    return spanned


def naive_async(*, with_span: bool) -> Callable[[ExitStack], SyncBench]:
    """The async composition: limits.aio, asyncio.timeout, tenacity, pybreaker.calling()."""

    def setup(_stack: ExitStack) -> SyncBench:
        tenacity, limits = peer("tenacity"), peer("limits")
        pybreaker_breaker = peer("pybreaker").CircuitBreaker(name="naive-async")

        async def attempt(x: int) -> int:
            with pybreaker_breaker.calling():
                return await awork(x)

        retried: Callable[[int], Awaitable[int]] = tenacity.retry(
            stop=tenacity.stop_after_attempt(3), wait=tenacity.wait_exponential()
        )(attempt)
        limiter = peer("limits.aio.strategies").FixedWindowRateLimiter(peer("limits.aio.storage").MemoryStorage())
        item, log = limits.parse(HUGE_RATE), peer("structlog").get_logger("naive")

        async def call(x: int) -> int:
            if not await limiter.hit(item, "naive"):
                raise RuntimeError("rate limited")
            log.debug("calling", function="work")
            async with asyncio.timeout(5.0):
                return await retried(x)

        return abind(with_async_span(call) if with_span else call)

    return setup


def with_async_span(function: Callable[[int], Awaitable[int]]) -> Callable[[int], Awaitable[int]]:
    tracer = sdk_tracer()

    async def spanned(x: int) -> int:
        with tracer.start_as_current_span("work"):
            return await function(x)

    return spanned


def full_stack_cases() -> list[Case]:
    cases: list[Case] = []
    for phase, suffix in PHASES:
        with_span = phase == "sdk"
        naive = "naive: tenacity+pybreaker+limits+structlog" + (" + span" if with_span else "")
        for mode in ("sync", "async"):
            is_async = mode == "async"
            section = f"6. full stack, {suffix} · {mode}"
            make_naive = naive_async if is_async else naive_sync
            ours = functools.partial(Case, section=section, peers=(naive,), is_async=is_async, phase=phase)
            cases += [
                raw_case(section, is_async=is_async, phase=phase),
                ours(name=FULL_STACK, setup=resilient_full(f"bench-full-{phase}-{mode}", is_async=is_async)),
            ]
            if with_span:
                traces_only = resilient_full(f"bench-full-traces-{mode}", is_async=is_async, enter=enter_traces_only)
                cases.append(
                    ours(
                        name=f"{FULL_STACK_SHORT}, SDK tracer only (no meter provider)",
                        setup=traces_only,
                        isolated=True,
                    )
                )
            cases.append(ours(name=naive, tag="naive stack", peers=(), setup=make_naive(with_span=with_span)))
    return cases


# 7. telemetry cost ------------------------------------------------------------------------

TELEMETRY_OFF = "telemetry off (control)"
NO_SDK = "no SDK, logs below threshold"


def policy_options(name: str) -> dict[str, object]:
    return {"retry": 3, "breaker": breaker(name)}


def enter_telemetry_off(stack: ExitStack) -> None:
    """The control: resilient's built-in traces, metrics and logs all switched off."""
    configure = resilient_api("configure", "resilient.instrumentation")
    configure(traces=False, metrics=False, logs=False)
    stack.callback(configure, traces=True, metrics=True, logs=True)


def telemetry_policy(
    name: str,
    *,
    is_async: bool,
    enter: Callable[[ExitStack], None] = lambda _stack: None,
) -> Callable[[ExitStack], SyncBench]:
    def setup(stack: ExitStack) -> SyncBench:
        enter(stack)
        decorator = resilient_decorator(**policy_options(name))
        return abind(decorator(awork)) if is_async else bind(decorator(work))

    return setup


def enter_verbose_logs(stack: ExitStack) -> None:
    """Logs above threshold: structlog and the stdlib "resilient" logger at DEBUG, to devnull."""
    structlog = peer("structlog")
    sink = stack.enter_context(Path(os.devnull).open("w"))  # noqa: SIM115 - closed by the stack
    previous = structlog.get_config()
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
        logger_factory=structlog.PrintLoggerFactory(sink),
        cache_logger_on_first_use=False,
    )
    stack.callback(lambda: structlog.configure(**previous))
    logger = logging.getLogger("resilient")
    handler, level = logging.StreamHandler(sink), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    stack.callback(logger.removeHandler, handler)
    stack.callback(logger.setLevel, level)


def telemetry_case(
    section: str,
    label: str,
    *,
    mode: str,
    phase: Phase = "plain",
    peers: tuple[str, ...] = (TELEMETRY_OFF,),
    enter: Callable[[ExitStack], None] | None = None,
) -> Case:
    is_async = mode == "async"
    slug = re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")
    setup = telemetry_policy(f"bench-tel-{slug}-{mode}", is_async=is_async, enter=enter or (lambda _stack: None))
    return Case(
        section=section,
        name=label,
        peers=peers,
        is_async=is_async,
        phase=phase,
        setup=setup,
        isolated=enter is not None,
    )


def telemetry_cases() -> list[Case]:
    cases: list[Case] = []
    for mode in ("sync", "async"):
        section = f"7. telemetry cost, resilient(retry=3, breaker) · {mode}"
        both = (TELEMETRY_OFF, NO_SDK)
        cases += [
            raw_case(section, is_async=mode == "async"),
            telemetry_case(section, TELEMETRY_OFF, mode=mode, peers=(), enter=enter_telemetry_off),
            telemetry_case(section, NO_SDK, mode=mode),
            telemetry_case(
                section, "logs above threshold (DEBUG to devnull)", mode=mode, peers=both, enter=enter_verbose_logs
            ),
            telemetry_case(section, "SDK tracer, no exporter", mode=mode, phase="sdk", peers=both),
        ]
    return cases


# 8. breaker under 8 threads ---------------------------------------------------------------


def slow_work() -> None:
    time.sleep(SLEEP_SECONDS)


def hammer(call: Callable[[], object], threads: int = THREADS) -> None:
    """``threads`` threads, each making CALLS_PER_THREAD calls; returns when all are done."""

    def worker() -> None:
        for _ in range(CALLS_PER_THREAD):
            call()

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()


def threaded(
    make: Callable[[], Callable[[Callable[[], None]], Callable[[], object]]],
) -> Callable[[ExitStack], SyncBench]:
    def setup(_stack: ExitStack) -> SyncBench:
        return functools.partial(hammer, make()(slow_work))

    return setup


def ideal(_stack: ExitStack) -> SyncBench:
    return functools.partial(hammer, slow_work, threads=1)


def no_breaker() -> Callable[[Callable[[], None]], Callable[[], object]]:
    return lambda function: function


def thread_cases() -> list[Case]:
    section = (
        f"8. one breaker, {THREADS} threads x {CALLS_PER_THREAD} calls of sleep({SLEEP_SECONDS}) (wall time per run)"
    )
    peers = ("pybreaker", "circuitbreaker @circuit")
    return [
        Case(
            section=section, name=f"ideal: 1 thread x {CALLS_PER_THREAD} calls", tag="ideal", baseline=True, setup=ideal
        ),
        Case(section=section, name=f"{THREADS} threads, no breaker", setup=threaded(no_breaker)),
        Case(
            section=section,
            name="resilient(breaker=CircuitBreaker)",
            peers=peers,
            setup=threaded(lambda: resilient_decorator(breaker=breaker("bench-threads"))),
        ),
        Case(
            section=section,
            name="pybreaker",
            setup=threaded(lambda: peer("pybreaker").CircuitBreaker(name="bench-threads")),
        ),
        Case(
            section=section,
            name="circuitbreaker @circuit",
            tag="circuitbreaker",
            setup=threaded(lambda: peer("circuitbreaker").circuit(name="bench-threads")),
        ),
    ]


def cases() -> list[Case]:
    return [*full_stack_cases(), *telemetry_cases(), *thread_cases()]
