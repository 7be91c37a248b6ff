"""Both middlewares with every feature on, and protocol-level drivers that time-box a request.

Requests are built as an ASGI scope or a WSGI environ, not through an HTTP client, so any
byte can be put in any header (clients and servers refuse CR, LF and most of the rest).
Each request runs under a bound: a hang fails the example instead of stalling the run.
"""

from __future__ import annotations

import asyncio
import io
import json
import threading
from collections.abc import Callable, Iterable, MutableMapping
from dataclasses import dataclass
from typing import Any, Final

from resilient import current_request_id, deadline
from resilient.asgi import ResilientMiddleware, RouteOptions
from resilient.wsgi import ResilientWSGIMiddleware

#: Seconds one request may take before the example counts as a hang (generous: loaded CI).
HANG_BOUND: Final = 20.0
TRUSTED_PEER: Final = "10.1.2.3"
MAX_BODY: Final = 1000
#: Every middleware feature on: request ids, tracing, access log, a rate limit (never reached),
#: an in-flight limit, a timeout, a body limit, trusted proxies, the deadline header, the shield.
ALL_ON: Final[dict[str, Any]] = {
    "rate_limit": "1000000/second",
    "max_in_flight": 1000,
    "timeout": 30.0,
    "max_body_size": MAX_BODY,
    "trusted_proxies": ["10.0.0.0/8", "::1/128"],
    "request_id": True,
    "tracing": True,
    "access_log": True,
    "legacy_ratelimit_headers": True,
    "honour_deadline_header": True,
    "error_shield": True,
    "routes": {"/api": RouteOptions(timeout=10.0)},
}


@dataclass(frozen=True)
class Reply:
    """What the client got: status, headers as sent (bytes), the body."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def header(self, name: bytes) -> bytes | None:
        return next((value for key, value in self.headers if key == name), None)


def _what_the_app_saw(body: bytes) -> bytes:
    """The app's answer: what it read and what the library told it (request id, deadline)."""
    left = deadline.remaining()
    return json.dumps({"read": len(body), "id": current_request_id(), "left": left is not None}).encode()


# --- ASGI --------------------------------------------------------------------------------


async def asgi_echo(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
    """A bare ASGI app: reads the whole body, answers 200 with what it saw."""
    body = b""
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        body += message.get("body", b"")
        if not message.get("more_body", False):
            break
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": _what_the_app_saw(body)})


def asgi_app(**options: Any) -> ResilientMiddleware:
    """The bare app under the ASGI middleware, every feature on unless `options` say otherwise."""
    return ResilientMiddleware(asgi_echo, **{**ALL_ON, **options})


def call_asgi(
    app: ResilientMiddleware,
    headers: Iterable[tuple[bytes, bytes]],
    *,
    body: bytes = b"",
    path: str = "/api/x",
    peer: str = TRUSTED_PEER,
) -> Reply:
    """One request through `app` as a server would send it; raises TimeoutError on a hang."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode("latin-1", "replace"),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"testserver"), *headers],
        "client": (peer, 40000),
        "server": ("testserver", 80),
    }
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> MutableMapping[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    async def run() -> None:
        await asyncio.wait_for(app(scope, receive, send), HANG_BOUND)

    asyncio.run(run())
    [start] = [message for message in sent if message["type"] == "http.response.start"]
    parts = [message for message in sent if message["type"] == "http.response.body"]
    assert parts, "no response body message"
    assert not parts[-1].get("more_body", False), "the response never ended"
    return Reply(start["status"], list(start.get("headers", [])), b"".join(part.get("body", b"") for part in parts))


# --- WSGI --------------------------------------------------------------------------------


def wsgi_echo(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    """A bare WSGI app: reads the body, answers 200 with what it saw."""
    body = environ["wsgi.input"].read()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [_what_the_app_saw(body)]


def wsgi_app(**options: Any) -> ResilientWSGIMiddleware:
    """The bare app under the WSGI middleware, every feature on unless `options` say otherwise."""
    return ResilientWSGIMiddleware(wsgi_echo, **{**ALL_ON, **options})


def wsgi_environ(headers: Iterable[tuple[bytes, bytes]], body: bytes, path: str, peer: str) -> dict[str, Any]:
    """A PEP 3333 environ; header values are latin-1 text, as servers decode them.

    As a server does, ``wsgi.input`` holds no more than a valid Content-Length declares (PEP
    3333: the app must not read past it, and the servers' streams end there).
    """
    environ: dict[str, Any] = {
        "REQUEST_METHOD": "POST",
        "SCRIPT_NAME": "",
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "SERVER_NAME": "testserver",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": peer,
        "HTTP_HOST": "testserver",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": io.StringIO(),
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    for name, value in headers:
        key = name.decode("latin-1").upper().replace("-", "_")
        environ[key if key in {"CONTENT_LENGTH", "CONTENT_TYPE"} else f"HTTP_{key}"] = value.decode("latin-1")
    declared = environ.get("CONTENT_LENGTH", "").strip(" \t")
    if declared.isascii() and declared.isdigit() and len(declared) < 10:
        environ["wsgi.input"] = io.BytesIO(body[: int(declared)])
    return environ


def call_wsgi(
    app: ResilientWSGIMiddleware,
    headers: Iterable[tuple[bytes, bytes]],
    *,
    body: bytes = b"",
    path: str = "/api/x",
    peer: str = TRUSTED_PEER,
) -> Reply:
    """One request through `app` in a worker thread (as a threaded server runs it), time-boxed."""
    environ = wsgi_environ(headers, body, path, peer)
    started: list[tuple[str, list[tuple[str, str]]]] = []
    outcome: list[bytes | BaseException] = []

    def start_response(status: str, response_headers: list[tuple[str, str]], _exc_info: Any = None) -> Any:
        started.append((status, response_headers))
        return lambda _data: None

    def serve() -> None:
        try:
            iterable = app(environ, start_response)
            try:
                outcome.append(b"".join(iterable))
            finally:
                close = getattr(iterable, "close", None)
                if close is not None:
                    close()
        except BaseException as exc:  # handed to the test thread below
            outcome.append(exc)

    worker = threading.Thread(target=serve, daemon=True)
    worker.start()
    worker.join(HANG_BOUND)
    if worker.is_alive():
        raise TimeoutError("the WSGI request did not finish")
    [result] = outcome
    if isinstance(result, BaseException):
        raise result
    status, response_headers = started[-1]
    encoded = [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in response_headers]
    return Reply(int(status[:3]), encoded, result)


Caller = Callable[..., Reply]
