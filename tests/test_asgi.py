"""ResilientMiddleware on FastAPI and Starlette apps: through httpx.ASGITransport and a real uvicorn."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest
import structlog
import uvicorn
from fastapi import BackgroundTasks, FastAPI, HTTPException
from fastapi.responses import JSONResponse, StreamingResponse
from opentelemetry import propagate
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import Getter, Setter, TextMapPropagator, default_getter, default_setter
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, StatusCode, TraceFlags, set_span_in_context
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.websockets import WebSocket
from websockets.sync.client import connect

from resilient import deadline, instrumentation
from resilient._edge.asgi_limits import AsyncGate
from resilient._kernel.context import current_request_id
from resilient.asgi import ResilientMiddleware, RouteOptions

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


class TeapotError(Exception):
    """An error the app handles itself."""


def fastapi_app(**options: Any) -> FastAPI:
    """A FastAPI app with the middleware mounted in one line, and routes for each behaviour."""
    app = FastAPI()
    app.add_middleware(ResilientMiddleware, **options)

    @app.exception_handler(TeapotError)
    async def teapot(_request: Request, _exc: TeapotError) -> JSONResponse:
        return JSONResponse({"handled": True}, status_code=418)

    @app.get("/items/{item_id}")
    async def item(item_id: int) -> dict[str, Any]:
        structlog.get_logger("app").info("looking up", item_id=item_id)
        return {"id": item_id, "request_id": current_request_id(), "remaining": deadline.remaining()}

    @app.get("/missing")
    async def missing() -> None:
        raise HTTPException(status_code=404, detail="no such thing")

    @app.get("/teapot")
    async def handled() -> None:
        raise TeapotError

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("upstream said token=sk_live_abcdefghijklmnopqrstuvwx")

    @app.get("/hang")
    async def hang() -> None:
        await asyncio.Event().wait()

    @app.post("/upload")
    async def upload(request: Request) -> dict[str, int]:
        return {"read": len(await request.body())}

    return app


def client_for(app: Any, peer: str = "127.0.0.1", *, raise_app_exceptions: bool = True) -> httpx.AsyncClient:
    """A client calling `app` in process; like a server, it sees the response and not the error when told."""
    transport = httpx.ASGITransport(app=app, client=(peer, 5000), raise_app_exceptions=raise_app_exceptions)
    return httpx.AsyncClient(transport=transport, base_url="http://testserver")


def our_server_span(spans: InMemorySpanExporter) -> ReadableSpan:
    """The middleware's SERVER span (FastAPI may add its own, under its own scope)."""
    [span] = [
        span
        for span in spans.get_finished_spans()
        if span.kind is SpanKind.SERVER
        and span.instrumentation_scope is not None
        and span.instrumentation_scope.name == "resilient"
    ]
    return span


# --- request id, logs, access log ------------------------------------------------------------


async def test_request_id_is_echoed_and_visible_to_the_handler() -> None:
    """A well-formed X-Request-ID comes back and is the current request id inside the handler."""
    async with client_for(fastapi_app()) as client:
        response = await client.get("/items/1", headers={"X-Request-ID": "abc-123"})
    assert response.headers["x-request-id"] == "abc-123"
    assert response.json()["request_id"] == "abc-123"
    assert current_request_id() is None


async def test_custom_request_id_header_and_switching_it_off() -> None:
    """The header name is configurable, and request_id=False adds none."""
    async with client_for(fastapi_app(request_id_header="X-Correlation-ID")) as client:
        response = await client.get("/items/1", headers={"X-Correlation-ID": "corr-1"})
    assert response.headers["x-correlation-id"] == "corr-1"
    async with client_for(fastapi_app(request_id=False)) as client:
        response = await client.get("/items/1")
    assert "x-request-id" not in response.headers
    assert response.json()["request_id"] is None


async def test_app_log_lines_carry_the_request_id() -> None:
    """The app's own structlog lines inside the handler get request_id through contextvars."""
    capture = structlog.testing.LogCapture()
    structlog.configure(processors=[structlog.contextvars.merge_contextvars, capture])
    async with client_for(fastapi_app()) as client:
        await client.get("/items/7", headers={"X-Request-ID": "log-me"})
    [line] = [entry for entry in capture.entries if entry["event"] == "looking up"]
    assert line["request_id"] == "log-me"
    assert structlog.contextvars.get_contextvars() == {}


