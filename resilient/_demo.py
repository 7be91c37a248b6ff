"""`python -m resilient demo`: the same workload through a naive client and through `resilient`.

A `FaultyUpstream` on 127.0.0.1 plays a dependency that is flaky (errors, resets, hangs),
then down for a while, then back. Worker threads call it for a fixed time, first with a
plain `httpx.Client` (as code written without safeguards does), then with a client whose
transport is `resilient.httpx.ResilientTransport` plus a fallback. The table compares
what the callers saw and what the dependency had to absorb.
"""

from __future__ import annotations

import argparse
import random
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from resilient import CircuitBreaker, Fallback, Policy, Retry, RetryBudget, Timeout, instrumentation
from resilient.instrumentation import Event
from resilient.testing._upstream import Fault, FaultyUpstream, ReceivedRequest

__all__ = ["DemoConfig", "RunResult", "main", "run_demo"]

CACHED = "cached"
PACE = 0.025  # seconds between the starts of one worker's calls: 40 calls/s per worker


@dataclass(frozen=True, slots=True)
class DemoConfig:
    """The workload: how long, how many callers, how the dependency misbehaves."""

    duration: float = 8.0  # both runs together (hung naive calls add up to hang_seconds)
    workers: int = 8
    error_rate: float = 0.15  # 503 answers
    reset_rate: float = 0.05  # connections reset
    hang_rate: float = 0.05  # requests that hang
    hang_seconds: float = 2.0
    outage: tuple[float, float] = (0.35, 0.65)  # share of each run during which it is down
    seed: int = 7


@dataclass(slots=True)
class RunResult:
    """What one run measured."""

    name: str
    latencies: list[float] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)
    upstream_calls: int = 0
    events: Counter[str] = field(default_factory=Counter)

    @property
    def calls(self) -> int:
        return sum(self.outcomes.values())

    def share(self, *outcomes: str) -> float:
        return sum(self.outcomes[o] for o in outcomes) / self.calls if self.calls else 0.0

    def percentile(self, q: float) -> float:
        if not self.latencies:
            return 0.0
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _fault_plan(config: DemoConfig, started: list[float]) -> Callable[[ReceivedRequest], Fault]:
    """Flaky, then down (every request a 503), then flaky again, by time since the run began."""
    rng = random.Random(config.seed)  # noqa: S311 - fault choice, not security
    run_length = config.duration / 2
    flaky = [
        (config.error_rate, Fault.status(503)),
        (config.reset_rate, Fault.reset()),
        (config.hang_rate, Fault.hang(config.hang_seconds)),
    ]

    def choose(_request: ReceivedRequest) -> Fault:
        elapsed = (time.monotonic() - started[0]) / run_length
        if config.outage[0] <= elapsed < config.outage[1]:
            return Fault.status(503)
        roll = rng.random()
        for share, fault in flaky:
            if roll < share:
                return fault
            roll -= share
        return Fault.ok('{"price": 9.99}')

    return choose


