"""ResilientWSGIMiddleware on a Flask app: through its test client and a real threaded server."""

from __future__ import annotations

import gc
import io
import json
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
import structlog
from flask import Flask, Response, abort, request, stream_with_context
from flask.testing import FlaskClient
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from werkzeug.test import Client

from resilient import DeadlineExceededError, deadline, instrumentation
from resilient._kernel.context import current_request_id
from resilient.wsgi import ResilientWSGIMiddleware, RouteOptions

from ._wsgi_server import serve_once, serve_wsgi
from .test_bulkhead import NotifyingQueue

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


def flask_app(**options: Any) -> Flask:
    """A Flask app with the middleware mounted in one line, and routes for each behaviour."""
    app = Flask(__name__)
    app.config["PROPAGATE_EXCEPTIONS"] = True
    app.wsgi_app = ResilientWSGIMiddleware(app.wsgi_app, **options)  # type: ignore[method-assign]

    @app.errorhandler(ValueError)
    def invalid(_exc: ValueError) -> tuple[dict[str, str], int]:
        return {"handled": "yes"}, 422

    @app.get("/items/<int:item_id>")
    def item(item_id: int) -> dict[str, Any]:
        structlog.get_logger("app").info("looking up", item_id=item_id)
        return {"id": item_id, "request_id": current_request_id(), "remaining": deadline.remaining()}

    @app.get("/missing")
    def missing() -> str:
        abort(404)

    @app.get("/invalid")
    def handled() -> str:
        raise ValueError

    @app.get("/boom")
    def boom() -> str:
        raise RuntimeError("upstream said token=sk_live_abcdefghijklmnopqrstuvwx")

    @app.get("/slow")
    def slow() -> str:
        time.sleep(0.1)  # slow work past the 0.05 s route timeout: what the test is about
        return "late"

    @app.get("/stream")
    def stream() -> Response:
        def body() -> Iterator[str]:
            yield "first;"
            time.sleep(0.1)  # the stream outlives the route timeout
            yield "second"

        return Response(stream_with_context(body()))

    @app.post("/upload")
    def upload() -> dict[str, int]:
        return {"read": len(request.get_data())}

    return app


def client(**options: Any) -> FlaskClient:
    return flask_app(**options).test_client()


# --- request id, logs, access log ------------------------------------------------------------


def test_request_id_is_echoed_and_visible_to_the_handler() -> None:
    """A well-formed X-Request-ID comes back and is the current request id inside the handler."""
    response = client().get("/items/1", headers={"X-Request-ID": "abc-123"})
    assert response.headers["X-Request-ID"] == "abc-123"
    assert response.json == {"id": 1, "request_id": "abc-123", "remaining": None}
    assert current_request_id() is None


def test_app_log_lines_carry_the_request_id_and_nothing_leaks_after() -> None:
    """The app's structlog lines get request_id; the worker thread's context is clean afterwards."""
    capture = structlog.testing.LogCapture()
    structlog.configure(processors=[structlog.contextvars.merge_contextvars, capture])
    client().get("/items/7", headers={"X-Request-ID": "log-me"})
    [line] = [entry for entry in capture.entries if entry["event"] == "looking up"]
    assert line["request_id"] == "log-me"
    assert structlog.contextvars.get_contextvars() == {}


def test_one_access_line_with_the_flask_rule(access: list[instrumentation.Event]) -> None:
    """Each request yields one http.access event, with the Flask URL rule as the route."""
    response = client().get(
        "/items/3?api_key=abc&page=2",
        headers={"X-Request-ID": "r-1", "User-Agent": "probe/1"},
        environ_base={"REMOTE_ADDR": "192.0.2.10"},
    )
    body = response.data  # the line is written once the server has the whole body
    [event] = access
    fields = dict(event.fields)
    assert fields.pop("duration_ms") >= 0
    assert fields == {
        "method": "GET",
        "path": "/items/3?api_key=***&page=2",
        "route": "/items/<int:item_id>",
        "status": 200,
        "bytes": len(body),
        "client": "192.0.2.10",
        "request_id": "r-1",
        "user_agent": "probe/1",
    }


