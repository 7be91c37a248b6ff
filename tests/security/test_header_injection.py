"""CR/LF in a propagated request id never reaches a response header nor an outgoing request header.

Requests are built at the protocol level (an ASGI scope, a WSGI environ), since HTTP clients
refuse to send such headers; the handler then calls a real upstream through the resilient
httpx transport, which propagates the request id. What the client would receive and what
the upstream did receive are both checked.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, MutableMapping
from typing import Any

import pytest
from werkzeug.test import EnvironBuilder

import resilient.httpx
from resilient.asgi import ResilientMiddleware
from resilient.testing import FaultyUpstream
from resilient.wsgi import ResilientWSGIMiddleware

HOSTILE = [
    b"abc\r\nSet-Cookie: evil=1",
    b"abc\nX-Injected: 1",
    b"abc\rX-Injected: 1",
    b"abc\r\n\r\n<script>alert(1)</script>",
    b"abc\x00X-Injected: 1",
    "abc\u2028X-Injected: 1".encode(),
    b"abc%0d%0aX-Injected: 1",
    b" abc",
]
FRESH_ID = re.compile(r"[0-9a-f]{32}")
WELL_FORMED = "req-123.abc:def_9"


def check_headers(headers: Iterable[tuple[str, str]]) -> dict[str, str]:
    """No control character in any header, no injected header; the headers by lower-case name."""
    seen: dict[str, str] = {}
    for name, value in headers:
        assert not re.search(r"[\x00-\x1f\x7f\u2028]", name + value), (name, value)
        seen[name.lower()] = value
    assert "x-injected" not in seen
    assert "set-cookie" not in seen
    return seen


def check_upstream(server: FaultyUpstream, request_id: str) -> None:
    """The upstream got exactly one request, carrying the (clean) request id and nothing injected."""
    assert server.requests == 1
    received = check_headers(server.received[-1].headers.items())
    assert received["x-request-id"] == request_id


@pytest.mark.parametrize("raw_id", [*HOSTILE, WELL_FORMED.encode()])
async def test_asgi_request_id_cannot_inject_headers(raw_id: bytes) -> None:
    """ASGI: a hostile X-Request-ID is replaced by a fresh id, in the response and in the outgoing call."""
    async with FaultyUpstream(max_lifetime=30.0) as server, resilient.httpx.async_client(base_url=server.url) as http:

        async def app(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
            body = (await http.get("/")).content
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
            await send({"type": "http.response.body", "body": body})

        sent: list[MutableMapping[str, Any]] = []

        async def receive() -> MutableMapping[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: MutableMapping[str, Any]) -> None:
            sent.append(message)

        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": "/",
            "raw_path": b"/",
            "query_string": b"",
            "root_path": "",
            "headers": [(b"host", b"service"), (b"x-request-id", raw_id)],
            "client": ("203.0.113.1", 50000),
            "server": ("service", 80),
        }
        await ResilientMiddleware(app)(scope, receive, send)
    [start] = [message for message in sent if message["type"] == "http.response.start"]
    assert start["status"] == 200
    headers = check_headers((name.decode("latin-1"), value.decode("latin-1")) for name, value in start["headers"])
    expected = WELL_FORMED if raw_id == WELL_FORMED.encode() else headers["x-request-id"]
    assert headers["x-request-id"] == expected
    if raw_id != WELL_FORMED.encode():
        assert FRESH_ID.fullmatch(expected)
    check_upstream(server, expected)


@pytest.mark.parametrize("raw_id", [*HOSTILE, WELL_FORMED.encode()])
def test_wsgi_request_id_cannot_inject_headers(raw_id: bytes) -> None:
    """WSGI: a hostile X-Request-ID is replaced by a fresh id, in the response and in the outgoing call."""
    with FaultyUpstream(max_lifetime=30.0) as server, resilient.httpx.client(base_url=server.url) as http:

        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
            body = http.get("/").content
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [body]

        environ = EnvironBuilder(path="/", environ_base={"REMOTE_ADDR": "203.0.113.1"}).get_environ()
        environ["HTTP_X_REQUEST_ID"] = raw_id.decode("latin-1")  # as a server hands raw header bytes over
        started: list[tuple[str, list[tuple[str, str]]]] = []

        def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[[bytes], Any]:
            started.append((status, headers))
            return lambda _data: None

        response = ResilientWSGIMiddleware(app)(environ, start_response)
        try:
            body = b"".join(response)
        finally:
            getattr(response, "close", lambda: None)()
    [(status, raw_headers)] = started
    assert status.startswith("200")
    assert body == b"ok"
    headers = check_headers(raw_headers)
    expected = WELL_FORMED if raw_id == WELL_FORMED.encode() else headers["x-request-id"]
    assert headers["x-request-id"] == expected
    if raw_id != WELL_FORMED.encode():
        assert FRESH_ID.fullmatch(expected)
    check_upstream(server, expected)
