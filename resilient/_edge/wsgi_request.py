"""One WSGI request: its state, its ``start_response``, its response iterable.

`RequestState` is what a request carries from `ResilientWSGIMiddleware.__call__` into the
`Response` handed to the server: its `Exchange`, its route plan and in-flight slot, and the
values of the middleware's context variables. `Exchange` wraps the app's ``start_response``
(the status and headers are held back until the body starts, so the response can still be
replaced); `Response` sets those variables around every step (in whatever context the
server iterates in, never a copy of its own), enforces the deadline between chunks, counts
the bytes sent and finishes the request once, however it ended.

The middleware is reached only through `_RequestOwner`, the two methods called back, so
this module never imports `resilient.wsgi`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Protocol

from opentelemetry import context as otel_context

from resilient import deadline
from resilient._edge.core import ERRORS, REJECTIONS, RoutePlan, error_body, error_headers
from resilient._edge.telemetry import (
    RequestIdTokens,
    bind_request_id,
    emit_rejection,
    report_unhandled,
    unbind_request_id,
)
from resilient._edge.wsgi_limits import LimitedInput, SyncGate
from resilient._kernel.errors import DeadlineExceededError

if TYPE_CHECKING:
    from contextvars import Token

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

    @property
    def error_shield(self) -> bool: ...

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

    def answer_now(self, status: int) -> None:
        """Send our error response at once, through the server's ``write``, before an error is re-raised.

        Written rather than returned: the exception then reaches the server (or test client)
        with the response already sent, so the server logs it and closes the connection
        instead of answering with its own error page (PEP 3333: ``start_response`` with
        ``exc_info`` re-raises once the headers are out).
        """
        body = self.reject(status)
        self.complete = True
        self.ended = time.perf_counter()
        if self.write is not None:
            self.write(body)

    def deadline_passed(self) -> bool:
        """Whether this request's deadline (if any) has passed."""
        return self.deadline is not None and time.monotonic() >= self.deadline


def _status_code(status: str) -> int:
    head = status[:3]
    return int(head) if head.isdigit() else 0


class Response:
    """The iterable handed to the server: the app's body, or our error body, then the finish.

    Every step runs with the request's context variables set. The app's status and headers reach the server
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
        state = self._state
        tokens = state.bind()
        try:
            return self._next()
        finally:
            state.unbind(tokens)

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
            refusal = self._fail_before_start(exc)
            if refusal is None:
                raise
            return refusal
        status = ex.replacement()
        if status is not None:
            return self._replace(status)
        try:
            ex.send_app_start()
        except Exception as exc:
            refusal = self._fail_before_start(exc)
            if refusal is None:
                raise
            return refusal
        if chunk is None:
            self._done()
            raise StopIteration
        ex.sent_bytes += len(chunk)
        return chunk

    def _fail_before_start(self, exc: Exception) -> bytes | None:
        """The body failed before it started: our refusal's body (413, 504), or None for the
        app's own exception, answered with the bare 500 and for the caller to re-raise."""
        self._close_app()
        state = self._state
        status = self._middleware.failure_status(exc, state)
        if status is None:
            state.fail(answer=True)
            return None
        self._iterator = None
        return state.ex.reject(status)

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
        state = self._state
        tokens = state.bind()
        try:
            self._close()
        finally:
            state.unbind(tokens)

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
                self.close()


#: The tokens of one `RequestState.bind`: the request id's, the deadline's, the span context's.
_Tokens = tuple["RequestIdTokens | None", "Token[float | None] | None", "Token[Any] | None"]


class RequestState:
    """Everything one request needs after `__call__` returned: exchange, plan, slot, span context."""

    __slots__ = (
        "deadline_token",
        "environ",
        "ex",
        "finished",
        "gate",
        "middleware",
        "otel_context",
        "otel_token",
        "plan",
        "started",
        "timeout",
    )

    def __init__(self, middleware: _RequestOwner, environ: Environ, ex: Exchange) -> None:
        self.middleware = middleware
        self.environ = environ
        self.ex = ex
        self.started = time.perf_counter()
        self.finished = False
        self.gate: SyncGate | None = None
        self.plan: RoutePlan[SyncGate] | None = None
        self.timeout: float | None = None
        #: Set while the app is called; reset by `unbind_call` when it returns.
        self.deadline_token: Token[float | None] | None = None
        self.otel_token: Token[Any] | None = None
        #: The OpenTelemetry context holding the SERVER span, made current again for each step.
        self.otel_context: otel_context.Context | None = None

    def unbind_call(self) -> None:
        """The app returned: reset the deadline and the span context set for its call."""
        if self.otel_token is not None:
            otel_context.detach(self.otel_token)
            self.otel_token = None
        if self.deadline_token is not None:
            deadline._DEADLINE.reset(self.deadline_token)
            self.deadline_token = None

    def bind(self) -> _Tokens:
        """Set the middleware's context variables for one step of the body, in the current context."""
        ex = self.ex
        request_id, instant, context = ex.request_id, ex.deadline, self.otel_context
        return (
            None if request_id is None else bind_request_id(request_id),
            None if instant is None else deadline._DEADLINE.set(instant),
            None if context is None else otel_context.attach(context),
        )

    @staticmethod
    def unbind(tokens: _Tokens) -> None:
        """Undo `bind`: the variables are back to what they were before the step."""
        ids, instant, context = tokens
        if context is not None:
            otel_context.detach(context)
        if instant is not None:
            deadline._DEADLINE.reset(instant)
        if ids is not None:
            unbind_request_id(ids)

    def fail(self, *, answer: bool) -> None:
        """The request ends with an exception the caller re-raises (recorded already).

        With ``answer`` (the app's own exception) and the shield on, the bare 500 is sent
        first if nothing went out yet; either way the request is finished.
        """
        ex = self.ex
        try:
            if answer and not ex.sent and self.middleware.error_shield:
                with contextlib.suppress(Exception):  # a client gone away: the app's error is what matters
                    ex.answer_now(500)
        finally:
            self.finish()

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