async def test_one_access_line_with_every_field(access: list[instrumentation.Event]) -> None:
    """Each request yields one http.access event with method, route, status, timing, size, client."""
    async with client_for(fastapi_app(), peer="192.0.2.10") as client:
        response = await client.get(
            "/items/3?token=s3cr3t&page=2", headers={"X-Request-ID": "r-1", "User-Agent": "probe/1"}
        )
    [event] = access
    fields = dict(event.fields)
    assert fields.pop("duration_ms") >= 0
    assert fields == {
        "method": "GET",
        "path": "/items/3?token=***&page=2",
        "route": "/items/{item_id}",
        "status": 200,
        "bytes": len(response.content),
        "client": "192.0.2.10",
        "request_id": "r-1",
        "user_agent": "probe/1",
    }
    assert event.level == 20


async def test_a_secret_in_the_user_agent_is_masked_on_the_line_the_span_and_for_listeners(
    spans: InMemorySpanExporter,
) -> None:
    """The user agent is the one field a client writes freely: it is redacted on the log line,
    whether the line goes through the hub (a listener is registered) or straight to the
    logger (none is), in the event the listener receives, and on the SERVER span."""
    capture = structlog.testing.LogCapture()
    structlog.configure(processors=[capture])
    heard: list[instrumentation.Event] = []
    headers = {"User-Agent": "probe/1 token=s3cr3t"}
    async with client_for(fastapi_app()) as client:
        instrumentation.add_listener(heard.append)
        try:
            await client.get("/items/1", headers=headers)
        finally:
            instrumentation.remove_listener(heard.append)
        await client.get("/items/2", headers=headers)
    [event] = [event for event in heard if event.name == "http.access"]
    assert event.fields["user_agent"] == "probe/1 token=***"
    lines = [entry for entry in capture.entries if entry["event"] == "http.access"]
    assert [line["user_agent"] for line in lines] == ["probe/1 token=***", "probe/1 token=***"]
    ours = [
        span
        for span in spans.get_finished_spans()
        if span.instrumentation_scope is not None and span.instrumentation_scope.name == "resilient"
    ]
    assert [(span.attributes or {}).get("user_agent.original") for span in ours] == ["probe/1 token=***"] * 2


# --- tracing ---------------------------------------------------------------------------------


async def test_server_span_continues_the_trace_with_semconv_attributes(spans: InMemorySpanExporter) -> None:
    """The SERVER span joins the caller's trace, is named after the route, and has HTTP attributes."""
    async with client_for(fastapi_app()) as client:
        await client.get("/items/5", headers={"traceparent": TRACEPARENT, "User-Agent": "probe/1"})
    span = our_server_span(spans)
    assert span.name == "GET /items/{item_id}"
    assert format(span.context.trace_id, "032x") == TRACE_ID
    assert span.attributes is not None
    assert {key: span.attributes[key] for key in span.attributes if key != "resilient.request_id"} == {
        "http.request.method": "GET",
        "url.path": "/items/5",
        "url.scheme": "http",
        "client.address": "127.0.0.1",
        "network.protocol.version": "1.1",
        "user_agent.original": "probe/1",
        "server.address": "testserver",
        "http.route": "/items/{item_id}",
        "http.response.status_code": 200,
    }


async def test_access_line_joins_the_server_span(spans: InMemorySpanExporter) -> None:
    """Written straight to the app's structlog (no listeners), the line carries the span's ids."""
    capture = structlog.testing.LogCapture()
    structlog.configure(processors=[capture])
    async with client_for(fastapi_app()) as client:
        await client.get("/items/5", headers={"traceparent": TRACEPARENT, "X-Request-ID": "r-9"})
    [line] = [entry for entry in capture.entries if entry["event"] == "http.access"]
    span = our_server_span(spans)
    assert (line["trace_id"], line["span_id"]) == (TRACE_ID, format(span.context.span_id, "016x"))
    assert (line["request_id"], line["route"], line["status"]) == ("r-9", "/items/{item_id}", 200)


async def test_invalid_traceparent_starts_a_new_trace(spans: InMemorySpanExporter) -> None:
    """A malformed traceparent never fails the request: the span starts a fresh trace."""
    async with client_for(fastapi_app()) as client:
        response = await client.get("/items/5", headers={"traceparent": "00-zz-not-valid-01"})
    assert response.status_code == 200
    span = our_server_span(spans)
    assert span.parent is None


