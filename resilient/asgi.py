"""Safeguards at the edge of an ASGI service (FastAPI, Starlette, Litestar, Quart).

One line mounts them all::

    from resilient.asgi import ResilientMiddleware

    app.add_middleware(ResilientMiddleware, rate_limit="100/minute", timeout=10.0)   # FastAPI, Starlette
    app = ResilientMiddleware(app, rate_limit="100/minute")                          # any ASGI app

Each request gets, each switchable: a request id, a server span, one access-log line, a
rate limit (429), an in-flight limit (503), a deadline (504), a body-size limit (413) and an
error shield (500 without exception text). See ``docs/middleware.md``.

This is a plain ASGI class (no Starlette import, never ``BaseHTTPMiddleware``): the
response is streamed through untouched, ``lifespan`` and ``websocket`` scopes pass through,
and everything a request needs lives in one per-request `_Exchange`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, MutableMapping
from contextvars import Token
from typing import TYPE_CHECKING, Any, Final

import structlog
from opentelemetry import context as otel_context

from resilient import deadline
from resilient._context import REQUEST_ID
from resilient._edge import (
    REJECTIONS,
    SHED_RETRY_AFTER,
    Edge,
    RequestInfo,
    RouteOptions,
    RoutePlan,
    accept_request_id,
    build_options,
    content_length_verdict,
    effective_timeout,
    error_body,
    error_headers,
    rate_limit_headers,
)
from resilient._edge_telemetry import (
    AccessRecord,
    SpanStart,
    access_wanted,
    emit_rejection,
    end_server_span,
    log_access,
    report_unhandled,
    start_server_span,
)
from resilient._timeout import watchdog_for
from resilient.instrumentation._hub import HUB

if TYPE_CHECKING:
    from opentelemetry.trace import Span

__all__ = ["ResilientMiddleware", "RouteOptions"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_DEADLINE_HEADER: Final = deadline.HEADER.encode("latin-1")
_Headers = list[tuple[bytes, bytes]]
_HeaderMap = dict[bytes, bytes]
_SHED_HEADERS: Final = [(b"retry-after", b"%d" % SHED_RETRY_AFTER)]


class _BodyTooLargeError(Exception):
    """Raised inside the app by `receive` once the body passes `max_body_size`."""


class _AsyncGate:
    """The in-flight limit of one plan: a semaphore, waited on for at most `wait` seconds."""

    __slots__ = ("_semaphore", "_wait")

    def __init__(self, size: int, wait: float) -> None:
        self._semaphore = asyncio.Semaphore(size)
        self._wait = wait

    async def acquire(self) -> bool:
        """Take a slot: True when admitted, False when the wait ran out (or was zero)."""
        semaphore = self._semaphore
        if not semaphore.locked():
            await semaphore.acquire()  # a free slot: returns without suspending
            return True
        if self._wait <= 0:
            return False
        try:
            async with asyncio.timeout(self._wait):
                await semaphore.acquire()
        except TimeoutError:
            return False
        return True

    def release(self) -> None:
        """Give the slot back."""
        self._semaphore.release()


class _Timer:
    """The request deadline: `asyncio.timeout` semantics on the loop's shared deadline watchdog.

    `asyncio.timeout` costs several microseconds per request (a context manager, a timer
    handle, a reschedule); the core's `DeadlineWatchdog` keeps one timer per event loop, so
    arming is a set insertion. Same cancellation accounting: the task's cancel request is
    withdrawn (`uncancel`) when the watchdog fired, and only a cancellation it caused
    becomes a `TimeoutError`.
    """

    __slots__ = ("_cancelling", "_settled", "_task", "_watch", "_watchdog")

    def __init__(self, delay: float) -> None:
        task = asyncio.current_task()
        if task is None:  # pragma: no cover - ASGI servers always run apps in a task
            raise RuntimeError("ResilientMiddleware must run inside an asyncio task")
        self._task = task
        self._cancelling = task.cancelling()
        self._settled = False
        loop = asyncio.get_running_loop()
        self._watchdog = watchdog_for(loop)
        self._watch = self._watchdog.arm(task, loop.time() + delay)

    @property
    def expired(self) -> bool:
        """Whether the deadline passed (and the task was cancelled for it)."""
        return self._watch.fired

    def stop(self) -> None:
        """Disarm the timer (idempotent): the response is complete or the app returned."""
        self._watchdog.disarm(self._watch)

    def settle(self) -> bool:
        """After the app: withdraw our cancel request; True when it is what stopped the app."""
        if not self._watch.fired or self._settled:
            return False
        self._settled = True
        return self._task.uncancel() <= self._cancelling


class _Exchange:
    """One HTTP request's state: wraps `send` and `receive` and remembers what went out."""

    __slots__ = (
        "_send",
        "body_limit",
        "body_too_large",
        "client",
        "complete",
        "deadline",
        "ended",
        "raw_receive",
        "received",
        "rejection",
        "request_id",
        "response_headers",
        "route_label",
        "sent_bytes",
        "span",
        "started",
        "status",
        "swallow",
        "timer",
    )

    def __init__(
        self, receive: Receive, send: Send, request_id: str | None, headers: list[tuple[bytes, bytes]]
    ) -> None:
        self.raw_receive = receive
        self._send = send
        self.request_id = request_id
        self.response_headers = headers
        self.status = 0
        self.started = self.complete = self.swallow = self.body_too_large = False
        self.sent_bytes = self.received = 0
        self.body_limit: int | None = None
        self.deadline: float | None = None
        self.timer: _Timer | None = None
        self.ended: float | None = None
        self.rejection: str | None = None
        self.client: str | None = None
        self.span: Span | None = None
        self.route_label = "default"

    async def send(self, message: Message) -> None:
        """The app's `send`: adds our headers to the start, counts the body, notes the end."""
        kind = message["type"]
        if kind == "http.response.start":
            if self.body_too_large:
                # The app answered a body it could not read in full (FastAPI turns our error
                # into a 400): the client must see the 413, and the rest is dropped.
                self.swallow = True
                await self.reject(413)
                return
            self.status = message["status"]
            self.started = True
            if self.response_headers:
                message = {**message, "headers": [*message.get("headers", ()), *self.response_headers]}
        elif kind == "http.response.body":
            if self.swallow:
                return
            self.sent_bytes += len(message.get("body", b""))
            if not message.get("more_body", False):
                self._response_done()
        await self._send(message)

    def _response_done(self) -> None:
        """The response is complete: lift the deadline so background tasks run to their end."""
        self.complete = True
        self.ended = time.perf_counter()
        if self.timer is not None:
            self.timer.stop()
            # Background tasks run after the response in this task: nested `@resilient` calls
            # there must not inherit a budget that was the response's. `_run` restores the
            # previous value on exit.
            deadline._DEADLINE.set(None)

    async def receive(self) -> Message:
        """The app's `receive` under a body limit: raises once the body grows past it."""
        message = await self.raw_receive()
        if message["type"] == "http.request" and self.body_limit is not None:
            self.received += len(message.get("body", b""))
            if self.received > self.body_limit:
                self.body_too_large = True
                raise _BodyTooLargeError
        return message

    async def reject(self, status: int, extra: list[tuple[bytes, bytes]] | None = None) -> None:
        """Answer for the app: a small JSON error body, our headers and `extra` ones."""
        body = error_body(status, self.request_id)
        headers = [*error_headers(body), *self.response_headers, *(extra or ())]
        self.rejection = self.rejection or REJECTIONS[status]
        self.status = status
        self.started = True
        await self._send({"type": "http.response.start", "status": status, "headers": headers})
        await self._send({"type": "http.response.body", "body": body, "more_body": False})
        self.sent_bytes = len(body)
        self.complete = True
        self.ended = time.perf_counter()

    def deadline_passed(self) -> bool:
        """Whether this request's deadline (if any) has fired."""
        if self.timer is not None and self.timer.expired:
            return True
        return self.deadline is not None and time.monotonic() >= self.deadline