def test_server_span_continues_the_trace(spans: InMemorySpanExporter) -> None:
    """The SERVER span joins the caller's trace and is named after the Flask rule."""
    assert client().get("/items/5", headers={"traceparent": TRACEPARENT}).data
    [span] = [s for s in spans.get_finished_spans() if s.kind is SpanKind.SERVER]
    assert span.name == "GET /items/<int:item_id>"
    assert format(span.context.trace_id, "032x") == TRACE_ID
    assert span.attributes is not None
    assert span.attributes["http.route"] == "/items/<int:item_id>"
    assert span.attributes["http.response.status_code"] == 200
    assert span.attributes["url.path"] == "/items/5"


def test_access_line_joins_the_server_span(spans: InMemorySpanExporter) -> None:
    """Written straight to the app's structlog (no listeners), the line carries the span's ids."""
    capture = structlog.testing.LogCapture()
    structlog.configure(processors=[capture])
    assert client().get("/items/5", headers={"traceparent": TRACEPARENT, "X-Request-ID": "r-9"}).data
    [line] = [entry for entry in capture.entries if entry["event"] == "http.access"]
    [span] = [s for s in spans.get_finished_spans() if s.kind is SpanKind.SERVER]
    assert (line["trace_id"], line["span_id"]) == (TRACE_ID, format(span.context.span_id, "016x"))
    assert (line["request_id"], line["route"], line["status"]) == ("r-9", "/items/<int:item_id>", 200)


# --- error shield ----------------------------------------------------------------------------


def test_unhandled_error_becomes_a_bare_500(
    access: list[instrumentation.Event], caplog: pytest.LogCaptureFixture
) -> None:
    """The client gets a JSON 500 with the request id only; the log line has no secret."""
    served = serve_once(flask_app(), "/boom", headers={"X-Request-ID": "boom-1"})
    assert served.status == 500
    assert json.loads(served.body) == {"error": "internal_error", "request_id": "boom-1"}
    assert access[0].fields["rejection"] == "internal_error"
    assert "sk_live_abcdefghij" not in caplog.text


def test_unhandled_error_is_answered_then_reraised_once_recorded() -> None:
    """After the bare 500 is written, the app's own exception goes on to the server, recorded once."""
    events: list[instrumentation.Event] = []
    instrumentation.add_listener(events.append)
    try:
        served = serve_once(flask_app(), "/boom")
        with pytest.raises(RuntimeError, match="upstream said") as raised:
            client().get("/boom")  # Flask propagating: its test client raises, as without the middleware
    finally:
        instrumentation.remove_listener(events.append)
    assert served.status == 500
    assert isinstance(served.error, RuntimeError)
    unhandled = [event.error for event in events if event.name == "http.unhandled_error"]
    assert unhandled == [served.error, raised.value]


def test_handled_errors_keep_the_apps_own_answer() -> None:
    """Flask's abort() and error handlers are not overridden."""
    flask_client = client()
    assert flask_client.get("/missing").status_code == 404
    invalid = flask_client.get("/invalid")
    assert (invalid.status_code, invalid.json) == (422, {"handled": "yes"})


def test_flask_without_propagation_answers_its_own_generic_500() -> None:
    """In production mode Flask answers unhandled errors itself, without exception text."""
    app = flask_app()
    app.config["PROPAGATE_EXCEPTIONS"] = False
    app.logger.disabled = True  # Flask logs the traceback itself; not what this test checks
    response = app.test_client().get("/boom")
    assert response.status_code == 500
    assert b"sk_live" not in response.data
    assert response.headers["X-Request-ID"]


def test_error_shield_off_lets_the_exception_through() -> None:
    """With error_shield=False the exception reaches the server untouched."""
    with pytest.raises(RuntimeError, match="upstream said"):
        client(error_shield=False).get("/boom")


# --- rate limit ------------------------------------------------------------------------------


def test_rate_limit_rejects_with_429_and_headers() -> None:
    """Past the limit the client gets 429, Retry-After and both generations of RateLimit headers."""
    flask_client = client(rate_limit="2/minute", rate_limit_algorithm="fixed-window")
    assert [flask_client.get("/items/1").status_code for _ in range(2)] == [200, 200]
    rejected = flask_client.get("/items/1")
    assert rejected.status_code == 429
    assert rejected.json is not None
    assert rejected.json["error"] == "rate_limited"
    assert 1 <= int(rejected.headers["Retry-After"]) <= 60
    assert rejected.headers["RateLimit-Policy"] == '"default";q=2;w=60'
    assert rejected.headers["RateLimit-Remaining"] == "0"