class _HeaderTracePropagator(TextMapPropagator):
    """A propagator reading the caller's trace id from ``x-trace`` (none of the default headers)."""

    def extract(self, carrier: Any, context: Context | None = None, getter: Getter[Any] = default_getter) -> Context:
        values = getter.get(carrier, "x-trace")
        if not values:
            return Context() if context is None else context
        parent = SpanContext(int(values[0], 16), 0x00F067AA0BA902B7, is_remote=True, trace_flags=TraceFlags(1))
        return set_span_in_context(NonRecordingSpan(parent), context)

    def inject(self, carrier: Any, context: Context | None = None, setter: Setter[Any] = default_setter) -> None:
        raise NotImplementedError

    @property
    def fields(self) -> set[str]:
        return {"x-trace"}


async def test_the_apps_own_propagator_is_asked_even_without_default_headers(spans: InMemorySpanExporter) -> None:
    """The shortcut for requests without trace headers applies to the default propagators only."""
    default = propagate.get_global_textmap()
    propagate.set_global_textmap(_HeaderTracePropagator())
    try:
        async with client_for(fastapi_app()) as client:
            await client.get("/items/5", headers={"x-trace": TRACE_ID})
    finally:
        propagate.set_global_textmap(default)
    assert format(our_server_span(spans).context.trace_id, "032x") == TRACE_ID


async def test_a_request_without_trace_headers_starts_a_trace(spans: InMemorySpanExporter) -> None:
    """No traceparent: a root span (the default propagators' answer, without asking them)."""
    async with client_for(fastapi_app()) as client:
        await client.get("/items/5")
    assert our_server_span(spans).parent is None


async def test_unhandled_error_is_recorded_on_the_span_redacted(spans: InMemorySpanExporter) -> None:
    """The span gets the exception with its secret masked, and an error status."""
    async with client_for(fastapi_app(), raise_app_exceptions=False) as client:
        await client.get("/boom")
    span = our_server_span(spans)
    assert span.status.status_code is StatusCode.ERROR
    [exception] = [event for event in span.events if event.name == "exception"]
    assert exception.attributes is not None
    assert "sk_live_abcdefghij" not in str(exception.attributes["exception.message"])
    assert "sk_live_abcdefghij" not in str(exception.attributes["exception.stacktrace"])


async def test_mounted_routes_report_the_full_template(spans: InMemorySpanExporter) -> None:
    """A route under a Starlette Mount is named with the mount prefix."""

    async def show(request: Request) -> PlainTextResponse:
        return PlainTextResponse(request.path_params["name"])

    app = Starlette(
        routes=[Mount("/v1", routes=[Route("/users/{name}", show)])],
        middleware=[Middleware(ResilientMiddleware)],
    )
    async with client_for(app) as client:
        assert (await client.get("/v1/users/ada")).text == "ada"
    span = our_server_span(spans)
    assert span.name == "GET /v1/users/{name}"


# --- error shield ----------------------------------------------------------------------------


async def test_unhandled_error_becomes_a_bare_500(
    access: list[instrumentation.Event], caplog: pytest.LogCaptureFixture
) -> None:
    """The client gets a JSON 500 with the request id only; the log has the redacted error."""
    events: list[instrumentation.Event] = []
    instrumentation.add_listener(events.append)
    try:
        async with client_for(fastapi_app(), raise_app_exceptions=False) as client:
            response = await client.get("/boom", headers={"X-Request-ID": "boom-1"})
    finally:
        instrumentation.remove_listener(events.append)
    assert response.status_code == 500
    assert response.json() == {"error": "internal_error", "request_id": "boom-1"}
    assert "sk_live" not in response.text
    [unhandled] = [event for event in events if event.name == "http.unhandled_error"]
    assert isinstance(unhandled.error, RuntimeError)
    assert access[0].fields["status"] == 500
    assert access[0].level == 40
    assert "sk_live_abcdefghij" not in caplog.text


