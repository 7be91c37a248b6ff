"""Flaky, slow and failing functions, each protected by one `@resilient` line.

Run it: ``python examples/decorators.py``. Nothing here talks to the network: the
"dependencies" are functions that fail the way real ones do.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field

from resilient import CircuitBreaker, DeadlineExceededError, Fallback, Retry, Timeout, resilient

RNG = random.Random(7)


@dataclass
class Tally:
    """What each protected function did, for the summary (and the example's test)."""

    calls: dict[str, int] = field(default_factory=dict)
    outcomes: dict[str, list[str]] = field(default_factory=dict)

    def hit(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1

    def outcome(self, name: str, text: str) -> None:
        self.outcomes.setdefault(name, []).append(text)


TALLY = Tally()


# 1. A flaky dependency: a third of calls hit a dropped connection. Retries hide it.
@resilient(retry=Retry(attempts=5, initial_delay=0.01, max_delay=0.05))
def fetch_price(sku: str) -> float:
    TALLY.hit("fetch_price")
    if RNG.random() < 0.33:
        raise ConnectionError("connection reset by peer")
    return 9.99 if sku else 0.0


# 2. A slow dependency (async): sometimes it hangs. Each attempt is cut at 0.1 s (really
#    cancelled), retried, and the whole call never takes more than 1 s.
@resilient(timeout=Timeout(total=1.0, attempt=0.1), retry=Retry(attempts=3, on=TimeoutError, initial_delay=0.01))
async def load_profile(user: int) -> dict[str, object]:
    TALLY.hit("load_profile")
    if RNG.random() < 0.3:
        await asyncio.sleep(3600)  # a hung socket
    return {"id": user, "name": f"user-{user}"}


# 3. A dead dependency: every call fails. The breaker opens and later calls fail fast,
#    and the fallback answers with a cached value instead of an error.
@resilient(
    breaker=CircuitBreaker(name="recommendations", failure_threshold=3, reset_timeout=30),
    fallback=Fallback(lambda _exc: ["bestsellers"]),
)
def recommendations(user: int) -> list[str]:
    TALLY.hit("recommendations")
    raise ConnectionError("recommendation service is down")


def run_sync_part() -> None:
    prices = [fetch_price("sku-1") for _ in range(20)]
    TALLY.outcome("fetch_price", f"{len(prices)}/20 succeeded")
    picks = [recommendations(1) for _ in range(10)]
    TALLY.outcome("recommendations", f"10 answers, all {picks[-1]!r}")


async def run_async_part() -> None:
    profiles = 0
    failures = 0
    for user in range(10):
        try:
            await load_profile(user)
            profiles += 1
        except DeadlineExceededError:
            failures += 1
    TALLY.outcome("load_profile", f"{profiles} loaded, {failures} timed out")


def main() -> Tally:
    """Run the tour and print what each safeguard did."""
    started = time.monotonic()
    run_sync_part()
    asyncio.run(run_async_part())
    print(f"{'function':<18} {'calls':>5}  outcome")
    for name, calls in TALLY.calls.items():
        print(f"{name:<18} {calls:>5}  {'; '.join(TALLY.outcomes.get(name, []))}")
    print(f"done in {time.monotonic() - started:.2f}s")
    return TALLY


if __name__ == "__main__":
    main()