def test_rate_limiter_admits_no_more_than_its_limit_under_200_concurrent_requests() -> None:
    """200 threads at once against a limit of 50: exactly 50 admitted, 150 rejected."""
    app = flask_app(rate_limit="50/minute", rate_limit_algorithm="sliding-window")
    barrier = threading.Barrier(200)

    def call(_: int) -> int:
        test_client = Client(app)
        barrier.wait(timeout=30)
        return test_client.get("/items/1").status_code

    with ThreadPoolExecutor(max_workers=200) as pool:
        statuses = list(pool.map(call, range(200)))
    assert statuses.count(200) == 50
    assert statuses.count(429) == 150


# --- load shedding ---------------------------------------------------------------------------


def test_in_flight_limit_sheds_exactly_the_excess() -> None:
    """With 3 threads held in the handler, 5 more requests get 503 + Retry-After; the 3 complete."""
    entered = threading.Semaphore(0)
    release = threading.Event()

    def held(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        entered.release()
        release.wait(timeout=30)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"done"]

    app = ResilientWSGIMiddleware(held, max_in_flight=3)
    with ThreadPoolExecutor(max_workers=3) as pool:
        holders = [pool.submit(Client(app).get, "/") for _ in range(3)]
        for _ in range(3):
            assert entered.acquire(timeout=30)
        shed = [Client(app).get("/") for _ in range(5)]
        release.set()
        done = [holder.result(timeout=30) for holder in holders]
    assert [response.status_code for response in shed] == [503] * 5
    assert {response.headers["Retry-After"] for response in shed} == {"1"}
    assert [response.status_code for response in done] == [200] * 3


def test_queued_requests_get_freed_slots_in_arrival_order() -> None:
    """With a wait allowed, requests over the limit queue (no 503) and enter as slots free up, oldest first."""
    first_entered, release = threading.Event(), threading.Event()
    entered: list[str] = []

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        entered.append(environ["PATH_INFO"])
        if environ["PATH_INFO"] == "/1":
            first_entered.set()
            release.wait(timeout=30)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"done"]

    middleware = ResilientWSGIMiddleware(app, max_in_flight=1, max_in_flight_wait=30.0)
    gate = middleware._edge.router.default.gate
    assert gate is not None
    waiters = gate._slots._waiters = NotifyingQueue()
    with ThreadPoolExecutor(max_workers=3) as pool:
        # buffered: the test client reads and closes each response, which frees its slot
        first = pool.submit(Client(middleware).get, "/1", buffered=True)
        assert first_entered.wait(timeout=30)
        second = pool.submit(Client(middleware).get, "/2", buffered=True)
        waiters.wait_for_length(1)
        third = pool.submit(Client(middleware).get, "/3", buffered=True)
        waiters.wait_for_length(2)
        release.set()
        statuses = [future.result(timeout=30).status_code for future in (first, second, third)]
    assert statuses == [200, 200, 200]
    assert entered == ["/1", "/2", "/3"]


# --- the cooperative deadline ----------------------------------------------------------------


def test_late_response_is_replaced_by_504(access: list[instrumentation.Event]) -> None:
    """A handler that returns after its deadline has its response discarded for a 504."""
    flask_client = client(timeout=5.0, routes={"/slow": RouteOptions(timeout=0.05)})
    fast = flask_client.get("/items/1")
    late = flask_client.get("/slow")
    assert fast.json is not None
    assert 0 < fast.json["remaining"] <= 5.0
    assert late.status_code == 504
    assert late.json == {"error": "deadline_exceeded", "request_id": late.headers["X-Request-ID"]}
    assert access[-1].fields["rejection"] == "deadline_exceeded"


def test_stream_past_the_deadline_is_cut() -> None:
    """A streamed body still running at the deadline is cut: the server must drop the connection."""
    flask_client = client(routes={"/stream": RouteOptions(timeout=0.05)})
    with pytest.raises(DeadlineExceededError):
        flask_client.get("/stream", buffered=True)