async def test_unhandled_error_is_answered_then_reraised_once_recorded() -> None:
    """After the bare 500 the app's own exception goes on to the server, recorded by us exactly once."""
    events: list[instrumentation.Event] = []
    instrumentation.add_listener(events.append)
    try:
        async with client_for(fastapi_app()) as client:
            with pytest.raises(RuntimeError, match="upstream said") as raised:
                await client.get("/boom")
    finally:
        instrumentation.remove_listener(events.append)
    [unhandled] = [event for event in events if event.name == "http.unhandled_error"]
    assert unhandled.error is raised.value
    [access] = [event for event in events if event.name == "http.access"]
    assert access.fields["status"] == 500


async def test_a_failing_background_task_reaches_the_server() -> None:
    """An exception after the response completed is re-raised too, as it would be without the middleware."""

    async def later() -> None:
        raise RuntimeError("background")

    async def handler(_request: Request) -> PlainTextResponse:
        return PlainTextResponse("done", background=BackgroundTask(later))

    app = Starlette(routes=[Route("/", handler)], middleware=[Middleware(ResilientMiddleware)])
    async with client_for(app) as client:
        with pytest.raises(RuntimeError, match="background"):
            await client.get("/")
    async with client_for(app, raise_app_exceptions=False) as client:
        response = await client.get("/")
    assert (response.status_code, response.text) == (200, "done")


async def test_handled_errors_keep_the_apps_own_answer() -> None:
    """FastAPI's HTTPException and custom exception handlers are not overridden."""
    async with client_for(fastapi_app()) as client:
        missing = await client.get("/missing")
        teapot = await client.get("/teapot")
    assert (missing.status_code, missing.json()) == (404, {"detail": "no such thing"})
    assert (teapot.status_code, teapot.json()) == (418, {"handled": True})
    assert "x-request-id" in teapot.headers


async def test_error_shield_off_lets_the_exception_through() -> None:
    """With error_shield=False the exception reaches the server untouched."""
    app = Starlette(routes=[Route("/", _raise)])
    async with client_for(ResilientMiddleware(app.router, error_shield=False)) as client:
        with pytest.raises(RuntimeError, match="raw"):
            await client.get("/")


async def _raise(_request: Request) -> PlainTextResponse:
    raise RuntimeError("raw")


async def test_error_after_the_response_started_is_reraised() -> None:
    """A failure mid-stream cannot become a 500: it is re-raised so the server drops the connection."""

    async def broken() -> AsyncIterator[bytes]:
        yield b"partial"
        raise RuntimeError("mid-stream")

    async def stream(_request: Request) -> StreamingResponse:
        return StreamingResponse(broken())

    app = Starlette(routes=[Route("/", stream)])
    async with client_for(ResilientMiddleware(app.router)) as client:
        with pytest.raises(RuntimeError, match="mid-stream"):
            await client.get("/")


# --- rate limit ------------------------------------------------------------------------------


async def test_rate_limit_rejects_with_429_and_headers() -> None:
    """Past the limit the client gets 429, Retry-After and both generations of RateLimit headers."""
    async with client_for(fastapi_app(rate_limit="2/minute", rate_limit_algorithm="fixed-window")) as client:
        statuses = [(await client.get("/items/1")).status_code for _ in range(2)]
        rejected = await client.get("/items/1")
    assert statuses == [200, 200]
    assert rejected.status_code == 429
    assert rejected.json()["error"] == "rate_limited"
    assert 1 <= int(rejected.headers["retry-after"]) <= 60
    assert rejected.headers["ratelimit-policy"] == '"default";q=2;w=60'
    assert rejected.headers["ratelimit"].startswith('"default";r=0;t=')
    assert rejected.headers["ratelimit-limit"] == "2"
    assert rejected.headers["ratelimit-remaining"] == "0"


async def test_rate_limit_headers_on_success_when_asked() -> None:
    """ratelimit_headers_on_success adds the state to admitted responses, without Retry-After."""
    app = fastapi_app(rate_limit="5/minute", ratelimit_headers_on_success=True, legacy_ratelimit_headers=False)
    async with client_for(app) as client:
        response = await client.get("/items/1")
    assert response.headers["ratelimit"].startswith('"default";r=4;')
    assert "retry-after" not in response.headers
    assert "ratelimit-limit" not in response.headers


