"""The bad-input table, run against both middlewares: each hostile request gets a clean answer.

Requests are driven at the protocol level (an ASGI scope, a WSGI environ) rather than through
an HTTP client, so the table can send what clients refuse to build: CR/LF in a header,
non-UTF-8 paths, lying Content-Length values.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import re
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote_to_bytes

import pytest
from flask import Flask, request
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from resilient import instrumentation
from resilient.asgi import ResilientMiddleware
from resilient.wsgi import ResilientWSGIMiddleware

SECRET = "hunter2-very-secret"  # noqa: S105 - the secret that must never leak
MAX_BODY = 1000
OPTIONS: dict[str, Any] = {"max_body_size": MAX_BODY, "trusted_proxies": ["10.0.0.0/8"]}
UNTRUSTED_PEER = "203.0.113.9"
TRUSTED_PEER = "10.1.2.3"
SAFE_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


@dataclass
class Reply:
    """What a client received: status, headers (lower-case names) and body."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        return next((value for key, value in self.headers if key == name), None)


@dataclass
class Probe:
    """One hostile request."""

    method: str = "GET"
    path: bytes = b"/ok"
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    chunks: list[bytes] = field(default_factory=list)
    peer: str = UNTRUSTED_PEER


# --- the two apps, the same routes -----------------------------------------------------------


async def starlette_ok(request: Request) -> JSONResponse:
    body = await request.body()
    return JSONResponse({"read": len(body)})


async def starlette_boom(_request: Request) -> JSONResponse:
    raise RuntimeError(f"database said password={SECRET}")


def asgi_app() -> Starlette:
    """Mounted as Starlette mounts user middleware: inside its ServerErrorMiddleware."""
    routes = [Route("/ok", starlette_ok, methods=["GET", "POST"]), Route("/boom", starlette_boom)]
    return Starlette(routes=routes, middleware=[Middleware(ResilientMiddleware, **OPTIONS)])


def wsgi_app() -> ResilientWSGIMiddleware:
    app = Flask(__name__)
    app.config["PROPAGATE_EXCEPTIONS"] = True  # let the shield answer, not Flask's own 500 page

    @app.route("/ok", methods=["GET", "POST"])
    def ok() -> dict[str, int]:
        return {"read": len(request.get_data())}

    @app.route("/boom")
    def boom() -> str:
        raise RuntimeError(f"database said password={SECRET}")

    return ResilientWSGIMiddleware(app.wsgi_app, **OPTIONS)


# --- protocol-level drivers --------------------------------------------------------------------