def test_caller_deadline_header_shortens_and_spent_budget_skips_the_app() -> None:
    """The deadline header lowers the local timeout; a spent budget is a 504 without work."""
    calls: list[str] = []

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        calls.append(str(deadline.remaining()))
        start_response("200 OK", [])
        return [b"ok"]

    test_client = Client(ResilientWSGIMiddleware(app, timeout=5.0))
    assert test_client.get("/", headers={deadline.HEADER: "1500"}).status_code == 200
    assert 0 < float(calls[0]) <= 1.5
    assert test_client.get("/", headers={deadline.HEADER: "0"}).status_code == 504
    assert len(calls) == 1


# --- body size -------------------------------------------------------------------------------


def test_body_limits_declared_and_chunked() -> None:
    """A declared length over the limit and a de-chunked body growing past it both get 413."""
    flask_client = client(max_body_size=50)
    assert flask_client.post("/upload", data=b"x" * 51).status_code == 413
    assert flask_client.post("/upload", data=b"x" * 50).json == {"read": 50}
    chunked = flask_client.post(
        "/upload",
        input_stream=_Chunks([b"x" * 20] * 5),
        environ_overrides={"wsgi.input_terminated": True},
        headers={"Transfer-Encoding": "chunked"},
    )
    assert chunked.status_code == 413


def test_a_finished_request_is_freed_without_the_garbage_collector() -> None:
    """The size-limited body stream must not point back at the request: that made each request
    a reference cycle, kept in memory until the next collection."""
    seen: list[weakref.ref[Any]] = []

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        seen.append(weakref.ref(environ["wsgi.input"]))
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    middleware = ResilientWSGIMiddleware(app, max_body_size=100)
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "REMOTE_ADDR": "127.0.0.1", "wsgi.input": io.BytesIO()}
    gc.disable()
    try:
        response = middleware(dict(environ), discarding_start_response)
        assert b"".join(response) == b"ok"
        response.close()  # type: ignore[attr-defined]
        del response
        assert seen[0]() is None  # freed by reference counting alone
    finally:
        gc.enable()


def discarding_start_response(_status: str, _headers: list[tuple[str, str]], _exc_info: Any = None) -> Any:
    """A `start_response` for tests that read only the body."""
    return _ignore


def _ignore(_data: bytes) -> None:
    """The ``write`` `discarding_start_response` hands back."""


class _Chunks(io.BytesIO):
    """A request body of unknown length, delivered piece by piece as a server de-chunks it."""

    def __init__(self, pieces: list[bytes]) -> None:
        super().__init__(b"".join(pieces))

    def read(self, size: int | None = -1) -> bytes:
        return super().read(20 if size is None or size < 0 else min(size, 20))


# --- pass-through ----------------------------------------------------------------------------


def test_legacy_write_apps_get_our_headers() -> None:
    """An app using the write() callable from start_response still gets the request id."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"written;")
        return [b"returned"]

    response = Client(ResilientWSGIMiddleware(app)).get("/", headers={"X-Request-ID": "w-1"})
    assert response.data == b"written;returned"
    assert response.headers["X-Request-ID"] == "w-1"


# --- a real threaded WSGI server -------------------------------------------------------------


@pytest.fixture
def served() -> Iterator[str]:
    """The Flask app behind the middleware on a real threaded server."""
    app = flask_app(rate_limit="3/minute", rate_limit_algorithm="fixed-window", max_body_size=100)
    with serve_wsgi(app) as url:
        yield url


def test_real_threaded_server(served: str) -> None:
    """Through a real threaded server: ids are echoed, streams arrive, limits answer cleanly."""
    with httpx.Client(base_url=served, timeout=10) as http:
        ok = http.get("/items/1", headers={"X-Request-ID": "real-1"})
        streamed = http.get("/stream")
        too_big = http.post("/upload", content=b"x" * 101)  # refused before it counts
        admitted = http.get("/items/2")
        limited = http.get("/items/3")
    assert (ok.status_code, ok.headers["x-request-id"]) == (200, "real-1")
    assert streamed.text == "first;second"
    assert too_big.status_code == 413
    assert admitted.status_code == 200
    assert limited.status_code == 429
    assert limited.headers["retry-after"]