class ResilientMiddleware:
    """ASGI middleware adding request ids, spans, access logs, rate and load limits, deadlines.

    Options (all keyword, all validated here; see `resilient._edge.EdgeOptions` and
    ``docs/middleware.md``): ``request_id``, ``request_id_header``, ``tracing``,
    ``access_log``, ``rate_limit``, ``rate_limit_key``, ``rate_limit_algorithm``, ``routes``,
    ``legacy_ratelimit_headers``, ``ratelimit_headers_on_success``, ``max_in_flight``,
    ``max_in_flight_wait``, ``timeout``, ``honour_deadline_header``, ``max_body_size``,
    ``error_shield``, ``trusted_proxies``, ``storage``.
    """

    def __init__(self, app: ASGIApp, /, **options: Any) -> None:
        self.app = app
        self.options = build_options(options)
        self._edge: Edge[_AsyncGate] = Edge(self.options, _AsyncGate)
        self._request_id_header = self._edge.request_id_header
        self._response_id_name = self._edge.request_id_response_name
        self._on_success = self.options.ratelimit_headers_on_success
        self._legacy = self.options.legacy_ratelimit_headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "websocket" and self._request_id_header is not None:
            await self._websocket(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    # --- request id and log context ---------------------------------------------------------

    def _request_id_of(self, headers: _HeaderMap) -> str | None:
        header = self._request_id_header
        return None if header is None else accept_request_id(headers.get(header))

    @staticmethod
    def _bind(request_id: str | None) -> tuple[Token[str | None], Any] | None:
        """Put the request id where log lines find it; undone by `_unbind`."""
        if request_id is None:
            return None
        return REQUEST_ID.set(request_id), structlog.contextvars.bind_contextvars(request_id=request_id)

    @staticmethod
    def _unbind(bound: tuple[Token[str | None], Any] | None) -> None:
        if bound is not None:
            REQUEST_ID.reset(bound[0])
            structlog.contextvars.reset_contextvars(**bound[1])

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Websockets pass through untouched, with the request id bound for their log lines."""
        bound = self._bind(self._request_id_of(dict(scope["headers"])))
        try:
            await self.app(scope, receive, send)
        finally:
            self._unbind(bound)

    # --- one HTTP request -------------------------------------------------------------------

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        root_path = scope.get("root_path", "")
        headers = dict(scope["headers"])
        request_id = self._request_id_of(headers)
        ex = _Exchange(receive, send, request_id, self._response_headers(request_id))
        bound = self._bind(request_id)
        otel_token = self._start_span(scope, headers, ex)
        try:
            await self._protect(scope, headers, ex)
        finally:
            self._finish(scope, headers, ex, started, root_path)
            if otel_token is not None:
                otel_context.detach(otel_token)
            self._unbind(bound)

    def _response_headers(self, request_id: str | None) -> list[tuple[bytes, bytes]]:
        if request_id is None:
            return []
        return [(self._response_id_name, request_id.encode("ascii"))]

    async def _protect(self, scope: Scope, headers: _HeaderMap, ex: _Exchange) -> None:
        """Admission checks, then the app, all under the error shield."""
        try:
            plan = self._edge.router.plan_for(scope["path"])
            ex.route_label = plan.label
            if await self._rejected(scope, headers, plan, ex):
                return
            gate = plan.gate
            if gate is None:
                await self._run(scope, headers, plan, ex)
            elif await gate.acquire():
                try:
                    await self._run(scope, headers, plan, ex)
                finally:
                    gate.release()
            else:
                emit_rejection(503, plan.label)
                await ex.reject(503, _SHED_HEADERS)
        except Exception as exc:
            if await self._shield(exc, ex):
                raise

    async def _rejected(self, scope: Scope, headers: _HeaderMap, plan: RoutePlan[_AsyncGate], ex: _Exchange) -> bool:
        """Answer 400/413 for a bad or too large declared body, 429 over the rate limit."""
        limit = plan.max_body_size
        if limit is not None:
            verdict = content_length_verdict(headers.get(b"content-length"), limit)
            if verdict is not None:
                await ex.reject(verdict)
                return True
            ex.body_limit = limit
        limiter = plan.limiter
        if limiter is None:
            return False
        key = self._rate_key(scope, headers, ex)
        if limiter.asynchronous:
            decision = await limiter.ahit(key, want_state=self._on_success)
        else:
            decision = limiter.hit(key, want_state=self._on_success)
        if decision is None:
            return False
        limit_headers = rate_limit_headers(decision, limiter.policy_header, legacy=self._legacy)
        if decision.admitted:
            ex.response_headers = [*ex.response_headers, *limit_headers]
            return False
        emit_rejection(429, plan.label, retry_after=round(decision.reset_after, 3))
        await ex.reject(429, limit_headers)
        return True

    async def _run(self, scope: Scope, headers: _HeaderMap, plan: RoutePlan[_AsyncGate], ex: _Exchange) -> None:
        """Call the app, under the request's deadline when it has one."""
        receive = ex.receive if ex.body_limit is not None else ex.raw_receive
        timeout = plan.timeout
        if self.options.honour_deadline_header:
            timeout = effective_timeout(timeout, deadline.parse_header(headers.get(_DEADLINE_HEADER)))
        if timeout is None:
            await self.app(scope, receive, ex.send)
            return
        if timeout <= 0:
            ex.deadline = time.monotonic()
            raise TimeoutError  # the caller's budget is already spent: 504 without work
        instant = time.monotonic() + timeout
        outer = deadline.current()
        if outer is not None and outer < instant:
            instant = outer
        ex.deadline = instant
        token = deadline._DEADLINE.set(instant)
        timer = ex.timer = _Timer(instant - time.monotonic())
        try:
            await self.app(scope, receive, ex.send)
        except asyncio.CancelledError:
            if timer.settle():
                raise TimeoutError from None
            raise
        finally:
            timer.stop()
            timer.settle()  # the app may have swallowed our cancellation: withdraw it anyway
            deadline._DEADLINE.reset(token)

    def _rate_key(self, scope: Scope, headers: _HeaderMap, ex: _Exchange) -> str:
        client = self._client(scope, ex)
        key_function = self._edge.key_function
        if key_function is None:
            return client
        info = RequestInfo(
            scope["method"],
            scope["path"],
            client,
            {name.decode("latin-1"): value.decode("latin-1") for name, value in headers.items()},
        )
        key = key_function(info)
        return client if key is None else str(key)

    def _client(self, scope: Scope, ex: _Exchange) -> str:
        """The client address (the socket peer, or a forwarded hop from a trusted proxy)."""
        if ex.client is not None:
            return ex.client
        peer_info = scope.get("client")
        peer = str(peer_info[0]) if peer_info else "unknown"
        clients = self._edge.clients
        if clients.enabled and clients.peer_is_trusted(peer):
            raw = scope["headers"]
            peer = clients.resolve(peer, _joined(raw, b"forwarded"), _joined(raw, b"x-forwarded-for"))
        ex.client = peer
        return peer

    # --- the error shield --------------------------------------------------------------------

    async def _shield(self, exc: Exception, ex: _Exchange) -> bool:
        """Answer a failure; True when it must be re-raised (the server then drops the connection)."""
        if isinstance(exc, TimeoutError) and ex.deadline_passed():
            status = 504
            emit_rejection(504, ex.route_label)
        elif isinstance(exc, _BodyTooLargeError) or ex.body_too_large:
            status = 413
        else:
            status = 500
            ex.rejection = REJECTIONS[500]
            report_unhandled(exc, ex.request_id, ex.span)
            if not self.options.error_shield:
                return True
        if ex.complete:
            return False  # the client has its whole response; the error is logged
        if ex.started:
            return True
        await ex.reject(status)
        return False

    # --- tracing and the access log ----------------------------------------------------------

    def _start_span(self, scope: Scope, headers: _HeaderMap, ex: _Exchange) -> Token[Any] | None:
        """Start the SERVER span continuing the caller's trace; the context token to detach."""
        tracer = HUB.otel.tracer() if self.options.tracing else None
        if tracer is None:
            return None
        server = scope.get("server")
        host = headers.get(b"host")
        start = SpanStart(
            method=scope["method"],
            path=scope["path"],
            scheme=scope.get("scheme", "http"),
            client=self._client(scope, ex),
            protocol=scope.get("http_version", "1.1"),
            user_agent=_text(headers.get(b"user-agent")),
            host=_text(host) if host is not None else (str(server[0]) if server else None),
            request_id=ex.request_id,
        )
        carrier = {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]}
        ex.span, token = start_server_span(tracer, start, carrier)
        return token

    def _finish(self, scope: Scope, headers: _HeaderMap, ex: _Exchange, started: float, root: str) -> None:
        """End the span, then write the access-log line (the span still current: trace ids join)."""
        route = _route_of(scope, root)
        if ex.span is not None:
            end_server_span(ex.span, scope["method"], route, ex.status)
        if self.options.access_log and access_wanted(ex.status, ex.rejection):
            log_access(
                AccessRecord(
                    method=scope["method"],
                    path=scope["path"],
                    query=scope.get("query_string", b"").decode("latin-1"),
                    route=route,
                    status=ex.status,
                    duration=(ex.ended or time.perf_counter()) - started,
                    sent=ex.sent_bytes,
                    client=self._client(scope, ex),
                    request_id=ex.request_id,
                    user_agent=_text(headers.get(b"user-agent")) or "",
                    rejection=ex.rejection,
                )
            )


# --- helpers -------------------------------------------------------------------------------


def _joined(raw_headers: Any, name: bytes) -> str | None:
    """All values of a repeated header joined with commas (as RFC 9110 allows), or None."""
    values = [value.decode("latin-1") for key, value in raw_headers if key == name]
    return ", ".join(values) if values else None


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("latin-1")


def _route_of(scope: Scope, root_path: str) -> str | None:
    """The matched route template Starlette/FastAPI left in the scope, mount prefix included."""
    route = scope.get("route")
    if route is None:
        return None
    template = getattr(route, "path_format", None) or getattr(route, "path", None)
    if not isinstance(template, str):
        return None
    mounted = scope.get("root_path", "")
    prefix = mounted[len(root_path) :] if isinstance(mounted, str) and mounted.startswith(root_path) else ""
    return prefix + template
