"""An unhandled error carrying secrets: the client gets a bare 500, logs and spans get it redacted.

The handler fails with a message holding a bearer token and a password, as a driver or an
HTTP client error often does. The response must hold no exception text, no traceback and
no secret; the library's log lines and spans must record the error without the secrets.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, MutableMapping
from typing import Any

import httpx
import pytest
from flask import Flask
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from werkzeug.test import Client

from resilient.asgi import ResilientMiddleware
from resilient.wsgi import ResilientWSGIMiddleware
from tests._wsgi_server import serve_once

from ._support import BEARER, PASSWORD, LogSink, leaked, spans_text

MESSAGE = (
    f"login to postgresql://app:{PASSWORD}@db.internal/orders failed; "
    f"upstream replied to Authorization: Bearer {BEARER} with password={PASSWORD}"
)
REVEALING = ("Traceback", "RuntimeError", "postgresql://", "login to", "File ", 'line "')


class DatabaseDown(RuntimeError):  # noqa: N818 - named as a driver would name it
    """What a database driver raises, secrets in its message."""


def fail() -> None:
    raise DatabaseDown(MESSAGE)


def check_response(status: int, headers: Iterable[tuple[str, str]], body: bytes) -> None:
    """A 500 whose body and headers say nothing about the failure."""
    assert status == 500
    text = body.decode("latin-1") + "\n" + "\n".join(f"{name}: {value}" for name, value in headers)
    assert leaked(text, BEARER, PASSWORD) == []
    assert [word for word in REVEALING if word in text] == []


def check_telemetry(log_sink: LogSink, spans: InMemorySpanExporter) -> None:
    """The error is in the logs and on the span, under its type, with the secrets masked."""
    logs = log_sink.text()
    assert "http.unhandled_error" in logs
    assert "DatabaseDown" in logs
    assert leaked(logs, BEARER, PASSWORD) == []
    recorded = spans_text(spans)
    assert "DatabaseDown" in recorded
    assert leaked(recorded, BEARER, PASSWORD) == []


# ---------------------------------------------------------------------- ASGI


async def raw_asgi_app(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
    """A bare ASGI app that fails before answering."""
    fail()


def starlette_app() -> Starlette:
    async def orders(_request: Request) -> PlainTextResponse:
        fail()
        return PlainTextResponse("unreachable")

    return Starlette(routes=[Route("/orders", orders)])


@pytest.mark.parametrize("app", ["raw-asgi", "starlette"])
async def test_asgi_500_leaks_nothing(
    app: str, log_sink: LogSink, spans: InMemorySpanExporter, caplog: pytest.LogCaptureFixture
) -> None:
    """ASGI: the 500 body has no exception text, traceback or secret; logs and spans have no secret."""
    inner = raw_asgi_app if app == "raw-asgi" else starlette_app()
    middleware = ResilientMiddleware(inner)
    # Starlette re-raises after sending its own plain 500; the test client must not turn that into an error.
    transport = httpx.ASGITransport(app=middleware, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://service") as http:
        response = await http.get("/orders", headers={"X-Request-ID": "leak-1"})
    check_response(response.status_code, response.headers.items(), response.content)
    if app == "raw-asgi":
        assert json.loads(response.content) == {"error": "internal_error", "request_id": "leak-1"}
    check_telemetry(log_sink, spans)


# ---------------------------------------------------------------------- WSGI


def flask_app(*, propagate: bool) -> Flask:
    app = Flask(__name__)
    app.config["PROPAGATE_EXCEPTIONS"] = propagate

    @app.get("/orders")
    def orders() -> str:
        fail()
        return "unreachable"

    app.wsgi_app = ResilientWSGIMiddleware(app.wsgi_app)  # type: ignore[method-assign]
    return app


def raw_wsgi_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """A bare WSGI app that fails before calling start_response."""
    fail()
    return []


def failing_body_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """A WSGI app that starts its response, then fails producing the first chunk."""
    start_response("200 OK", [("Content-Type", "text/plain")])

    def body() -> Iterable[bytes]:
        fail()
        yield b"unreachable"

    return body()


@pytest.mark.parametrize("app", ["flask-propagating", "raw-wsgi", "failing-body"])
def test_wsgi_500_leaks_nothing(app: str, log_sink: LogSink, spans: InMemorySpanExporter) -> None:
    """WSGI: the 500 body has no exception text, traceback or secret; logs and spans have no secret.

    Driven as a server drives it: the 500 is on the wire before the app's exception, re-raised
    so the server logs it, reaches the server.
    """
    if app == "flask-propagating":
        wsgi: Any = flask_app(propagate=True)
    else:
        wsgi = ResilientWSGIMiddleware(raw_wsgi_app if app == "raw-wsgi" else failing_body_app)
    served = serve_once(wsgi, "/orders", headers={"X-Request-ID": "leak-2"})
    check_response(served.status, served.headers, served.body)
    assert json.loads(served.body) == {"error": "internal_error", "request_id": "leak-2"}
    assert isinstance(served.error, DatabaseDown)
    check_telemetry(log_sink, spans)


def test_flask_own_500_page_leaks_nothing_either(log_sink: LogSink, spans: InMemorySpanExporter) -> None:
    """WSGI with Flask handling its own errors (production default): its 500 page passes through, secret-free."""
    response = Client(flask_app(propagate=False)).get("/orders")
    check_response(response.status_code, response.headers.items(), response.data)
    assert leaked(log_sink.text(), BEARER, PASSWORD) == []
    assert leaked(spans_text(spans), BEARER, PASSWORD) == []
