"""Upstream hard down, then back: the breaker opens on time, fails fast, probes, and closes.

The upstream is driven by a switch (a callable script reading a flag), so the only waits in
these scenarios are the breaker's own reset timeout: the behaviour under test.
"""

from __future__ import annotations

import asyncio
import statistics
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import httpx
import pytest

from resilient import CircuitBreaker, CircuitOpenError, instrumentation, resilient, testing
from resilient.httpx import ResilientTransport
from resilient.instrumentation import Event
from resilient.testing import Fault, FaultyUpstream, ReceivedRequest

from ._measure import Figures, percentile

THRESHOLD = 5
RESET_TIMEOUT = 0.2
FAIL_FAST_CALLS = 1_000
PROBE_CYCLES = 3
HAMMER_THREADS = 8
HAMMER_TASKS = 50
PACE = 0.001  # seconds between one hammering caller's calls: load, not synchronisation
# The probing phase lasts until PROBE_CYCLES probes went out, not a fixed time: on a loaded
# machine a cycle (reset timeout, probe round trip) takes longer than RESET_TIMEOUT. This is
# only the bound past which the breaker is taken to have stopped probing.
PROBE_PHASE_CAP = 30.0
AFTER_RECOVERY = 200


class Switch:
    """The upstream's script: every request gets a 503 while `down`, a 200 otherwise."""

    def __init__(self) -> None:
        self.down = True

    def __call__(self, _request: ReceivedRequest) -> Fault:
        return Fault.status(503) if self.down else Fault.ok()


@dataclass
class Tally:
    """What the callers saw, by outcome (thread-safe)."""

    ok: int = 0
    failed: int = 0
    rejected: int = 0
    retry_after: float = RESET_TIMEOUT
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, outcome: str, retry_after: float | None = None) -> None:
        with self.lock:
            setattr(self, outcome, getattr(self, outcome) + 1)
            if retry_after is not None:
                self.retry_after = retry_after


def classify(error: BaseException | None) -> tuple[str, float | None]:
    """The outcome name of a call that raised `error` (None: it succeeded)."""
    if error is None:
        return "ok", None
    if isinstance(error, CircuitOpenError):
        return "rejected", error.retry_after
    if isinstance(error, httpx.HTTPStatusError):
        return "failed", None
    raise error


def sync_outcome(call: Callable[[], object]) -> tuple[str, float | None]:
    try:
        call()
    except (CircuitOpenError, httpx.HTTPStatusError) as error:
        return classify(error)
    return classify(None)


async def async_outcome(call: Callable[[], Awaitable[object]]) -> tuple[str, float | None]:
    try:
        await call()
    except (CircuitOpenError, httpx.HTTPStatusError) as error:
        return classify(error)
    return classify(None)


def count(events: list[Event], name: str) -> int:
    return sum(1 for event in events if event.name == name)


class ProbeCounter:
    """Counts ``breaker.half_opened`` events as they arrive, for a loop condition (the full event
    list grows with every rejected call: counting it on every turn would be quadratic)."""

    def __init__(self) -> None:
        self.probes = 0

    def __call__(self, event: Event) -> None:
        if event.name == "breaker.half_opened":
            self.probes += 1

    def probing(self, deadline: float) -> bool:
        """Whether fewer than PROBE_CYCLES probes went out, within `deadline` (monotonic)."""
        return self.probes < PROBE_CYCLES and time.monotonic() < deadline


@pytest.mark.parametrize("entry", ["decorator-sync", "transport-sync"])
def test_hard_down_then_recovery_sync(entry: str, figures: Figures, events: list[Event]) -> None:
    """Sync callers: opens after exactly the threshold, fails fast (< 1 ms median), probes only, closes on recovery."""
    switch = Switch()
    breaker = CircuitBreaker(name=f"hard-down-{entry}", failure_threshold=THRESHOLD, reset_timeout=RESET_TIMEOUT)
    with FaultyUpstream(switch, max_lifetime=60.0) as upstream:
        if entry == "transport-sync":
            transport = ResilientTransport(retry=False, breaker=breaker)
            http = httpx.Client(transport=transport, base_url=upstream.url, timeout=5.0)

            def state() -> str:
                return next(iter(transport.breakers().values())).state

            def fetch() -> str:
                return http.get("/").raise_for_status().text

        else:
            http = httpx.Client(base_url=upstream.url, timeout=5.0)

            def state() -> str:
                return testing.breaker_state(breaker.name)

            @resilient(breaker=breaker)
            def fetch() -> str:
                return http.get("/").raise_for_status().text

        with http:
            # 1. Opening: exactly THRESHOLD failures reach the upstream, then rejections.
            opening = [sync_outcome(fetch)[0] for _ in range(THRESHOLD + 1)]
            assert opening == ["failed"] * THRESHOLD + ["rejected"]
            assert upstream.requests == THRESHOLD
            # 2. Failing fast.
            durations, tally = [], Tally()
            for _ in range(FAIL_FAST_CALLS):
                started = time.perf_counter()
                outcome, retry_after = sync_outcome(fetch)
                durations.append(time.perf_counter() - started)
                tally.add(outcome, retry_after)
            probes_so_far = count(events, "breaker.half_opened")
            assert upstream.requests == THRESHOLD + probes_so_far  # a slow machine may pass the reset timeout
            # 3. Still down, callers hammering: the upstream sees the half-open probes and nothing else.
            before_probing = upstream.requests
            half_opened_before = count(events, "breaker.half_opened")
            hammer, counter = Tally(), ProbeCounter()
            deadline = time.monotonic() + PROBE_PHASE_CAP
            instrumentation.add_listener(counter)

            def hammering() -> None:
                while counter.probing(deadline):
                    hammer.add(*sync_outcome(fetch))
                    time.sleep(PACE)

            threads = [threading.Thread(target=hammering) for _ in range(HAMMER_THREADS)]
            try:
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join(timeout=PROBE_PHASE_CAP + 10)
            finally:
                instrumentation.remove_listener(counter)
            probes = count(events, "breaker.half_opened") - half_opened_before
            probe_requests = upstream.requests - before_probing
            assert not any(thread.is_alive() for thread in threads)
            assert probes >= PROBE_CYCLES
            assert probe_requests == probes
            assert hammer.failed == probes
            assert hammer.ok == 0
            # 4. Recovery: the next probe succeeds, the breaker closes, every call succeeds.
            switch.down = False
            recovered_at = time.perf_counter()
            closed_after = None
            for _ in range(100):  # bounded: one reset timeout passes within a few rounds
                if sync_outcome(fetch)[0] == "ok":
                    closed_after = time.perf_counter() - recovered_at
                    break
                time.sleep(RESET_TIMEOUT / 4)  # waiting out the rest of the reset timeout
            assert closed_after is not None
            assert state() == "closed"
            after = [sync_outcome(fetch)[0] for _ in range(AFTER_RECOVERY)]
    median = statistics.median(durations)
    figures.report(
        f"hard_down_{entry.replace('-', '_')}",
        threshold=THRESHOLD,
        upstream_calls_to_open=THRESHOLD,
        fail_fast_calls=FAIL_FAST_CALLS,
        fail_fast_median_us=median * 1e6,
        fail_fast_p99_us=percentile(durations, 99) * 1e6,
        hammer_calls=hammer.ok + hammer.failed + hammer.rejected,
        probes=probes,
        upstream_while_down=probe_requests,
        closed_after_recovery_s=closed_after,
        success_after_recovery=after.count("ok") / AFTER_RECOVERY,
    )
    assert tally.rejected >= FAIL_FAST_CALLS - probes_so_far
    assert median < 0.001
    assert after == ["ok"] * AFTER_RECOVERY


