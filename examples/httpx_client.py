"""An httpx client that survives a flaky upstream: ``python examples/httpx_client.py``.

Starts a local `FaultyUpstream` that answers 60 % of requests with 200 and the rest
with 503 (half of them with ``Retry-After: 1``), 429 or a connection reset, then sends
the same GETs through a plain `httpx.Client` and through `resilient.httpx.client`, and
prints what each saw. Backoff sleeps are skipped (`resilient.testing.no_wait`) so the
demo finishes at once; the delays the client would have waited are reported instead.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

import httpx

import resilient.httpx
from resilient import Retry, RetryBudget, testing
from resilient.testing import Fault, FaultyUpstream

REQUESTS = 100
FAULTS = {
    Fault.ok("ok"): 0.6,
    Fault.status(503, retry_after="1"): 0.1,
    Fault.status(503): 0.1,
    Fault.status(429): 0.1,
    Fault.reset(): 0.1,
}


@dataclass
class Summary:
    """What one client saw: final outcomes, and how many requests the upstream received."""

    outcomes: collections.Counter[str] = field(default_factory=collections.Counter)
    upstream_calls: int = 0
    waits: list[float] = field(default_factory=list)

    @property
    def successes(self) -> int:
        return self.outcomes["200"]


def outcome(client: httpx.Client, url: str) -> str:
    """The status code, or the name of the error the caller got."""
    try:
        return str(client.get(url).status_code)
    except httpx.HTTPError as error:
        return type(error).__name__


def run(client: httpx.Client, requests: int, seed: int) -> Summary:
    """Send `requests` GETs through `client` to a fresh faulty upstream."""
    summary = Summary()
    with FaultyUpstream.mix(FAULTS, seed=seed) as upstream, testing.no_wait() as waits:
        for _ in range(requests):
            summary.outcomes[outcome(client, upstream.url)] += 1
        summary.upstream_calls = upstream.requests
    summary.waits = waits
    return summary


def main(requests: int = REQUESTS, seed: int = 7) -> dict[str, Summary]:
    """Run both clients against the same fault sequence and print a comparison."""
    with httpx.Client() as plain:
        naive = run(plain, requests, seed)
    # Five attempts, and a retry budget raised to 50 % for this 40 %-faulty demo upstream
    # (the default 20 % would rightly refuse to hammer a dependency this sick).
    retry = Retry(attempts=5, budget=RetryBudget(ratio=0.5))
    with resilient.httpx.client(retry=retry, breaker=False) as protected:
        safe = run(protected, requests, seed)
    for name, summary in (("plain httpx", naive), ("resilient.httpx", safe)):
        print(f"{name:16} outcomes={dict(summary.outcomes)} upstream calls={summary.upstream_calls}")
    honoured = sum(1 for wait in safe.waits if wait >= 1.0)
    print(f"resilient.httpx scheduled {len(safe.waits)} retries, {honoured} of them honouring Retry-After: 1")
    return {"plain": naive, "resilient": safe}


if __name__ == "__main__":
    main()