def _drive(call: Callable[[], str], seconds: float, workers: int, result: RunResult) -> None:
    """Run `workers` threads, each starting a call every `PACE` seconds (or as soon as the last ends).

    Paced rather than back to back, so both runs offer the same load: a client that fails
    fast does not get to count thousands of extra calls.
    """
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def worker() -> None:
        next_start = time.monotonic()
        while next_start < stop_at:
            pause = next_start - time.monotonic()
            if pause > 0:
                time.sleep(pause)  # pacing the workload, not synchronising anything
            next_start = max(next_start + PACE, time.monotonic())
            began = time.monotonic()
            try:
                outcome = call()
            except Exception as exc:  # the demo counts every failure kind
                outcome = "error: " + type(exc).__name__
            with lock:
                result.latencies.append(time.monotonic() - began)
                result.outcomes[outcome] += 1

    threads = [threading.Thread(target=worker, name=f"demo-worker-{i}") for i in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def _naive_run(config: DemoConfig) -> RunResult:
    result = RunResult("naive httpx")
    started = [time.monotonic()]
    with FaultyUpstream(_fault_plan(config, started), max_lifetime=config.duration * 4) as upstream:
        with httpx.Client(base_url=upstream.url) as client:  # httpx's default 5 s timeout, no retry

            def call() -> str:
                response = client.get("/price")
                return "ok" if response.status_code == 200 else f"http {response.status_code}"

            started[0] = time.monotonic()
            _drive(call, config.duration / 2, config.workers, result)
        result.upstream_calls = upstream.requests
    return result


def _protected_policy() -> tuple[dict[str, Any], Policy]:
    transport_options: dict[str, Any] = {
        "name": "price-api",
        "timeout": Timeout(total=1.0, attempt=0.25),
        # 50 % budget: the demo wants success through a 25 % fault rate (see README, retry budget).
        "retry": Retry(attempts=4, initial_delay=0.02, max_delay=0.2, budget=RetryBudget(ratio=0.5)),
        "breaker": CircuitBreaker(name="price-api", failure_rate=0.8, window=40, minimum_calls=20, reset_timeout=0.3),
    }
    # Outermost: when the dependency is down, answer from the last known price.
    fallback = Policy(name="price", fallback=Fallback(lambda _exc: CACHED))
    return transport_options, fallback


def _protected_run(config: DemoConfig) -> RunResult:
    from resilient import httpx as resilient_httpx  # noqa: PLC0415 - keep `import resilient` light

    result = RunResult("resilient")
    started = [time.monotonic()]
    transport_options, fallback = _protected_policy()

    def count(event: Event) -> None:
        result.events[event.name] += 1
        if event.name == "retry.scheduled" and isinstance(event.error, httpx.TimeoutException):
            result.events["attempt.timed_out"] += 1

    instrumentation.add_listener(count)
    try:
        with FaultyUpstream(_fault_plan(config, started), max_lifetime=config.duration * 4) as upstream:
            with resilient_httpx.client(base_url=upstream.url, **transport_options) as client:

                def fetch() -> str:
                    response = client.get("/price")
                    response.raise_for_status()
                    return "ok"

                def call() -> str:
                    return fallback.call(fetch)

                started[0] = time.monotonic()
                _drive(call, config.duration / 2, config.workers, result)
            result.upstream_calls = upstream.requests
    finally:
        instrumentation.remove_listener(count)
    return result


def run_demo(config: DemoConfig) -> tuple[RunResult, RunResult]:
    """Run the naive then the protected workload; return both results."""
    return _naive_run(config), _protected_run(config)


def _rows(naive: RunResult, protected: RunResult) -> list[tuple[str, str, str]]:
    def pct(value: float) -> str:
        return f"{value * 100:.1f} %"

    def ms(value: float) -> str:
        return f"{value * 1000:.0f} ms"

    def per_call(run: RunResult) -> str:
        return f"{run.upstream_calls} ({run.upstream_calls / max(run.calls, 1):.2f}/call)"

    return [
        ("logical calls", str(naive.calls), str(protected.calls)),
        ("answered (fresh)", pct(naive.share("ok")), pct(protected.share("ok"))),
        ("answered (fresh or cached)", pct(naive.share("ok")), pct(protected.share("ok", CACHED))),
        ("failed", pct(1 - naive.share("ok")), pct(1 - protected.share("ok", CACHED))),
        ("latency p50", ms(naive.percentile(0.5)), ms(protected.percentile(0.5))),
        ("latency p99", ms(naive.percentile(0.99)), ms(protected.percentile(0.99))),
        ("latency max", ms(max(naive.latencies, default=0)), ms(max(protected.latencies, default=0))),
        ("calls that reached the upstream", per_call(naive), per_call(protected)),
        ("retries", "0", str(protected.events["retry.scheduled"])),
        ("attempts cut by a timeout", "0", str(protected.events["attempt.timed_out"])),
        ("breaker trips", "0", str(protected.events["breaker.opened"])),
        ("calls failed fast (breaker open)", "0", str(protected.events["breaker.rejected"])),
        ("answers from the fallback", "0", str(protected.outcomes[CACHED])),
    ]


def _story(naive: RunResult, protected: RunResult) -> list[str]:
    """Which safeguard made which difference, in words computed from the figures."""
    lines = []
    if protected.events["retry.scheduled"]:
        lines.append(
            f"- retries ({protected.events['retry.scheduled']}) turned transient 503s and resets into answers;"
            f" the budget kept them to {protected.events['retry.scheduled'] / max(protected.calls, 1):.2f} per call."
        )
    if protected.events["attempt.timed_out"]:
        lines.append(
            f"- attempt timeouts cut {protected.events['attempt.timed_out']} hung requests at 250 ms; the naive"
            f" client waited up to {max(naive.latencies, default=0):.1f} s on each."
        )
    if protected.events["breaker.opened"]:
        lines.append(
            f"- the breaker opened {protected.events['breaker.opened']}x during the outage and failed"
            f" {protected.events['breaker.rejected']} calls fast instead of sending them to a dead dependency."
        )
    if protected.outcomes[CACHED]:
        lines.append(f"- the fallback answered {protected.outcomes[CACHED]} of those calls from cache.")
    return lines


def _is_better(naive: RunResult, protected: RunResult) -> bool:
    return protected.share("ok", CACHED) > naive.share("ok") and protected.percentile(0.99) < naive.percentile(0.99)


def report(naive: RunResult, protected: RunResult, out: Callable[[str], None] = print) -> bool:
    """Print the side-by-side table and the story; True when the protected run did better."""
    rows = _rows(naive, protected)
    width = max(len(row[0]) for row in rows)
    out(f"{'':<{width}}  {'naive httpx':>16}  {'resilient':>16}")
    for label, left, right in rows:
        out(f"{label:<{width}}  {left:>16}  {right:>16}")
    out("")
    for line in _story(naive, protected):
        out(line)
    better = _is_better(naive, protected)
    out("" if better else "!! the protected run was not better")
    return better


def _parse(argv: Sequence[str]) -> DemoConfig:
    parser = argparse.ArgumentParser(prog="python -m resilient demo", description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=8.0, help="seconds for both runs together (default 8)")
    parser.add_argument("--workers", type=int, default=8, help="concurrent callers (default 8)")
    parser.add_argument("--error-rate", type=float, default=0.15, help="share of 503 answers (default 0.15)")
    parser.add_argument("--reset-rate", type=float, default=0.05, help="share of reset connections (default 0.05)")
    parser.add_argument("--hang-rate", type=float, default=0.05, help="share of hung requests (default 0.05)")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    for name in ("error_rate", "reset_rate", "hang_rate"):
        if not 0 <= getattr(args, name) <= 1:
            parser.error(f"--{name.replace('_', '-')} must be between 0 and 1, got {getattr(args, name)}")
    if args.error_rate + args.reset_rate + args.hang_rate > 1:
        parser.error("--error-rate + --reset-rate + --hang-rate must not exceed 1")
    if args.duration <= 0 or args.workers < 1:
        parser.error("--duration must be > 0 and --workers >= 1")
    return DemoConfig(
        duration=args.duration,
        workers=args.workers,
        error_rate=args.error_rate,
        reset_rate=args.reset_rate,
        hang_rate=args.hang_rate,
        seed=args.seed,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m resilient demo`; exit status 1 if resilient did not do better."""
    config = _parse(sys.argv[2:] if argv is None else argv)
    instrumentation.configure(logs=False)  # the table tells the story; events are counted
    print(  # noqa: T201 - a command-line program
        f"A dependency on 127.0.0.1: {config.error_rate:.0%} 503s, {config.reset_rate:.0%} resets,"
        f" {config.hang_rate:.0%} hangs of {config.hang_seconds:.0f} s, and down for the middle"
        f" {config.outage[1] - config.outage[0]:.0%} of each run. {config.workers} callers,"
        f" {config.duration / 2:.0f} s per run.\n"
    )
    naive, protected = run_demo(config)
    return 0 if report(naive, protected) else 1
