"""WSGI servers for tests: wsgiref on 127.0.0.1 and a free port (always shut down); a one-request driver."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from werkzeug.test import EnvironBuilder

LOOPBACK = "127.0.0.1"


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    request_queue_size = 128  # socketserver's 5 would drop a burst of connections (1 s SYN retries)


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, *_args: Any) -> None:
        """No per-request lines on stderr."""


@contextmanager
def serve_wsgi(app: Any) -> Iterator[str]:
    """Serve `app` on 127.0.0.1 and a free port; yields its base URL."""
    server = make_server(LOOPBACK, 0, app, server_class=_ThreadingServer, handler_class=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{LOOPBACK}:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@dataclass
class Served:
    """What one request driven by `serve_once` put on the wire, and what the server caught."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes
    #: The exception the app let out (a server logs it), or None.
    error: BaseException | None


def serve_once(app: Any, path: str = "/", headers: dict[str, str] | None = None) -> Served:
    """Drive one GET through `app` as a PEP 3333 server does, without a socket.

    Headers go out with the first body byte (or ``write``); an exception before that gets the
    server's own 500 (like wsgiref, waitress and gunicorn, whose pages are generic); after it,
    the exception is kept (a server logs it and closes the connection). The iterable is closed.
    """
    environ = EnvironBuilder(path=path, headers=list((headers or {}).items())).get_environ()
    pending: list[tuple[str, list[tuple[str, str]]]] = []
    sent: list[tuple[str, list[tuple[str, str]]]] = []
    body: list[bytes] = []

    def write(data: bytes) -> None:
        if not sent:
            sent.append(pending[-1])
        body.append(data)

    def start_response(status: str, response_headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        if exc_info is not None and sent:
            raise exc_info[1].with_traceback(exc_info[2])
        pending.append((status, response_headers))
        return write

    error: BaseException | None = None
    try:
        iterable = app(environ, start_response)
        try:
            for chunk in iterable:
                if chunk:
                    write(chunk)
            if not sent:
                write(b"")
        finally:
            close = getattr(iterable, "close", None)
            if close is not None:
                close()
    except Exception as exc:
        error = exc
        if not sent:
            sent.append(("500 Internal Server Error", [("Content-Type", "text/plain")]))
            body[:] = [b"A server error occurred."]
    status, response_headers = sent[0]
    return Served(int(status[:3]), response_headers, b"".join(body), error)
