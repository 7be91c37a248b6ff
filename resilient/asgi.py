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
and everything a request needs lives in one per-request `Exchange` (`_edge.asgi_exchange`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, MutableMapping
from contextvars import Token
from typing import TYPE_CHECKING, Any, Final

from opentelemetry import context as otel_context

from resilient import deadline
from resilient._edge.asgi_exchange import BodyTooLargeError, Exchange, Headers, Receive, Send
from resilient._edge.asgi_limits import NO_TIMER, AsyncGate, NoTimer, RequestTimer, TrioRequestTimer
from resilient._edge.core import (
    REJECTIONS,
    SHED_RETRY_AFTER,
    Edge,
    Limiter,
    RateDecision,
    RoutePlan,
    accept_request_id,
    content_length_verdict,
    effective_timeout,
    new_request_id,
    rate_limit_headers,
)
from resilient._edge.options import RequestInfo, RouteOptions, build_options
from resilient._edge.telemetry import (
    ASGI_HEADERS,
    access_fields,
    access_wanted,
    bind_request_id,
    emit_rejection,
    end_server_span,
    log_access,
    report_unhandled,
    server_span_attributes,
    start_server_span,
    unbind_request_id,
)
from resilient.instrumentation._hub import HUB

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer

__all__ = ["ResilientMiddleware", "RouteOptions"]

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_DEADLINE_HEADER: Final = deadline.HEADER.encode("latin-1")
_HeaderMap = dict[bytes, bytes]
_SHED_HEADERS: Final = [(b"retry-after", b"%d" % SHED_RETRY_AFTER)]
#: The middleware's own answer: a status and the headers that go with it.
_Refusal = tuple[int, Headers | None]


class ResilientMiddleware:
    """ASGI middleware adding request ids, spans, access logs, rate and load limits, deadlines.

    Options (all keyword, all validated here; see `resilient._edge.options.EdgeOptions` and
    ``docs/middleware.md``): ``request_id``, ``request_id_header``, ``tracing``,
    ``access_log``, ``rate_limit``, ``rate_limit_key``, ``rate_limit_algorithm``, ``routes``,
    ``legacy_ratelimit_headers``, ``ratelimit_headers_on_success``, ``max_in_flight``,
    ``max_in_flight_wait``, ``timeout``, ``honour_deadline_header``, ``max_body_size``,
    ``error_shield``, ``trusted_proxies``, ``storage``.
    """

    def __init__(self, app: ASGIApp, /, **options: Any) -> None:
        self.app = app
        self.options = build_options(options)
        self._edge: Edge[AsyncGate] = Edge(self.options, AsyncGate)
        self._request_id_header = self._edge.request_id_header
        self._response_id_name = self._edge.request_id_response_name
        self._on_success = self.options.ratelimit_headers_on_success
        self._legacy = self.options.legacy_ratelimit_headers
        # Read on every request: attributes of our own, not of the frozen options.
        self._tracing = self.options.tracing
        self._access_log = self.options.access_log
        self._honour_deadline = self.options.honour_deadline_header
        self._router = self._edge.router
        self._routed = bool(self.options.routes)  # else every request gets the default plan

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._not_http(scope, receive, send)
            return
        # One HTTP request. Set-up and clean-up are inline here rather than in a coroutine
        # of their own: each coroutine layer costs about 0.3 µs a request.
        started = time.perf_counter()
        root_path = scope.get("root_path", "")  # before a mount's router extends it
        headers = dict(scope.get("headers") or ())  # required by the spec, yet hosts serve scopes without
        ex = Exchange(receive, send)
        bound = None
        if self._request_id_header is not None:
            given = headers.get(self._request_id_header)
            request_id = ex.request_id = new_request_id() if given is None else accept_request_id(given)
            ex.response_headers = [(self._response_id_name, request_id.encode("ascii"))]
            bound = bind_request_id(request_id)
        tracer = HUB.otel.tracer() if self._tracing else None
        otel_token = None if tracer is None else self._start_span(tracer, scope, headers, ex)
        try:
            await self._protect(scope, headers, ex)
        finally:
            if ex.span is not None or self._access_log:
                self._finish(scope, headers, ex, started, root_path)
            if otel_token is not None:
                otel_context.detach(otel_token)
            if bound is not None:
                unbind_request_id(bound)

    async def _not_http(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Lifespan passes through; websockets too, with the request id bound for their log lines."""
        header = self._request_id_header
        if scope["type"] != "websocket" or header is None:
            await self.app(scope, receive, send)
            return
        bound = bind_request_id(accept_request_id(dict(scope.get("headers") or ()).get(header)))
        try:
            await self.app(scope, receive, send)
        finally:
            unbind_request_id(bound)

    # --- one HTTP request -------------------------------------------------------------------

    async def _protect(self, scope: Scope, headers: _HeaderMap, ex: Exchange) -> None:
        """Admission checks, then the app, all under the error shield."""
        try:
            plan = self._router.plan_for(scope["path"]) if self._routed else self._router.default
            ex.route_label = plan.label
            refusal = self._check_body(headers, plan, ex)
            limiter = plan.limiter
            if refusal is None and limiter is not None:
                key = self._rate_key(scope, headers, ex)
                want_state = self._on_success
                # In memory the hit is synchronous: no coroutine for it on every request.
                decision = (
                    await limiter.ahit(key, want_state=want_state)
                    if limiter.asynchronous
                    else limiter.hit(key, want_state=want_state)
                )
                refusal = None if decision is None else self._rate_verdict(decision, limiter, plan, ex)
            if refusal is not None:
                await ex.reject(*refusal)
                return
            gate = plan.gate
            if gate is not None and not (gate.try_acquire() or await gate.acquire_waiting()):
                emit_rejection(503, plan.label)
                await ex.reject(503, _SHED_HEADERS)
                return
            try:
                timer = self._arm_deadline(headers, plan, ex)
                try:
                    await self.app(scope, ex.receive if ex.body_limit is not None else ex.raw_receive, ex.send)
                except BaseException as error:  # a cancellation (asyncio's or trio's) is the timer's to judge
                    if timer.settle(error):
                        raise TimeoutError from None
                    raise
                finally:
                    timer.close()
            finally:
                if gate is not None:
                    gate.release()
        except Exception as exc:
            if await self._shield(exc, scope, ex):
                raise

    @staticmethod
    def _check_body(headers: _HeaderMap, plan: RoutePlan[AsyncGate], ex: Exchange) -> _Refusal | None:
        """400/413 for a bad or too large declared body; else arms the limit for `receive`."""
        limit = plan.max_body_size
        if limit is None:
            return None
        declared = headers.get(b"content-length")
        if declared is not None:
            verdict = content_length_verdict(declared, limit)
            if verdict is not None:
                return verdict, None
        ex.body_limit = limit
        return None

    def _rate_verdict(
        self, decision: RateDecision, limiter: Limiter, plan: RoutePlan[AsyncGate], ex: Exchange
    ) -> _Refusal | None:
        """429 with its headers over the rate limit; under it, the success headers are added."""
        limit_headers = rate_limit_headers(decision, limiter.policy_header, legacy=self._legacy)
        if decision.admitted:
            ex.response_headers = [*ex.response_headers, *limit_headers]
            return None
        emit_rejection(429, plan.label, retry_after=round(decision.reset_after, 3))
        return 429, limit_headers

    def _arm_deadline(
        self, headers: _HeaderMap, plan: RoutePlan[AsyncGate], ex: Exchange
    ) -> RequestTimer | TrioRequestTimer | NoTimer:
        """Start the request's deadline, if it has one (raises `TimeoutError` if already spent)."""
        timeout = plan.timeout
        if self._honour_deadline:
            caller = headers.get(_DEADLINE_HEADER)
            if caller is not None:
                timeout = effective_timeout(timeout, deadline.parse_header(caller))
        if timeout is None:
            return NO_TIMER
        now = time.monotonic()
        if timeout <= 0:
            ex.deadline = now
            raise TimeoutError  # the caller's budget is already spent: 504 without work
        instant = now + timeout
        outer = deadline._DEADLINE.get()
        if outer is not None and outer < instant:
            instant = outer
        ex.deadline = instant
        try:
            task = asyncio.current_task()
        except RuntimeError:  # no asyncio loop: trio (anyio's other backend)
            trio_timer = ex.timer = TrioRequestTimer(instant, now)
            return trio_timer
        if task is None:  # pragma: no cover - ASGI servers always run apps in a task
            raise RuntimeError("ResilientMiddleware must run inside an asyncio task")
        timer = ex.timer = RequestTimer(task, instant, now)
        return timer

    def _rate_key(self, scope: Scope, headers: _HeaderMap, ex: Exchange) -> str:
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

    def _client(self, scope: Scope, ex: Exchange) -> str:
        """The client address (the socket peer, or a forwarded hop from a trusted proxy)."""
        if ex.client is not None:
            return ex.client
        peer_info = scope.get("client")
        peer = str(peer_info[0]) if peer_info else "unknown"
        clients = self._edge.clients
        if clients.enabled and clients.peer_is_trusted(peer):
            raw = scope.get("headers") or ()
            peer = clients.resolve(peer, _joined(raw, b"forwarded"), _joined(raw, b"x-forwarded-for"))
        ex.client = peer
        return peer

    # --- the error shield --------------------------------------------------------------------

    async def _shield(self, exc: Exception, scope: Scope, ex: Exchange) -> bool:
        """Answer a failure; True when it must be re-raised.

        The middleware's own refusals (the deadline's `TimeoutError`, the body limit's
        `BodyTooLargeError`) are answered (504, 413) and end here, unless the response had
        started (then the re-raise makes the server drop the connection). The app's own
        exception is the host's: it is recorded once, answered with the bare 500 when no
        response has started, and always re-raised, as Starlette's `ServerErrorMiddleware`
        does, so the server logs it and a test client raises it. Two kinds are left to the
        host untouched: an HTTP answer in exception form (a ``status_code`` below 500, as
        Starlette's ``HTTPException`` and its body limit raise from outer layers), and any
        exception when the app registered its own 500 handler (Starlette's
        ``exception_handlers[500]`` or ``[Exception]``: its ``ServerErrorMiddleware`` answers).
        """
        if isinstance(exc, TimeoutError) and ex.deadline_passed():
            emit_rejection(504, ex.route_label)
            return await _refuse(ex, 504)
        if isinstance(exc, BodyTooLargeError) or ex.body_too_large:
            return await _refuse(ex, 413)
        if _is_http_answer(exc):
            return True
        ex.rejection = REJECTIONS[500]
        report_unhandled(exc, ex.request_id, ex.span)
        if self.options.error_shield and not ex.started and not _host_answers_500(scope):
            with contextlib.suppress(Exception):  # a client gone away: the app's error is what matters
                await ex.reject(500)
        return True

    # --- tracing and the access log ----------------------------------------------------------

    def _start_span(self, tracer: Tracer, scope: Scope, headers: _HeaderMap, ex: Exchange) -> Token[Any]:
        """Start the SERVER span continuing the caller's trace; the context token to detach."""
        server = scope.get("server")
        host = headers.get(b"host")
        user_agent = headers.get(b"user-agent")
        attributes = server_span_attributes(
            method=scope["method"],
            path=scope["path"],
            scheme=scope.get("scheme", "http"),
            client=ex.client or self._client(scope, ex),
            protocol=scope.get("http_version", "1.1"),
            user_agent=None if user_agent is None else user_agent.decode("latin-1"),
            host=host.decode("latin-1") if host is not None else (str(server[0]) if server else None),
            request_id=ex.request_id,
        )
        ex.span, token = start_server_span(tracer, attributes, headers, ASGI_HEADERS)
        return token

    def _finish(self, scope: Scope, headers: _HeaderMap, ex: Exchange, started: float, root: str) -> None:
        """End the span, then write the access-log line (the span still current: trace ids join)."""
        level = access_wanted(ex.status, ex.rejection) if self._access_log else None
        if ex.span is None and level is None:
            return
        route = _route_of(scope, root)
        if ex.span is not None:
            end_server_span(ex.span, scope["method"], route, ex.status)
        if level is not None:
            log_access(
                level,
                access_fields(
                    method=scope["method"],
                    path=scope["path"],
                    query=scope.get("query_string", b"").decode("latin-1"),
                    route=route,
                    status=ex.status,
                    duration=(ex.ended or time.perf_counter()) - started,
                    sent=ex.sent_bytes,
                    client=ex.client or self._client(scope, ex),
                    request_id=ex.request_id,
                    user_agent=headers.get(b"user-agent", b"").decode("latin-1"),
                    rejection=ex.rejection,
                ),
                ex.span,
            )


# --- helpers -------------------------------------------------------------------------------


def _is_http_answer(exc: Exception) -> bool:
    """An exception that is an HTTP answer for an outer handler (a ``status_code`` below 500)."""
    status = getattr(exc, "status_code", None)
    return type(status) is int and 400 <= status < 500


def _host_answers_500(scope: Scope) -> bool:
    """Whether the app registered its own handler for unhandled errors (Starlette, FastAPI)."""
    handlers = getattr(scope.get("app"), "exception_handlers", None)
    return isinstance(handlers, dict) and (500 in handlers or Exception in handlers)


async def _refuse(ex: Exchange, status: int) -> bool:
    """Answer with our own refusal; True when too late for it (a response started: re-raise)."""
    if ex.complete:
        return False
    if ex.started:
        return True
    await ex.reject(status)
    return False


def _joined(raw_headers: Any, name: bytes) -> str | None:
    """All values of a repeated header joined with commas (as RFC 9110 allows), or None."""
    values = [value.decode("latin-1") for key, value in raw_headers if key == name]
    return ", ".join(values) if values else None


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
