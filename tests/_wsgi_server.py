"""A real threaded WSGI server for tests: wsgiref on 127.0.0.1, a free port, always shut down."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

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