async def test_rate_limit_key_function_and_route_exemption() -> None:
    """A custom key limits per API key, and a route with rate_limit=None is never limited."""
    app = fastapi_app(
        rate_limit="1/minute",
        rate_limit_key=lambda request: request.headers.get("x-api-key"),
        routes={"/missing": RouteOptions(rate_limit=None)},
    )
    async with client_for(app) as client:
        first = await client.get("/items/1", headers={"X-API-Key": "alice"})
        second = await client.get("/items/1", headers={"X-API-Key": "bob"})
        again = await client.get("/items/1", headers={"X-API-Key": "alice"})
        exempt = [(await client.get("/missing")).status_code for _ in range(3)]
    assert [first.status_code, second.status_code, again.status_code] == [200, 200, 429]
    assert exempt == [404, 404, 404]


async def test_rate_limiter_admits_no_more_than_its_limit_under_200_concurrent_requests() -> None:
    """200 requests at once against a limit of 50: exactly 50 admitted, 150 rejected."""
    async with client_for(fastapi_app(rate_limit="50/minute", rate_limit_algorithm="moving-window")) as client:
        responses = await asyncio.gather(*(client.get("/items/1") for _ in range(200)))
    statuses = [response.status_code for response in responses]
    assert statuses.count(200) == 50
    assert statuses.count(429) == 150


# --- load shedding ---------------------------------------------------------------------------


async def test_in_flight_limit_sheds_exactly_the_excess() -> None:
    """With 3 slots held, 5 more requests all get 503 + Retry-After; the 3 then complete."""
    entered = asyncio.Semaphore(0)
    release = asyncio.Event()

    async def held(_request: Request) -> PlainTextResponse:
        entered.release()
        await release.wait()
        return PlainTextResponse("done")

    app = Starlette(routes=[Route("/", held)], middleware=[Middleware(ResilientMiddleware, max_in_flight=3)])
    async with client_for(app) as client:
        holders = [asyncio.create_task(client.get("/")) for _ in range(3)]
        for _ in range(3):
            await entered.acquire()
        shed = await asyncio.gather(*(client.get("/") for _ in range(5)))
        release.set()
        done = await asyncio.gather(*holders)
    assert [response.status_code for response in shed] == [503] * 5
    assert {response.headers["retry-after"] for response in shed} == {"1"}
    assert [response.status_code for response in done] == [200] * 3


async def test_in_flight_wait_admits_when_a_slot_frees() -> None:
    """A request that waits (max_in_flight_wait) gets the slot the previous request gives back."""
    entered = asyncio.Event()
    release = asyncio.Event()

    async def held(_request: Request) -> PlainTextResponse:
        if not entered.is_set():
            entered.set()
            await release.wait()
        return PlainTextResponse("done")

    app = Starlette(
        routes=[Route("/", held)],
        middleware=[Middleware(ResilientMiddleware, max_in_flight=1, max_in_flight_wait=30.0)],
    )
    async with client_for(app) as client:
        first = asyncio.create_task(client.get("/"))
        await entered.wait()
        waiting = asyncio.create_task(client.get("/"))
        release.set()
        assert [(await first).status_code, (await waiting).status_code] == [200, 200]


async def test_in_flight_gate_hands_slots_over_in_order_and_never_loses_one() -> None:
    """Waiters get freed slots first come, first served; one that gives up or is cancelled
    leaves the count exact (a slot handed to a cancelled waiter passes on)."""
    gate = AsyncGate(1, 30.0)
    assert gate.try_acquire()
    first = asyncio.create_task(gate.acquire_waiting())
    second = asyncio.create_task(gate.acquire_waiting())
    third = asyncio.create_task(gate.acquire_waiting())
    await asyncio.sleep(0)  # all three queue
    assert not gate.try_acquire()  # no barging past the queue
    gate.release()  # handed to `first`...
    first.cancel()  # ...which is cancelled before it runs: the slot goes on to `second`
    with pytest.raises(asyncio.CancelledError):
        await first
    assert await second
    gate.release()
    assert await third
    gate.release()
    assert gate.try_acquire()  # exactly one slot, free again
    assert not gate.try_acquire()


async def test_in_flight_gate_waiter_gives_up_after_its_wait() -> None:
    """A waiter whose wait runs out is refused and leaves no trace in the queue."""
    gate = AsyncGate(1, 0.01)
    assert gate.try_acquire()
    assert not await gate.acquire_waiting()
    gate.release()
    assert gate.try_acquire()
    assert not await AsyncGate(1, 0.0).acquire_waiting()  # no wait allowed: refused at once


# --- deadline --------------------------------------------------------------------------------


