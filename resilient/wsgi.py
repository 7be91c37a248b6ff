"""Safeguards at the edge of a WSGI service (Flask, Django, Falcon), for threaded servers.

One line mounts them all::

    from resilient.wsgi import ResilientWSGIMiddleware

    app.wsgi_app = ResilientWSGIMiddleware(app.wsgi_app, rate_limit="100/minute", timeout=10.0)  # Flask

The options and the behaviour are those of `resilient.asgi.ResilientMiddleware`, with one
difference imposed by WSGI: a worker thread cannot be interrupted. The deadline is
cooperative (see `ResilientWSGIMiddleware`).

The app runs in the caller's own context, as it would without the middleware (Flask's
preserved test contexts and ``stream_with_context`` rely on that). The middleware sets only
its own context variables (the request id, the deadline, the span) around the app call and
around each step of the response iterable, and resets them after each: nothing of its
leaks into the next request the worker thread serves, and nothing the app set is touched.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any, Final

from opentelemetry import context as otel_context

from resilient import deadline
from resilient._edge.core import (
    REJECTIONS,
    SHED_RETRY_AFTER,
    Edge,
    RoutePlan,
    accept_request_id,
    content_length_verdict,
    effective_timeout,
    rate_limit_headers,
)
from resilient._edge.options import RequestInfo, RouteOptions, build_options
from resilient._edge.telemetry import (
    WSGI_HEADERS,
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
from resilient._edge.wsgi_limits import BodyTooLargeError, LimitedInput, SyncGate
from resilient._edge.wsgi_request import Environ, Exchange, RequestState, Response, StartResponse
from resilient.instrumentation._hub import HUB

__all__ = ["ResilientWSGIMiddleware", "RouteOptions"]

WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]

_DEADLINE_ENVIRON: Final = "HTTP_" + deadline.HEADER.upper().replace("-", "_")
_SHED_HEADERS: Final = [("Retry-After", str(SHED_RETRY_AFTER))]


class ResilientWSGIMiddleware:
    """WSGI middleware adding request ids, spans, access logs, rate and load limits, deadlines.

    Options and responses are those of `resilient.asgi.ResilientMiddleware`.

    **Deadline (``timeout``, and the caller's deadline header).** A WSGI worker thread
    cannot be interrupted, so the deadline is cooperative:

    - it is published to the handler through `resilient.deadline` (``remaining()``), so
      nested ``@resilient`` calls and httpx transports clamp their timeouts and fail fast
      once it has passed;
    - when the handler hands back its response after the deadline (the status and headers
      have not gone out yet), the response is discarded (its iterable closed) and the
      client gets ``504``; the thread has been busy until then: the 504 comes no earlier
      than the handler returns;
    - when the deadline passes while a streamed body is being sent, the stream is cut at
      the next chunk and the server closes the connection;
    - a caller's budget that is already spent on arrival is answered ``504`` without calling
      the app.

    The in-flight slot is held until the response is complete (or closed), so a slow
    handler keeps counting against ``max_in_flight``: the limit bounds busy threads.

    **Unhandled exceptions** keep the host's propagation: the bare 500 is written through
    the server's ``write`` (so no server or debugger can replace it with a traceback page),
    then the original exception is re-raised, for the server to log and a test client to
    raise (``docs/middleware.md``, "The error shield").
    """

    def __init__(self, app: WSGIApp, /, **options: Any) -> None:
        self.app = app
        self.options = build_options(options)
        self._edge: Edge[SyncGate] = Edge(self.options, SyncGate)
        self._response_id_name = self.options.request_id_header
        self._on_success = self.options.ratelimit_headers_on_success
        self._legacy = self.options.legacy_ratelimit_headers
        self._router = self._edge.router
        self._request_id_environ = self._edge.request_id_environ
        self._tracing = self.options.tracing
        self._routed = bool(self.options.routes)  # else every request gets the default plan

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        if self._request_id_environ is None:
            request_id, headers = None, []
        else:
            request_id = accept_request_id(environ.get(self._request_id_environ))
            headers = [(self._response_id_name, request_id)]
        state = RequestState(self, environ, Exchange(environ, start_response, request_id, headers))
        ids = None if request_id is None else bind_request_id(request_id)
        try:
            return self._handle(state)
        finally:
            state.unbind_call()
            if ids is not None:
                unbind_request_id(ids)

    # --- the app call --------------------------------------------------------------------------

    def _handle(self, state: RequestState) -> Iterable[bytes]:
        """Check admission and call the app, under the shield (the request id is bound)."""
        ex = state.ex
        if self._tracing:
            self._start_span(state)
        response = Response(self, state)
        try:
            return self._protect(state, response)
        except Exception as exc:
            status = self.failure_status(exc, state)
            if status is not None and not ex.sent:
                return response.serve_own(ex.reject(status))
            state.fail(answer=status is None)
            raise

    def _protect(self, state: RequestState, response: Response) -> Iterable[bytes]:
        environ, ex = state.environ, state.ex
        plan = self._router.plan_for(environ.get("PATH_INFO", "")) if self._routed else self._router.default
        state.plan = plan
        ex.route_label = plan.label
        rejection = self._rejected(environ, plan, ex)
        if rejection is not None:
            return response.serve_own(rejection)
        gate = plan.gate
        if gate is not None:
            if not gate.acquire():
                emit_rejection(503, plan.label)
                return response.serve_own(ex.reject(503, _SHED_HEADERS))
            state.gate = gate
        if not self._enter_deadline(state, plan):
            emit_rejection(504, plan.label)
            return response.serve_own(ex.reject(504))
        return response.serve_app(self.app(environ, ex.start_response))

    def _rejected(self, environ: Environ, plan: RoutePlan[SyncGate], ex: Exchange) -> bytes | None:
        """Our response body when the request is refused before the app (400, 413, 429)."""
        limit = plan.max_body_size
        if limit is not None:
            declared = environ.get("CONTENT_LENGTH")
            if declared:
                verdict = content_length_verdict(declared, limit)
                if verdict is not None:
                    return ex.reject(verdict)
            else:
                limited = ex.limited_input = LimitedInput(environ.get("wsgi.input"), limit)
                environ["wsgi.input"] = limited
        limiter = plan.limiter
        if limiter is None:
            return None
        decision = limiter.hit(self._rate_key(environ, ex), want_state=self._on_success)
        if decision is None:
            return None
        limit_headers = [
            (name.decode("latin-1"), value.decode("latin-1"))
            for name, value in rate_limit_headers(decision, limiter.policy_header, legacy=self._legacy)
        ]
        if decision.admitted:
            ex.response_headers = [*ex.response_headers, *limit_headers]
            return None
        emit_rejection(429, plan.label, retry_after=round(decision.reset_after, 3))
        return ex.reject(429, limit_headers)

    def _enter_deadline(self, state: RequestState, plan: RoutePlan[SyncGate]) -> bool:
        """Publish the request's deadline in its context; False when the budget is already spent."""
        timeout = plan.timeout
        if self.options.honour_deadline_header:
            caller = state.environ.get(_DEADLINE_ENVIRON)
            if caller is not None:
                timeout = effective_timeout(timeout, deadline.parse_header(caller))
        if timeout is None:
            return True
        state.timeout = timeout
        instant = time.monotonic() + timeout
        outer = deadline._DEADLINE.get()
        if outer is not None and outer < instant:
            instant = outer
        # Set directly rather than through `deadline.scope`: `__call__` resets it when the app
        # returns, and each step of the response iterable sets it again (`RequestState.bind`).
        state.deadline_token = deadline._DEADLINE.set(instant)
        state.ex.deadline = instant
        return timeout > 0

    def _rate_key(self, environ: Environ, ex: Exchange) -> str:
        client = self._client(environ, ex)
        key_function = self._edge.key_function
        if key_function is None:
            return client
        info = RequestInfo(environ.get("REQUEST_METHOD", ""), _path_of(environ), client, _headers_of(environ))
        key = key_function(info)
        return client if key is None else str(key)

    def _client(self, environ: Environ, ex: Exchange) -> str:
        """The client address (the socket peer, or a forwarded hop from a trusted proxy)."""
        if ex.client is not None:
            return ex.client
        peer = str(environ.get("REMOTE_ADDR") or "unknown")
        clients = self._edge.clients
        if clients.enabled and clients.peer_is_trusted(peer):
            peer = clients.resolve(peer, environ.get("HTTP_FORWARDED"), environ.get("HTTP_X_FORWARDED_FOR"))
        ex.client = peer
        return peer

    # --- failures ----------------------------------------------------------------------------

    def failure_status(self, exc: Exception, state: RequestState) -> int | None:
        """Our status for the middleware's own refusal (504, 413); None for the app's exception.

        The app's exception is recorded here (log line, span), once; the caller re-raises it.
        """
        ex = state.ex
        if isinstance(exc, TimeoutError) and ex.deadline_passed():
            emit_rejection(504, ex.route_label)
            return 504
        if isinstance(exc, BodyTooLargeError) or ex.body_too_large:
            return 413
        ex.rejection = REJECTIONS[500]
        report_unhandled(exc, ex.request_id, ex.span)
        ex.status = 500  # what the client gets, from us or from the server; for the access log
        return None

    @property
    def error_shield(self) -> bool:
        """Whether the app's unhandled exceptions are answered with our bare 500."""
        return self.options.error_shield

    # --- tracing and the access log ----------------------------------------------------------

    def _start_span(self, state: RequestState) -> None:
        tracer = HUB.otel.tracer()
        if tracer is None:
            return
        environ, ex = state.environ, state.ex
        attributes = server_span_attributes(
            method=environ.get("REQUEST_METHOD", ""),
            path=_path_of(environ),
            scheme=environ.get("wsgi.url_scheme", "http"),
            client=self._client(environ, ex),
            protocol=str(environ.get("SERVER_PROTOCOL", "HTTP/1.1")).removeprefix("HTTP/"),
            user_agent=environ.get("HTTP_USER_AGENT"),
            host=environ.get("HTTP_HOST") or environ.get("SERVER_NAME"),
            request_id=ex.request_id,
        )
        ex.span, state.otel_token = start_server_span(tracer, attributes, environ, WSGI_HEADERS)
        state.otel_context = otel_context.get_current()  # made current again for each step of the body

    def finish(self, state: RequestState) -> None:
        """End the span, then write the access-log line (the span still current: trace ids join)."""
        environ, ex = state.environ, state.ex
        route = ex.route
        if ex.span is not None:
            end_server_span(ex.span, environ.get("REQUEST_METHOD", ""), route, ex.status)
        level = access_wanted(ex.status, ex.rejection) if self.options.access_log else None
        if level is not None:
            log_access(
                level,
                access_fields(
                    method=environ.get("REQUEST_METHOD", ""),
                    path=_path_of(environ),
                    query=environ.get("QUERY_STRING", ""),
                    route=route,
                    status=ex.status,
                    duration=(ex.ended or time.perf_counter()) - state.started,
                    sent=ex.sent_bytes,
                    client=self._client(environ, ex),
                    request_id=ex.request_id,
                    user_agent=environ.get("HTTP_USER_AGENT", ""),
                    rejection=ex.rejection,
                ),
                ex.span,
            )


# --- environ helpers -----------------------------------------------------------------------


def _path_of(environ: Environ) -> str:
    """The request path as the client sent it (WSGI carries bytes as latin-1 text)."""
    raw = str(environ.get("SCRIPT_NAME", "")) + str(environ.get("PATH_INFO", ""))
    try:
        return raw.encode("latin-1").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:
        return raw


def _headers_of(environ: Environ) -> dict[str, str]:
    """The request headers, lower-case names, from the ``HTTP_*`` and content keys."""
    headers = {key[5:].lower().replace("_", "-"): value for key, value in environ.items() if key.startswith("HTTP_")}
    for key, name in (("CONTENT_TYPE", "content-type"), ("CONTENT_LENGTH", "content-length")):
        if environ.get(key):
            headers[name] = environ[key]
    return headers
