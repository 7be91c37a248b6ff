"""50 threads and 500 tasks through the same policies, every strategy at once: no deadlock, exact counts.

Two policies share one set of strategies (timeout with thread mode for the sync callers,
retry with a budget, a failure-rate breaker, a rate limit, a bulkhead), one of them with a
fallback. Each policy decorates a sync and an async function, so threads and tasks contend
for the same limiter, bulkhead, breaker and budget. The functions succeed, fail with a
retryable or a programming error, or overrun the attempt timeout, at seeded random.

Run for DURATION seconds (5 s, as the issue asks). Every caller tallies what it saw;
the `resilient.calls` metric must count exactly the same calls under the same outcomes.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable

from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from resilient import (
    Bulkhead,
    BulkheadFullError,
    CircuitBreaker,
    CircuitOpenError,
    Fallback,
    Policy,
    RateLimit,
    RateLimitedError,
    Retry,
    RetryBudget,
    Timeout,
)

from ._measure import Figures, MetricDelta

DURATION = 5.0
THREADS = 50
TASKS = 500
THREAD_PACE = 0.01  # mean seconds between one caller's calls: an offered load near the rate limit
TASK_PACE = 0.1
BOUND = 30.0  # seconds past DURATION by which everything must have finished: else a deadlock
FALLBACK = "fallback"
OUTCOMES = ("success", "failure", "rejected", "fallback")


class FlakyError(Exception):
    """A retryable failure of the dependency."""


def policy(name: str, *, fallback: bool) -> Policy:
    """Every strategy; limits sized so that each one rejects some calls under this load."""
    return Policy(
        name=name,
        timeout=Timeout(total=0.05, attempt=0.01, sync_mode="thread", max_threads=16),
        retry=Retry(attempts=3, on=FlakyError, initial_delay=0.001, max_delay=0.002, budget=RetryBudget(ratio=0.3)),
        breaker=CircuitBreaker(name=name, failure_rate=0.6, window=50, minimum_calls=20, reset_timeout=0.02),
        rate_limit=RateLimit("3000/second"),
        bulkhead=Bulkhead(max_concurrent=32, max_wait=0.002),
        fallback=Fallback(lambda _exc: FALLBACK) if fallback else None,
    )


def behaviour(rng: random.Random) -> tuple[float, type[Exception] | None]:
    """(seconds the dependency takes, what it raises) for one attempt."""
    roll = rng.random()
    if roll < 0.15:
        return 0.0, FlakyError
    if roll < 0.20:
        return 0.0, ValueError
    if roll < 0.27:
        return 0.02, None  # overruns the 10 ms attempt timeout
    return (0.001 if roll < 0.5 else 0.0), None


def make_sync(p: Policy) -> Callable[[random.Random], str]:
    @p
    def work(rng: random.Random) -> str:
        seconds, error = behaviour(rng)
        if seconds:
            time.sleep(seconds)  # the dependency's own latency
        if error is not None:
            raise error
        return "ok"

    return work


def make_async(p: Policy) -> Callable[[random.Random], Awaitable[str]]:
    @p
    async def work(rng: random.Random) -> str:
        seconds, error = behaviour(rng)
        await asyncio.sleep(seconds)
        if error is not None:
            raise error
        return "ok"

    return work


def outcome_of(result: object, error: Exception | None) -> str:
    """What a caller saw, in the metric's outcome names."""
    if error is None:
        return FALLBACK if result == FALLBACK else "success"
    if isinstance(error, CircuitOpenError | RateLimitedError | BulkheadFullError):
        return "rejected"
    return "failure"


class Tallies:
    """Per policy, per outcome: what callers saw (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.seen: dict[str, Counter[str]] = {}

    def add(self, name: str, counts: Counter[str]) -> None:
        with self._lock:
            self.seen.setdefault(name, Counter()).update(counts)


def test_threads_and_tasks_mixing_every_strategy(figures: Figures, metric_reader: InMemoryMetricReader) -> None:
    """No deadlock, and calls == successes + failures + rejections + fallbacks == calls made, per policy."""
    policies = {name: policy(name, fallback=name.endswith("fallback")) for name in ("mix-plain", "mix-fallback")}
    sync_work = {name: make_sync(p) for name, p in policies.items()}
    async_work = {name: make_async(p) for name, p in policies.items()}
    delta = MetricDelta(metric_reader, "resilient.calls")
    tallies = Tallies()
    stop_at = time.monotonic() + DURATION

    def thread_caller(index: int) -> None:
        rng = random.Random(index)
        names = list(policies)
        counts: dict[str, Counter[str]] = {name: Counter() for name in names}
        while time.monotonic() < stop_at:
            name = names[index % 2] if rng.random() < 0.8 else rng.choice(names)
            try:
                result, error = sync_work[name](rng), None
            except Exception as exc:
                result, error = None, exc
            counts[name][outcome_of(result, error)] += 1
            time.sleep(rng.uniform(0, 2 * THREAD_PACE))  # pacing a client, not synchronising
        for name, seen in counts.items():
            tallies.add(name, seen)

    async def task_caller(index: int) -> None:
        rng = random.Random(10_000 + index)
        names = list(policies)
        counts: dict[str, Counter[str]] = {name: Counter() for name in names}
        while time.monotonic() < stop_at:
            name = rng.choice(names)
            try:
                result, error = await async_work[name](rng), None
            except Exception as exc:
                result, error = None, exc
            counts[name][outcome_of(result, error)] += 1
            await asyncio.sleep(rng.uniform(0, 2 * TASK_PACE))  # pacing a client, not synchronising
        for name, seen in counts.items():
            tallies.add(name, seen)

    async def all_tasks() -> None:
        await asyncio.wait_for(asyncio.gather(*(task_caller(i) for i in range(TASKS))), DURATION + BOUND)

    started = time.monotonic()
    threads = [threading.Thread(target=thread_caller, args=(i,), daemon=True) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    asyncio.run(all_tasks())
    for thread in threads:
        thread.join(timeout=max(started + DURATION + BOUND - time.monotonic(), 0.1))
    finished_after = time.monotonic() - started
    assert not any(thread.is_alive() for thread in threads), "threads still running: a deadlock"

    for name in policies:
        seen = tallies.seen[name]
        counted = delta.by("resilient.outcome", **{"resilient.policy": name})
        reasons = delta.by("resilient.rejection", **{"resilient.policy": name, "resilient.outcome": "rejected"})
        made = sum(seen.values())
        figures.report(
            f"concurrency_{name.replace('-', '_')}",
            seconds=DURATION,
            finished_after_s=finished_after,
            threads=THREADS,
            tasks=TASKS,
            calls_made=made,
            calls_counted=sum(counted.values()),
            **{f"seen_{outcome}": seen[outcome] for outcome in OUTCOMES},
            **{f"counted_{outcome}": int(counted.get(outcome, 0)) for outcome in OUTCOMES},
            **{f"rejected_{reason}": int(n) for reason, n in sorted(reasons.items())},
        )
        assert {outcome: int(n) for outcome, n in counted.items()} == {o: n for o, n in seen.items() if n}
        assert sum(counted.values()) == made
        assert sum(reasons.values()) == seen["rejected"]
    assert all(tallies.seen["mix-plain"][outcome] for outcome in ("success", "failure", "rejected"))
    assert all(tallies.seen["mix-fallback"][outcome] for outcome in ("success", "fallback"))
