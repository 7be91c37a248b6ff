"""One WSGI request: its state, its ``start_response``, its response iterable.

`RequestState` is what a request carries from `ResilientWSGIMiddleware.__call__` into the
`Response` handed to the server: the request's own context copy, its `Exchange`, its route
plan and in-flight slot. `Exchange` wraps the app's ``start_response`` (the status and
headers are held back until the body starts, so the response can still be replaced);
`Response` runs every step in the request's context, enforces the deadline between
chunks, counts the bytes sent and finishes the request once, however it ended.

The middleware is reached only through `_RequestOwner`, the two methods called back, so
this module never imports `resilient.wsgi`.
"""

from __future__ import annotations

import contextlib
import contextvars
import time
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Protocol

from resilient._edge.core import ERRORS, REJECTIONS, RoutePlan, error_body, error_headers
from resilient._edge.telemetry import emit_rejection, report_unhandled
from resilient._edge.wsgi_limits import LimitedInput, SyncGate
from resilient._kernel.errors import DeadlineExceededError

if TYPE_CHECKING:
    from opentelemetry.trace import Span

__all__ = ["Environ", "Exchange", "RequestState", "Response", "StartResponse"]

Environ = dict[str, Any]
ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]
Write = Callable[[bytes], object]
StartResponse = Callable[..., Write]
_StrHeaders = list[tuple[str, str]]

_STATUS_LINES: Final = {status: f"{status} {reason}" for status, (_, reason) in ERRORS.items()}


class _RequestOwner(Protocol):
    """What a request calls back in the middleware that admitted it (`ResilientWSGIMiddleware`)."""

    def failure_status(self, exc: Exception, state: RequestState) -> int | None: ...

    def finish(self, state: RequestState) -> None: ...


class Exchange:
    """One request's state: the app's deferred status and headers, and what went out."""

    # Class-level defaults rather than `__slots__`: a request assigns only the fields it
    # uses (a slotted instance must assign all of them up front, about 1 µs a request).
    route: str | None = None
    app_status: str | None = None
    app_headers: _StrHeaders = []  # noqa: RUF012 - replaced, never mutated
    status = 0
    sent = complete = False
    #: The request body's size-limited stream, when the body's length was not declared.
    limited_input: LimitedInput | None = None
    sent_bytes = 0
    deadline: float | None = None
    ended: float | None = None
    rejection: str | None = None
    client: str | None = None
    span: Span | None = None
    route_label = "default"
    write: Write | None = None

    def __init__(
        self, environ: Environ, start_response: StartResponse, request_id: str | None, headers: _StrHeaders
    ) -> None:
        self.environ = environ
        self._start_response = start_response
        self.request_id = request_id
        self.response_headers = headers

    @property
    def body_too_large(self) -> bool:
        """Whether the app read past the body-size limit."""
        limited = self.limited_input
        return limited is not None and limited.too_large

    def start_response(self, status: str, headers: _StrHeaders, exc_info: ExcInfo | None = None) -> Write:
        """The app's `start_response`: recorded, passed on only when the body starts (PEP 3333)."""
        if exc_info is not None and self.sent:
            raise exc_info[1].with_traceback(exc_info[2])
        self.app_status = status
        self.app_headers = headers
        # Flask clears ``werkzeug.request`` when its request context ends, after this call.
        self.route = _route_of(self.environ)
        return self._legacy_write

    def _legacy_write(self, data: bytes) -> None:
        """The imperative ``write`` some old apps use: it starts the response at once."""
        if not self.sent:
            self.send_app_start()
        if self.write is not None:
            self.sent_bytes += len(data)
            self.write(data)

    def replacement(self) -> int | None:
        """A status that must replace the app's response before it starts: 413, 504, or None."""
        # `body_too_large` and `deadline_passed` written out: this runs on every response.
        limited, deadline = self.limited_input, self.deadline
        if limited is not None and limited.too_large:
            return 413
        if deadline is not None and time.monotonic() >= deadline:
            return 504
        return None

    def send_app_start(self) -> None:
        """Pass the app's status and headers (plus ours) to the server."""
        if self.app_status is None:
            raise RuntimeError("the WSGI application did not call start_response")
        self.status = _status_code(self.app_status)
        self.sent = True
        self.write = self._start_response(self.app_status, [*self.app_headers, *self.response_headers])

    def reject(self, status: int, extra: _StrHeaders | None = None) -> bytes:
        """Start our own error response and return its body."""
        body = error_body(status, self.request_id)
        content = [(name.decode("latin-1"), value.decode("latin-1")) for name, value in error_headers(body)]
        self.rejection = self.rejection or REJECTIONS[status]
        self.status = status
        self.sent = True
        self.write = self._start_response(_STATUS_LINES[status], [*content, *self.response_headers, *(extra or ())])
        self.sent_bytes = len(body)
        return body

    def deadline_passed(self) -> bool:
        """Whether this request's deadline (if any) has passed."""
        return self.deadline is not None and time.monotonic() >= self.deadline


def _status_code(status: str) -> int:
    head = status[:3]
    return int(head) if head.isdigit() else 0


