"""Credentials in a request never reach a log line, a span or an event field, from edge to upstream.

A request carrying ``Authorization: Bearer ...``, a session cookie and ``?token=...`` /
``?password=...`` goes through the middleware to a handler that forwards all of them to an
upstream through the resilient httpx transport (the upstream fails once, so the retry path
logs too). Every log line (stdlib and structlog), every span and every event the library
produced must be free of them, while the upstream did receive them.
"""

from __future__ import annotations

from typing import Any

import httpx
from flask import Flask, request
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from werkzeug.test import Client

import resilient.httpx
from resilient import Retry
from resilient.asgi import ResilientMiddleware
from resilient.instrumentation import Event
from resilient.testing import Fault, FaultyUpstream
from resilient.wsgi import ResilientWSGIMiddleware

from ._support import BEARER, COOKIE, PASSWORD, QUERY_TOKEN, LogSink, leaked, spans_text

SECRETS = (BEARER, COOKIE, PASSWORD, QUERY_TOKEN)
QUERY = f"token={QUERY_TOKEN}&password={PASSWORD}&page=2"
HEADERS = {"Authorization": f"Bearer {BEARER}", "Cookie": f"session={COOKIE}; theme=dark"}
RETRY = Retry(attempts=3, initial_delay=0.001, max_delay=0.001)
FORWARDED = ("authorization", "cookie")


def upstream() -> FaultyUpstream:
    """Fails the first request (so the transport retries and logs it), then answers."""
    return FaultyUpstream([Fault.status(503)], default=Fault.ok("data"), max_lifetime=30.0)


def check_nothing_leaked(
    server: FaultyUpstream, log_sink: LogSink, spans: InMemorySpanExporter, events: list[Event]
) -> None:
    forwarded = server.received[-1]
    assert forwarded.headers["authorization"] == f"Bearer {BEARER}"  # the secrets were really in play
    assert QUERY_TOKEN in forwarded.path
    assert server.requests == 2  # a 503, then a retry
    logs = log_sink.text()
    assert "http.access" in logs
    assert "retry.scheduled" in logs
    assert "http.request" in logs
    assert leaked(logs, *SECRETS) == []
    assert leaked(spans_text(spans), *SECRETS) == []
    assert leaked("\n".join(f"{event.name} {dict(event.fields)!r}" for event in events), *SECRETS) == []
    assert {span.kind.name for span in spans.get_finished_spans()} >= {"SERVER", "CLIENT"}


async def test_asgi_and_async_transport_redact_credentials(
    log_sink: LogSink, spans: InMemorySpanExporter, events: list[Event]
) -> None:
    """ASGI middleware + async transport: no credential in logs, spans or events."""
    async with upstream() as server, resilient.httpx.async_client(base_url=server.url, retry=RETRY) as outgoing:

        async def forward(incoming: Request) -> PlainTextResponse:
            headers = {name: incoming.headers[name] for name in FORWARDED}
            answer = await outgoing.get(f"/data?{incoming.url.query}", headers=headers)
            return PlainTextResponse(answer.text)

        app = ResilientMiddleware(Starlette(routes=[Route("/proxy", forward)]))
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://service") as http:
            response = await http.get(f"/proxy?{QUERY}", headers=HEADERS)
    assert response.text == "data"
    check_nothing_leaked(server, log_sink, spans, events)


def test_wsgi_and_sync_transport_redact_credentials(
    log_sink: LogSink, spans: InMemorySpanExporter, events: list[Event]
) -> None:
    """WSGI middleware + sync transport: no credential in logs, spans or events."""
    with upstream() as server, resilient.httpx.client(base_url=server.url, retry=RETRY) as outgoing:
        app = Flask(__name__)

        @app.get("/proxy")
        def forward() -> str:
            headers: dict[str, Any] = {name: request.headers[name] for name in FORWARDED}
            return outgoing.get(f"/data?{request.query_string.decode()}", headers=headers).text

        app.wsgi_app = ResilientWSGIMiddleware(app.wsgi_app)  # type: ignore[method-assign]
        response = Client(app, use_cookies=False).get(f"/proxy?{QUERY}", headers=HEADERS)
    assert response.text == "data"
    check_nothing_leaked(server, log_sink, spans, events)
