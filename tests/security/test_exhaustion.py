"""A client opening many slow requests is bounded by the in-flight limit; the excess gets 503 at once.

Slow requests hold their slots (a handler waiting on a dependency, or an upload trickling
in). Every request beyond the limit must be answered 503 with ``Retry-After`` while the
admitted ones are still held: that is what "quickly" means here, whatever the machine's
speed. When the slow ones finish, every slot is free again.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from resilient.asgi import ResilientMiddleware
from resilient.wsgi import ResilientWSGIMiddleware
from tests._wsgi_server import serve_wsgi

LIMIT = 10
CLIENTS = 50
WAIT = 10.0  # seconds any step may take before the test fails: a bound, not a pace


def check_shed(response: httpx.Response) -> None:
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert json.loads(response.content)["error"] == "overloaded"


@pytest.mark.parametrize("slowness", ["slow-handler", "slow-upload"])
async def test_asgi_in_flight_limit_sheds_the_excess(slowness: str) -> None:
    """ASGI: 50 slow requests, limit 10: 40 get 503 while the 10 are held, then all 10 complete."""
    release = asyncio.Event()
    entered = 0

    async def slow(request: Request) -> PlainTextResponse:
        nonlocal entered
        entered += 1
        if slowness == "slow-handler":
            await release.wait()
            return PlainTextResponse("done")
        return PlainTextResponse(f"read {len(await request.body())}")

    async def trickle() -> AsyncIterator[bytes]:
        yield b"x" * 10
        await release.wait()  # the rest of the upload arrives only when the test says so
        yield b"y" * 10

    app = ResilientMiddleware(Starlette(routes=[Route("/slow", slow, methods=["POST"])]), max_in_flight=LIMIT)
    responses: list[httpx.Response] = []
    all_shed = asyncio.Event()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://service") as http:

        async def one() -> None:
            content = trickle() if slowness == "slow-upload" else b"x"
            response = await http.post("/slow", content=content)
            responses.append(response)
            if sum(r.status_code == 503 for r in responses) == CLIENTS - LIMIT:
                all_shed.set()

        tasks = [asyncio.create_task(one()) for _ in range(CLIENTS)]
        try:
            await asyncio.wait_for(all_shed.wait(), WAIT)
            held = [r for r in responses if r.status_code != 503]
            assert held == []  # every 503 came back while all admitted requests were still held
        finally:
            release.set()
            await asyncio.wait_for(asyncio.gather(*tasks), WAIT)
        after = await http.post("/slow", content=b"z")
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] * LIMIT + [503] * (CLIENTS - LIMIT)
    for response in responses:
        if response.status_code == 503:
            check_shed(response)
    assert entered == LIMIT + 1  # only admitted requests ever reached the handler
    assert after.status_code == 200  # every slot was given back


def test_wsgi_in_flight_limit_sheds_the_excess_on_a_real_server() -> None:
    """WSGI (threaded server): 50 requests to a slow handler, limit 10: 40 get 503 while 10 are held."""
    release = threading.Event()
    entered = threading.Semaphore(0)
    shed = threading.Semaphore(0)

    def slow(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        entered.release()
        release.wait(WAIT)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"done"]

    app = ResilientWSGIMiddleware(slow, max_in_flight=LIMIT)
    with serve_wsgi(app) as url, httpx.Client(base_url=url, timeout=WAIT * 2) as http:

        def one() -> httpx.Response:
            response = http.get("/slow")
            if response.status_code == 503:
                shed.release()
            return response

        with ThreadPoolExecutor(CLIENTS) as pool:
            futures = [pool.submit(one) for _ in range(CLIENTS)]
            try:
                assert all(shed.acquire(timeout=WAIT) for _ in range(CLIENTS - LIMIT))
                assert all(entered.acquire(timeout=WAIT) for _ in range(LIMIT))
                assert not any(future.done() and future.result().status_code == 200 for future in futures)
            finally:
                release.set()
            responses = [future.result(timeout=WAIT) for future in futures]
        after = http.get("/slow")
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] * LIMIT + [503] * (CLIENTS - LIMIT)
    for response in responses:
        if response.status_code == 503:
            check_shed(response)
    assert after.status_code == 200
