"""A traffic spike at 5x the rate limit through the middleware, beside well-behaved clients.

The service limits each client to LIMIT requests a minute. Four clients send their usual,
paced traffic (well under the limit) while a fifth one bursts. Without the spike it sends
exactly LIMIT requests (all admitted); with the spike, 5 x LIMIT: it gets LIMIT admitted
and 429s with correct headers for the rest. The admitted work is the same in both runs,
so the p99 latency of the admitted requests must stay close to the no-spike run's
(measured in the same test, on a fresh middleware each; compared as a ratio): shedding
the excess must cost the admitted requests next to nothing.

Clients are told apart by ``X-Forwarded-For`` behind a trusted proxy (the test client),
the way a service behind a load balancer sees them.
"""

from __future__ import annotations

import asyncio
import functools
import json
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx
from flask import Flask
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from resilient.asgi import ResilientMiddleware
from resilient.testing import FaultyUpstream
from resilient.wsgi import ResilientWSGIMiddleware
from tests._wsgi_server import serve_wsgi

from ._measure import Figures, heap_frozen, percentile

LIMIT = 100  # per client and minute
SPIKE = 5 * LIMIT
SPIKE_CONCURRENCY = 10
STEADY_CLIENTS = 4
STEADY_REQUESTS = 40  # per steady client: well under LIMIT
STEADY_PACE = 0.01  # seconds between one steady client's requests
MAX_P99_RATIO = 4.0  # generous: the test's own clients share this process's CPU (and GIL) with the service
PROXY = "127.0.0.1"
OPTIONS: dict[str, Any] = {"rate_limit": f"{LIMIT}/minute", "trusted_proxies": [f"{PROXY}/32"]}
SPIKER = "198.51.100.66"
STEADY = [f"198.51.100.{n}" for n in range(1, STEADY_CLIENTS + 1)]
STRUCTURED_RATELIMIT = re.compile(r'"default";r=(\d+);t=(\d+)')


@dataclass
class Run:
    """What the clients of one run saw."""

    admitted_latencies: list[float] = field(default_factory=list)
    steady_statuses: list[int] = field(default_factory=list)
    spike_responses: list[httpx.Response] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, client: str, response: httpx.Response, latency: float) -> None:
        with self.lock:
            if client == SPIKER:
                self.spike_responses.append(response)
            else:
                self.steady_statuses.append(response.status_code)
            if response.status_code == 200:
                self.admitted_latencies.append(latency)


def check_rejection(response: httpx.Response) -> None:
    """A 429 as the IETF draft and the draft-06 trio describe it, with a JSON body and nothing else."""
    headers = response.headers
    assert response.status_code == 429
    assert json.loads(response.content)["error"] == "rate_limited"
    retry_after = int(headers["retry-after"])
    assert 1 <= retry_after <= 60
    assert headers["ratelimit-policy"] == f'"default";q={LIMIT};w=60'
    match = STRUCTURED_RATELIMIT.fullmatch(headers["ratelimit"])
    assert match is not None
    assert int(match[1]) == 0
    assert 0 <= int(match[2]) <= 60
    assert headers["ratelimit-limit"] == str(LIMIT)
    assert headers["ratelimit-remaining"] == "0"
    assert 0 <= int(headers["ratelimit-reset"]) <= 60


def report(figures: Figures, scenario: str, baseline: Run, spike: Run) -> tuple[float, float]:
    """Print the figures of both runs; (p99 of admitted requests without spike, with spike)."""
    p99_base = percentile(baseline.admitted_latencies, 99)
    p99_spike = percentile(spike.admitted_latencies, 99)
    figures.report(
        scenario,
        limit_per_minute=LIMIT,
        spike_requests=len(spike.spike_responses),
        spike_admitted=sum(1 for r in spike.spike_responses if r.status_code == 200),
        spike_429=sum(1 for r in spike.spike_responses if r.status_code == 429),
        admitted_without_spike=len(baseline.admitted_latencies),
        admitted_with_spike=len(spike.admitted_latencies),
        admitted_p50_ms_without_spike=percentile(baseline.admitted_latencies, 50) * 1000,
        admitted_p99_ms_without_spike=p99_base * 1000,
        admitted_p50_ms_with_spike=percentile(spike.admitted_latencies, 50) * 1000,
        admitted_p99_ms_with_spike=p99_spike * 1000,
        p99_ratio=p99_spike / p99_base,
    )
    return p99_base, p99_spike


