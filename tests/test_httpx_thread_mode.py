"""resilient.httpx in sync thread mode: a response that arrives after its attempt timed out is closed.

httpx's read timeout is per socket read, so a server that keeps sending header lines can
deliver a response well after the attempt's deadline (to which the transport clamps
httpx's timeouts); the worker thread then holds a response nobody will read. The server
here drips header lines until the test releases it: no sleep stands in for a deadline.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest

from resilient import DeadlineExceededError, Timeout
from resilient.httpx import ResilientTransport

LOOPBACK = "127.0.0.1"
DRIP = 0.05  # seconds between two header lines of a held response: far below the attempt's read timeout
ATTEMPT = 1.0


class DrippingServer:
    """HTTP/1.1 on 127.0.0.1: ``/slow`` (200) and ``/slow-503`` drip header lines until `release` is set;
    ``/fast`` answers 200 at once."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self._listener = socket.create_server((LOOPBACK, 0))
        self._listener.settimeout(0.2)  # so that the accept loop sees `_stop`
        self.url = f"http://{LOOPBACK}:{self._listener.getsockname()[1]}"
        self._stop = threading.Event()
        self._closed = threading.Condition()
        self._slow_connections_closed = 0
        self._threads = [threading.Thread(target=self._accept, daemon=True)]

    def wait_for_closed_slow_connections(self, count: int, timeout: float) -> bool:
        """Wait until the client closed `count` connections that served a slow response."""
        with self._closed:
            return self._closed.wait_for(lambda: self._slow_connections_closed >= count, timeout)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(connection,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, connection: socket.socket) -> None:
        served_slow = False
        # A reset or a timed-out read ends the connection; no exception escapes the thread.
        with contextlib.suppress(OSError), connection, connection.makefile("rb") as reader:
            connection.settimeout(30)
            while not self._stop.is_set():
                request_line = reader.readline()
                if not request_line:
                    break  # the client closed the connection
                while reader.readline() not in (b"\r\n", b""):  # headers (GET: no body)
                    pass
                path = request_line.split()[1]
                connection.sendall(
                    b"HTTP/1.1 503 Service Unavailable\r\n" if path == b"/slow-503" else b"HTTP/1.1 200 OK\r\n"
                )
                if path.startswith(b"/slow"):
                    served_slow = True
                    while not self.release.wait(DRIP):  # `stop` sets it too
                        connection.sendall(b"x-drip: 1\r\n")
                if path == b"/slow-503":  # chunked: the transport keeps it unread (no small content-length to drain)
                    connection.sendall(b"transfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n")
                else:
                    connection.sendall(b"content-length: 2\r\n\r\nok")
        if served_slow:
            with self._closed:
                self._slow_connections_closed += 1
                self._closed.notify_all()

    def start(self) -> None:
        self._threads[0].start()

    def stop(self) -> None:
        self._stop.set()
        self.release.set()
        self._listener.close()
        for thread in self._threads:
            if thread.ident is not None:
                thread.join(timeout=10)


@contextmanager
def dripping_server() -> Iterator[DrippingServer]:
    """A `DrippingServer` on a free port, always stopped."""
    server = DrippingServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("path", "retry"),
    [
        ("/slow", False),  # a late 200: the worker is left holding a response
        ("/slow-503", 2),  # a late retryable 503, body unread: the worker is left holding a StatusFailure
    ],
)
def test_late_responses_in_thread_mode_go_back_to_the_pool(path: str, retry: int | bool) -> None:
    """Two responses arriving after their attempts timed out are closed: a 2-connection pool keeps serving."""
    with dripping_server() as server:
        inner = httpx.HTTPTransport(limits=httpx.Limits(max_connections=2))
        transport = ResilientTransport(
            inner, timeout=Timeout(attempt=ATTEMPT, sync_mode="thread"), retry=retry, breaker=False
        )
        with httpx.Client(transport=transport, base_url=server.url) as client:
            for _ in range(2):  # each holds one of the pool's two connections while it drips
                with pytest.raises(DeadlineExceededError):
                    client.get(path)
            server.release.set()  # both responses now complete, in workers whose callers left
            closed = server.wait_for_closed_slow_connections(2, timeout=10)
            statuses = [client.get("/fast").status_code for _ in range(3)]
    assert statuses == [200, 200, 200]
    assert closed