async def test_hard_down_then_recovery_async(figures: Figures, events: list[Event]) -> None:
    """Async callers: opens after exactly the threshold, fails fast (< 1 ms median), probes only, closes on recovery."""
    switch = Switch()
    breaker = CircuitBreaker(name="hard-down-async", failure_threshold=THRESHOLD, reset_timeout=RESET_TIMEOUT)
    async with (
        FaultyUpstream(switch, max_lifetime=60.0) as upstream,
        httpx.AsyncClient(base_url=upstream.url, timeout=5.0) as http,
    ):

        @resilient(breaker=breaker)
        async def fetch() -> str:
            return (await http.get("/")).raise_for_status().text

        opening = [(await async_outcome(fetch))[0] for _ in range(THRESHOLD + 1)]
        assert opening == ["failed"] * THRESHOLD + ["rejected"]
        assert upstream.requests == THRESHOLD
        durations, tally = [], Tally()
        for _ in range(FAIL_FAST_CALLS):
            started = time.perf_counter()
            outcome, retry_after = await async_outcome(fetch)
            durations.append(time.perf_counter() - started)
            tally.add(outcome, retry_after)
        probes_so_far = count(events, "breaker.half_opened")
        assert upstream.requests == THRESHOLD + probes_so_far
        before_probing = upstream.requests
        half_opened_before = count(events, "breaker.half_opened")
        hammer, counter = Tally(), ProbeCounter()
        deadline = time.monotonic() + PROBE_PHASE_CAP

        async def hammering() -> None:
            while counter.probing(deadline):
                hammer.add(*await async_outcome(fetch))
                await asyncio.sleep(PACE)

        instrumentation.add_listener(counter)
        try:
            await asyncio.wait_for(
                asyncio.gather(*(hammering() for _ in range(HAMMER_TASKS))), timeout=PROBE_PHASE_CAP + 10
            )
        finally:
            instrumentation.remove_listener(counter)
        probes = count(events, "breaker.half_opened") - half_opened_before
        probe_requests = upstream.requests - before_probing
        assert probes >= PROBE_CYCLES
        assert probe_requests == probes
        assert hammer.failed == probes
        assert hammer.ok == 0
        switch.down = False
        recovered_at = time.perf_counter()
        closed_after = None
        for _ in range(100):
            if (await async_outcome(fetch))[0] == "ok":
                closed_after = time.perf_counter() - recovered_at
                break
            await asyncio.sleep(RESET_TIMEOUT / 4)  # waiting out the rest of the reset timeout
        assert closed_after is not None
        assert testing.breaker_state(breaker.name) == "closed"
        after = [(await async_outcome(fetch))[0] for _ in range(AFTER_RECOVERY)]
    median = statistics.median(durations)
    figures.report(
        "hard_down_decorator_async",
        threshold=THRESHOLD,
        upstream_calls_to_open=THRESHOLD,
        fail_fast_calls=FAIL_FAST_CALLS,
        fail_fast_median_us=median * 1e6,
        fail_fast_p99_us=percentile(durations, 99) * 1e6,
        hammer_calls=hammer.ok + hammer.failed + hammer.rejected,
        probes=probes,
        upstream_while_down=probe_requests,
        closed_after_recovery_s=closed_after,
        success_after_recovery=after.count("ok") / AFTER_RECOVERY,
    )
    assert tally.rejected >= FAIL_FAST_CALLS - probes_so_far
    assert median < 0.001
    assert after == ["ok"] * AFTER_RECOVERY