class Response:
    """The iterable handed to the server: the app's body, or our error body, then the finish.

    Every step runs in the request's context. The app's status and headers reach the server
    with its first chunk (or at the end of an empty body), so until then the response can
    still be replaced by a 413, 504 or 500.
    """

    def __init__(self, middleware: _RequestOwner, state: RequestState) -> None:
        self._middleware = middleware
        self._state = state
        self._own: bytes | None = None
        self._iterator: Iterator[bytes] | None = None
        self._app_iterable: Iterable[bytes] | None = None

    def serve_own(self, body: bytes) -> Response:
        """Make this response deliver our error body."""
        self._own = body
        return self

    def serve_app(self, iterable: Iterable[bytes]) -> Response:
        """Make this response deliver the app's iterable."""
        self._app_iterable = iterable
        self._iterator = iter(iterable)
        return self

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        return self._state.context.run(self._next)

    def _next(self) -> bytes:
        if self._own is not None:
            body, self._own = self._own, None
            return body
        if self._iterator is None:
            self._done()
            raise StopIteration
        if self._state.ex.sent:
            return self._next_streaming(self._iterator)
        return self._first(self._iterator)

    def _first(self, iterator: Iterator[bytes]) -> bytes:
        """The first chunk: decide whether the app's response goes out or is replaced."""
        ex = self._state.ex
        try:
            chunk: bytes | None = next(iterator)
        except StopIteration:
            chunk = None
        except Exception as exc:
            return self._fail_before_start(exc)
        status = ex.replacement()
        if status is not None:
            return self._replace(status)
        try:
            ex.send_app_start()
        except Exception as exc:
            return self._fail_before_start(exc)
        if chunk is None:
            self._done()
            raise StopIteration
        ex.sent_bytes += len(chunk)
        return chunk

    def _next_streaming(self, iterator: Iterator[bytes]) -> bytes:
        """A later chunk: the stream is cut (the server closes the connection) past the deadline."""
        ex = self._state.ex
        try:
            chunk = next(iterator)
        except StopIteration:
            self._done()
            raise
        except Exception as exc:
            self._state.failed_after_start(exc)
            raise
        if ex.deadline_passed():
            timeout = self._state.timeout or 0.0
            error = DeadlineExceededError(timeout, scope="total")
            self._state.failed_after_start(error)
            raise error
        ex.sent_bytes += len(chunk)
        return chunk

    def _replace(self, status: int) -> bytes:
        """Drop the app's response for our own (413 or 504); the app's iterable is closed."""
        self._close_app()
        if status == 504:
            emit_rejection(504, self._state.ex.route_label)
        return self._serve_error(status)

    def _fail_before_start(self, exc: Exception) -> bytes:
        self._close_app()
        status = self._middleware.failure_status(exc, self._state)
        if status is None:
            self._done()
            raise exc
        return self._serve_error(status)

    def _serve_error(self, status: int) -> bytes:
        self._iterator = None
        return self._state.ex.reject(status)

    def _close_app(self) -> None:
        iterable, self._app_iterable, self._iterator = self._app_iterable, None, None
        close = getattr(iterable, "close", None)
        if close is not None:
            close()

    def _done(self) -> None:
        ex = self._state.ex
        if not ex.complete:
            ex.complete = True
            ex.ended = time.perf_counter()
        self._state.finish()

    def close(self) -> None:
        """Close the app's iterable and finish the request (idempotent)."""
        self._state.context.run(self._close)

    def _close(self) -> None:
        try:
            self._close_app()
        finally:
            self._state.finish()

    def __del__(self) -> None:
        # PEP 3333 servers always close() the iterable; test clients that drop an unread
        # response do not. Finishing here keeps such a response from holding its in-flight
        # slot forever (CPython collects it as soon as it is dropped).
        if not self._state.finished:
            with contextlib.suppress(Exception):
                self._state.context.run(self._close)


class RequestState:
    """Everything one request needs after `__call__` returned: context, exchange, plan, span."""

    __slots__ = ("context", "environ", "ex", "finished", "gate", "middleware", "plan", "started", "timeout")

    def __init__(self, middleware: _RequestOwner, environ: Environ, ex: Exchange) -> None:
        self.middleware = middleware
        self.environ = environ
        self.ex = ex
        self.context = contextvars.copy_context()
        self.started = time.perf_counter()
        self.finished = False
        self.gate: SyncGate | None = None
        self.plan: RoutePlan[SyncGate] | None = None
        self.timeout: float | None = None

    def failed_after_start(self, exc: Exception) -> None:
        """An error once the response went out: logged; the server drops the connection."""
        if not isinstance(exc, DeadlineExceededError):
            self.ex.rejection = REJECTIONS[500]
            report_unhandled(exc, self.ex.request_id, self.ex.span)
        self.finish()

    def finish(self) -> None:
        """Release the slot, end the span, write the access log: once, however the request ended."""
        if self.finished:
            return
        self.finished = True
        gate, self.gate = self.gate, None
        try:
            self.middleware.finish(self)
        finally:
            if gate is not None:
                gate.release()


def _route_of(environ: Environ) -> str | None:
    """The matched rule of a Werkzeug-based app (Flask), found through ``werkzeug.request``.

    Read when the app calls ``start_response``: Flask resets the key when its request
    context ends, before the middleware gets control back.
    """
    request = environ.get("werkzeug.request")
    rule = getattr(getattr(request, "url_rule", None), "rule", None)
    return rule if isinstance(rule, str) else None