def call_asgi(app: Starlette, probe: Probe) -> Reply:
    """Drive one request through the ASGI app as a server would (body in the given chunks)."""
    raw_path = probe.path
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": probe.method,
        "scheme": "http",
        "path": unquote_to_bytes(raw_path).decode("utf-8", "replace"),
        "raw_path": raw_path,
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"testserver"), *probe.headers],
        "client": (probe.peer, 40000),
        "server": ("testserver", 80),
    }
    messages = [{"type": "http.request", "body": chunk, "more_body": True} for chunk in probe.chunks]
    messages.append({"type": "http.request", "body": b"", "more_body": False})
    sent: list[dict[str, Any]] = []

    async def receive() -> MutableMapping[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(dict(message))

    with contextlib.suppress(RuntimeError):  # the app's own error, re-raised after the 500: a server logs it
        asyncio.run(app(scope, receive, send))
    start = next(message for message in sent if message["type"] == "http.response.start")
    headers = [(name.decode("latin-1"), value.decode("latin-1")) for name, value in start["headers"]]
    body = b"".join(message.get("body", b"") for message in sent if message["type"] == "http.response.body")
    return Reply(start["status"], headers, body)


def call_wsgi(app: ResilientWSGIMiddleware, probe: Probe) -> Reply:
    """Drive one request through the WSGI app as a threaded server would."""
    environ: dict[str, Any] = {
        "REQUEST_METHOD": probe.method,
        "SCRIPT_NAME": "",
        "PATH_INFO": unquote_to_bytes(probe.path).decode("latin-1"),
        "QUERY_STRING": "",
        "SERVER_NAME": "testserver",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": probe.peer,
        "HTTP_HOST": "testserver",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(b"".join(probe.chunks)),
        "wsgi.errors": io.StringIO(),
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    for name, value in probe.headers:
        key = name.decode("latin-1").upper().replace("-", "_")
        environ[key if key in {"CONTENT_LENGTH", "CONTENT_TYPE"} else f"HTTP_{key}"] = value.decode("latin-1")
    if probe.chunks and "CONTENT_LENGTH" not in environ:
        environ["wsgi.input_terminated"] = True  # a server that de-chunked the body
    started: list[tuple[str, list[tuple[str, str]]]] = []
    written: list[bytes] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[[bytes], None]:
        started.append((status, headers))
        return written.append

    try:
        iterable = app(environ, start_response)
        try:
            written.extend(iterable)
        finally:
            close = getattr(iterable, "close", None)
            if close is not None:
                close()
    except RuntimeError:  # the app's own error, re-raised after the 500 was written: a server logs it
        pass
    body = b"".join(written)
    status, headers = started[-1]
    return Reply(int(status[:3]), [(name.lower(), value) for name, value in headers], body)


@pytest.fixture(params=["asgi", "wsgi"])
def send(request: pytest.FixtureRequest) -> Callable[[Probe], Reply]:
    """Send a probe through the ASGI or the WSGI middleware (fresh app per test)."""
    if request.param == "asgi":
        asgi = asgi_app()
        return lambda probe: call_asgi(asgi, probe)
    wsgi = wsgi_app()
    return lambda probe: call_wsgi(wsgi, probe)


# --- the table -------------------------------------------------------------------------------

CHUNKED_OVERSIZE = [b"x" * 400] * 5

CASES: dict[str, tuple[Probe, int]] = {
    "invalid request id": (Probe(headers=[(b"x-request-id", b"not a valid id!")]), 200),
    "oversized request id": (Probe(headers=[(b"x-request-id", b"a" * 129)]), 200),
    "CR/LF in request id": (Probe(headers=[(b"x-request-id", b"abc\r\nx-injected: yes")]), 200),
    "invalid traceparent": (Probe(headers=[(b"traceparent", b"00-not-a-trace-id-zz")]), 200),
    "non-UTF-8 path": (Probe(path=b"/%ff%fe%80"), 404),
    "very long path": (Probe(path=b"/" + b"a" * 20_000), 404),
    "spoofed X-Forwarded-For, untrusted peer": (Probe(headers=[(b"x-forwarded-for", b"198.51.100.1")]), 200),
    "X-Forwarded-For from a trusted proxy": (
        Probe(headers=[(b"x-forwarded-for", b"198.51.100.1")], peer=TRUSTED_PEER),
        200,
    ),
    "missing Content-Length, small chunked body": (Probe(method="POST", chunks=[b"abc", b"def"]), 200),
    "Content-Length over the limit, short body": (
        Probe(method="POST", headers=[(b"content-length", b"100000")], chunks=[b"tiny"]),
        413,
    ),
    "Content-Length not a number": (Probe(method="POST", headers=[(b"content-length", b"12abc")], chunks=[b"x"]), 400),
    "oversized chunked body": (Probe(method="POST", chunks=CHUNKED_OVERSIZE), 413),
    "handler raising with a secret": (Probe(path=b"/boom"), 500),
}


@pytest.mark.parametrize(("probe", "status"), CASES.values(), ids=CASES.keys())
def test_bad_input_gets_a_clean_answer(
    send: Callable[[Probe], Reply],
    access: list[instrumentation.Event],
    caplog: pytest.LogCaptureFixture,
    probe: Probe,
    status: int,
) -> None:
    """Every hostile request gets the expected status, safe headers, and leaks no exception text."""
    caplog.set_level(logging.DEBUG)
    reply = send(probe)
    assert reply.status == status
    for name, value in reply.headers:
        assert "\r" not in name + value
        assert "\n" not in name + value
    assert reply.header("x-injected") is None
    request_id = reply.header("x-request-id")
    assert request_id is not None
    assert SAFE_ID.fullmatch(request_id)
    assert SECRET.encode() not in reply.body
    assert b"Traceback" not in reply.body
    assert SECRET not in caplog.text
    assert "Traceback" not in caplog.text
    [line] = access
    assert line.fields["status"] == status
    assert line.fields["request_id"] == request_id
    assert len(line.fields["path"]) <= 1024 + 3
    assert line.fields["path"].isprintable()


def test_malformed_request_ids_are_replaced(send: Callable[[Probe], Reply]) -> None:
    """An invalid, oversized or CR/LF-carrying request id is replaced by a generated one."""
    for bad in (b"not a valid id!", b"a" * 129, b"abc\r\nx-injected: yes", b""):
        reply = send(Probe(headers=[(b"x-request-id", bad)]))
        assert re.fullmatch(r"[0-9a-f]{32}", reply.header("x-request-id") or "")


def test_well_formed_request_id_is_echoed(send: Callable[[Probe], Reply]) -> None:
    """A well-formed request id (128 safe characters) comes back unchanged."""
    good = "req-1:2.3_" + "z" * 118
    reply = send(Probe(headers=[(b"x-request-id", good.encode())]))
    assert reply.header("x-request-id") == good


def test_forwarded_for_is_believed_only_from_trusted_proxies(
    send: Callable[[Probe], Reply], access: list[instrumentation.Event]
) -> None:
    """X-Forwarded-For is ignored from an untrusted peer and used from a trusted proxy."""
    send(Probe(headers=[(b"x-forwarded-for", b"198.51.100.1")]))
    send(Probe(headers=[(b"x-forwarded-for", b"198.51.100.1")], peer=TRUSTED_PEER))
    assert [event.fields["client"] for event in access] == [UNTRUSTED_PEER, "198.51.100.1"]


def test_error_body_is_small_json_with_the_request_id(send: Callable[[Probe], Reply]) -> None:
    """The shield's 500 body holds the error code and the request id and nothing else."""
    reply = send(Probe(path=b"/boom", headers=[(b"x-request-id", b"trace-me-42")]))
    assert json.loads(reply.body) == {"error": "internal_error", "request_id": "trace-me-42"}
    assert reply.header("content-type") == "application/json"