async def test_timeout_answers_504_and_is_visible_inside(access: list[instrumentation.Event]) -> None:
    """A handler past the timeout is cancelled and the client gets 504; remaining() is set inside."""
    async with client_for(fastapi_app(timeout=5.0, routes={"/hang": RouteOptions(timeout=0.05)})) as client:
        fast = await client.get("/items/1")
        slow = await client.get("/hang")
    assert 0 < fast.json()["remaining"] <= 5.0
    assert slow.status_code == 504
    assert slow.json()["error"] == "deadline_exceeded"
    assert access[-1].fields["rejection"] == "deadline_exceeded"
    assert access[-1].level == 30


class _OffsetClockLoop(asyncio.SelectorEventLoop):
    """A loop whose clock is not `time.monotonic` (as uvloop's is not)."""

    def time(self) -> float:
        return super().time() + 1000.0


def test_deadlines_follow_a_loop_clock_of_its_own() -> None:
    """The deadline is armed on the loop's own clock: a fast request is not cut, a slow one is."""

    async def one_turn(_request: Request) -> PlainTextResponse:
        turned = asyncio.Event()
        asyncio.get_running_loop().call_soon(turned.set)
        await turned.wait()  # the loop runs once: a deadline armed in the past would fire here
        return PlainTextResponse("done")

    async def hang(_request: Request) -> PlainTextResponse:
        await asyncio.Event().wait()
        return PlainTextResponse("never")

    app = Starlette(
        routes=[Route("/", one_turn), Route("/hang", hang)],
        middleware=[Middleware(ResilientMiddleware, timeout=5.0, routes={"/hang": RouteOptions(timeout=0.05)})],
    )

    async def requests() -> tuple[int, int]:
        async with client_for(app) as client:
            return (await client.get("/")).status_code, (await client.get("/hang")).status_code

    with asyncio.Runner(loop_factory=_OffsetClockLoop) as runner:
        assert runner.run(requests()) == (200, 504)


async def test_caller_deadline_header_shortens_but_never_extends() -> None:
    """x-resilient-deadline-ms lowers the local timeout and is capped by it."""
    async with client_for(fastapi_app(timeout=5.0)) as client:
        shorter = await client.get("/items/1", headers={deadline.HEADER: "1500"})
        longer = await client.get("/items/1", headers={deadline.HEADER: "60000"})
        ignored = await client.get("/items/1", headers={deadline.HEADER: "soon"})
    assert shorter.json()["remaining"] <= 1.5
    assert 1.5 < longer.json()["remaining"] <= 5.0
    assert 1.5 < ignored.json()["remaining"] <= 5.0


async def test_spent_caller_budget_is_answered_504_without_calling_the_app() -> None:
    """A caller whose budget is already zero gets 504 and the handler never runs."""
    calls: list[str] = []

    async def handler(_request: Request) -> PlainTextResponse:
        calls.append("ran")
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route("/", handler)], middleware=[Middleware(ResilientMiddleware)])
    async with client_for(app) as client:
        response = await client.get("/", headers={deadline.HEADER: "0"})
    assert response.status_code == 504
    assert calls == []


async def test_background_tasks_outlive_the_deadline() -> None:
    """Background tasks run after the response, free of the request's deadline."""
    finished = asyncio.Event()
    seen: list[float | None] = []

    async def later() -> None:
        await asyncio.sleep(0.1)  # past the 0.05 s deadline: the point of the test
        seen.append(deadline.remaining())
        finished.set()

    app = FastAPI()
    app.add_middleware(ResilientMiddleware, timeout=0.05)

    @app.get("/")
    async def index(tasks: BackgroundTasks) -> str:
        tasks.add_task(later)
        return "queued"

    async with client_for(app) as client:
        response = await client.get("/")
    await asyncio.wait_for(finished.wait(), timeout=5)
    assert response.status_code == 200
    assert seen == [None]


# --- body size -------------------------------------------------------------------------------


async def test_declared_body_over_the_limit_is_413_before_reading() -> None:
    """A Content-Length over max_body_size is refused at once."""
    async with client_for(fastapi_app(max_body_size=10)) as client:
        response = await client.post("/upload", content=b"x" * 11)
        small = await client.post("/upload", content=b"x" * 10)
    assert response.status_code == 413
    assert response.json()["error"] == "payload_too_large"
    assert small.json() == {"read": 10}