def check_run(baseline: Run, spike: Run, p99_base: float, p99_spike: float) -> None:
    assert [r.status_code for r in baseline.spike_responses] == [200] * LIMIT
    statuses = [r.status_code for r in spike.spike_responses]
    assert len(statuses) == SPIKE
    assert statuses.count(200) == LIMIT
    assert statuses.count(429) == SPIKE - LIMIT
    for response in spike.spike_responses:
        if response.status_code == 429:
            check_rejection(response)
    assert spike.steady_statuses == [200] * STEADY_CLIENTS * STEADY_REQUESTS
    assert p99_spike <= MAX_P99_RATIO * p99_base


# ---------------------------------------------------------------------- ASGI


def asgi_app(upstream: httpx.AsyncClient) -> ResilientMiddleware:
    """A Starlette handler that calls the upstream, behind the middleware."""

    async def quote(_request: Request) -> PlainTextResponse:
        return PlainTextResponse((await upstream.get("/")).text)

    return ResilientMiddleware(Starlette(routes=[Route("/quote", quote)]), **OPTIONS)


async def asgi_run(upstream: httpx.AsyncClient, *, bursting: int) -> Run:
    """Steady clients and one sending `bursting` requests at once, against a fresh middleware; what they saw."""
    run = Run()
    transport = httpx.ASGITransport(app=asgi_app(upstream), client=(PROXY, 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://service") as http:

        async def send(client: str) -> None:
            started = time.perf_counter()
            response = await http.get("/quote", headers={"X-Forwarded-For": client})
            run.record(client, response, time.perf_counter() - started)

        async def steady(client: str) -> None:
            for _ in range(STEADY_REQUESTS):
                await send(client)
                await asyncio.sleep(STEADY_PACE)  # pacing a well-behaved client, not synchronising

        async def spiking() -> None:
            gate = asyncio.Semaphore(SPIKE_CONCURRENCY)

            async def one() -> None:
                async with gate:
                    await send(SPIKER)

            await asyncio.gather(*(one() for _ in range(bursting)))

        work = [*(steady(client) for client in STEADY), spiking()]
        await asyncio.wait_for(asyncio.gather(*work), timeout=60)
    return run


async def test_spike_through_asgi_middleware(figures: Figures) -> None:
    """ASGI: the spiking client gets exactly its limit and 429s; admitted p99 stays within 4x of no spike."""
    async with FaultyUpstream(max_lifetime=60.0) as server, httpx.AsyncClient(base_url=server.url) as upstream:
        with heap_frozen():  # a full collection of the session's heap would land on one run only
            baseline = await asgi_run(upstream, bursting=LIMIT)
            spike = await asgi_run(upstream, bursting=SPIKE)
    p99_base, p99_spike = report(figures, "spike_asgi", baseline, spike)
    check_run(baseline, spike, p99_base, p99_spike)


# ---------------------------------------------------------------------- WSGI, real threaded server


def flask_app(upstream: httpx.Client) -> Flask:
    """A Flask handler that calls the upstream, behind the middleware."""
    app = Flask(__name__)

    @app.get("/quote")
    def quote() -> str:
        return upstream.get("/").text

    app.wsgi_app = ResilientWSGIMiddleware(app.wsgi_app, **OPTIONS)  # type: ignore[method-assign]
    return app


def wsgi_run(upstream: httpx.Client, *, bursting: int) -> Run:
    """Steady clients and one sending `bursting` requests at once, against a fresh server; what they saw."""
    run = Run()
    with serve_wsgi(flask_app(upstream)) as url, httpx.Client(base_url=url, timeout=30) as http:

        def send(client: str) -> None:
            started = time.perf_counter()
            response = http.get("/quote", headers={"X-Forwarded-For": client})
            run.record(client, response, time.perf_counter() - started)

        def steady(client: str) -> None:
            for _ in range(STEADY_REQUESTS):
                send(client)
                time.sleep(STEADY_PACE)  # pacing a well-behaved client, not synchronising

        jobs: list[Callable[[], None]] = [functools.partial(steady, client) for client in STEADY]
        jobs += [functools.partial(send, SPIKER)] * bursting
        with ThreadPoolExecutor(STEADY_CLIENTS + SPIKE_CONCURRENCY) as pool:
            for future in [pool.submit(job) for job in jobs]:
                future.result(timeout=60)
    return run


def test_spike_through_wsgi_middleware(figures: Figures) -> None:
    """WSGI (real threaded server): the spiking client gets exactly its limit and 429s; admitted p99 within 4x."""
    with (
        FaultyUpstream(max_lifetime=60.0) as server,
        httpx.Client(base_url=server.url) as upstream,
        heap_frozen(),  # a full collection of the session's heap would land on one run only
    ):
        baseline = wsgi_run(upstream, bursting=LIMIT)
        spike = wsgi_run(upstream, bursting=SPIKE)
    p99_base, p99_spike = report(figures, "spike_wsgi_threaded_server", baseline, spike)
    check_run(baseline, spike, p99_base, p99_spike)
