"""A protected call on the happy path is freed when it ends: nothing is left to the cycle collector.

Objects caught in a reference cycle wait for the garbage collector, whose passes grow with
what they find: per-request cycles turn a cheap happy path into periodic pauses. The WSGI
middleware had one (its size-limited body stream pointed back at the request); these
tests keep every integration free of them, with tracing off and on.
"""

from __future__ import annotations

import asyncio
import gc
import io
from collections.abc import Callable, Iterable, Iterator, MutableMapping
from typing import Any

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from resilient import resilient
from resilient.asgi import ResilientMiddleware
from resilient.wsgi import ResilientWSGIMiddleware

from .test_wsgi import discarding_start_response

EVERY_EDGE_FEATURE: dict[str, Any] = {
    "rate_limit": "1000000/second",
    "max_in_flight": 100,
    "timeout": 30.0,
    "max_body_size": 1_000_000,
}


@pytest.fixture(params=["no SDK", "SDK tracer"])
def tracing(request: pytest.FixtureRequest) -> Iterator[None]:
    """Each test runs without a tracer provider, then with the SDK's (in-memory exporter)."""
    if request.param == "no SDK":
        yield
        return
    exporter: InMemorySpanExporter = request.getfixturevalue("spans")
    yield
    assert exporter.get_finished_spans()  # the calls were traced


def cyclic_garbage(call: Callable[[], object], calls: int = 20) -> list[str]:
    """The types of the objects that `calls` calls left in reference cycles."""
    call()  # first use fills caches (loggers, compiled plans): not per-call garbage
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        for _ in range(calls):
            call()
        gc.collect()
        return sorted({type(each).__name__ for each in gc.garbage})
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """One event loop for every call: a loop of its own per call would be garbage itself."""
    event_loop = asyncio.new_event_loop()
    yield event_loop
    event_loop.close()


@pytest.mark.usefixtures("tracing")
def test_decorated_calls(loop: asyncio.AbstractEventLoop) -> None:
    options: dict[str, Any] = {
        "timeout": 5.0,
        "retry": 3,
        "rate_limit": "1000000/second",
        "bulkhead": 10,
    }

    @resilient(**options, breaker="cycles-sync")
    def work(value: int) -> int:
        return value

    @resilient(**options, breaker="cycles-async")
    async def awork(value: int) -> int:
        return value

    assert cyclic_garbage(lambda: work(1)) == []
    assert cyclic_garbage(lambda: loop.run_until_complete(awork(1))) == []


@pytest.mark.usefixtures("tracing")
def test_asgi_requests(loop: asyncio.AbstractEventLoop) -> None:
    async def home(_request: Any) -> PlainTextResponse:
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route("/", home)], middleware=[Middleware(ResilientMiddleware, **EVERY_EDGE_FEATURE)])
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    async def request() -> None:
        sent.clear()
        scope = {
            "type": "http",
            "method": "GET",
            "path": "/",
            "raw_path": b"/",
            "root_path": "",
            "scheme": "http",
            "query_string": b"",
            "http_version": "1.1",
            "headers": [(b"host", b"test"), (b"user-agent", b"tests")],
            "client": ("127.0.0.1", 5000),
            "server": ("127.0.0.1", 8000),
        }
        await app(scope, receive, send)
        assert sent[0]["status"] == 200

    assert cyclic_garbage(lambda: loop.run_until_complete(request())) == []


@pytest.mark.usefixtures("tracing")
def test_wsgi_requests() -> None:
    def app(_environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    middleware = ResilientWSGIMiddleware(app, **EVERY_EDGE_FEATURE)

    def request() -> None:
        environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "REMOTE_ADDR": "127.0.0.1", "wsgi.input": io.BytesIO()}
        response = middleware(environ, discarding_start_response)
        assert b"".join(response) == b"ok"
        response.close()  # type: ignore[attr-defined]

    assert cyclic_garbage(request) == []