async def test_chunked_body_over_the_limit_is_413_while_reading() -> None:
    """A body without Content-Length is counted as it is read and cut off with 413."""

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b"x" * 10

    async with client_for(fastapi_app(max_body_size=50)) as client:
        response = await client.post("/upload", content=chunks())
    assert response.status_code == 413


# --- pass-through ----------------------------------------------------------------------------


async def test_lifespan_scope_passes_through_untouched() -> None:
    """The lifespan protocol reaches the app unchanged."""
    seen: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["type"])
        message = await receive()
        await send({"type": f"{message['type']}.complete"})

    sent: list[Any] = []

    async def receive() -> dict[str, str]:
        return {"type": "lifespan.startup"}

    async def send(message: Any) -> None:
        sent.append(message)

    await ResilientMiddleware(app, rate_limit="1/minute")({"type": "lifespan"}, receive, send)
    assert seen == ["lifespan"]
    assert sent == [{"type": "lifespan.startup.complete"}]


# --- a real uvicorn server -------------------------------------------------------------------


class Served:
    """A uvicorn server in a thread on 127.0.0.1 and a free port."""

    def __init__(self, app: Any) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()  # connections queue from now on: no polling for readiness
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        config = uvicorn.Config(app, lifespan="on", log_level="warning", ws="websockets-sansio")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        """Ask the server to exit and wait for its thread (idempotent)."""
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()


@pytest.fixture
def serve() -> Iterator[Callable[[Any], Served]]:
    """Start apps under uvicorn; every server is stopped at the end, whatever happens."""
    started: list[Served] = []

    def start(app: Any) -> Served:
        served = Served(app)
        started.append(served)
        return served

    yield start
    for served in started:
        served.stop()


def uvicorn_app(lifespan_log: list[str], proceed: threading.Event) -> Starlette:
    """A Starlette app with a stream that waits for the client, a websocket echo and a lifespan."""

    async def stream(_request: Request) -> StreamingResponse:
        async def body() -> AsyncIterator[bytes]:
            yield b"first;"
            released = await asyncio.to_thread(proceed.wait, 10)
            yield b"second" if released else b"buffered!"

        return StreamingResponse(body(), media_type="text/plain")

    async def echo(websocket: WebSocket) -> None:
        await websocket.accept()
        text = await websocket.receive_text()
        await websocket.send_text(f"{text}|{current_request_id()}")
        await websocket.close()

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        lifespan_log.append("startup")
        yield
        lifespan_log.append("shutdown")

    return Starlette(
        routes=[Route("/stream", stream), WebSocketRoute("/ws", echo)],
        middleware=[Middleware(ResilientMiddleware, rate_limit="100/minute", timeout=30.0, max_body_size=1000)],
        lifespan=lifespan,
    )


def test_real_uvicorn_streams_echoes_and_runs_lifespan_once(serve: Callable[[Any], Served]) -> None:
    """Through uvicorn: the stream arrives chunk by chunk, websockets echo, lifespan runs once."""
    lifespan_log: list[str] = []
    proceed = threading.Event()
    served = serve(uvicorn_app(lifespan_log, proceed))
    with httpx.Client(base_url=served.url, timeout=10) as client, client.stream("GET", "/stream") as response:
        chunks = response.iter_raw()
        first = next(chunks)
        proceed.set()  # only now may the server send the rest: proves nothing was buffered
        rest = b"".join(chunks)
    assert response.headers["x-request-id"]
    assert first == b"first;"
    assert rest == b"second"
    with connect(served.url.replace("http", "ws") + "/ws", additional_headers={"X-Request-ID": "ws-1"}) as ws:
        ws.send("hello")
        assert ws.recv(timeout=10) == "hello|ws-1"
    served.stop()
    assert lifespan_log == ["startup", "shutdown"]


def test_real_uvicorn_rejects_with_well_formed_responses(serve: Callable[[Any], Served]) -> None:
    """Through uvicorn, 413 and 429 responses are complete HTTP responses with JSON bodies."""
    served = serve(uvicorn_app([], threading.Event()))
    with httpx.Client(base_url=served.url, timeout=10) as client:
        too_big = client.post("/stream", content=b"x" * 2000)
        assert too_big.status_code == 413
        assert json.loads(too_big.content) == {
            "error": "payload_too_large",
            "request_id": too_big.headers["x-request-id"],
        }
