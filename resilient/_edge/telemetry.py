"""Telemetry both middlewares share: the SERVER span, the access log, unhandled errors.

Split from `_edge.core` (ids, client keys, limits, bodies) and `_edge.options`: this part only
reports. It never decides what a client gets back.
"""

from __future__ import annotations

import functools
import logging
import traceback
from collections.abc import Mapping
from contextvars import ContextVar, Token
from typing import Any, Final

import structlog
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.propagators.textmap import Getter, TextMapPropagator
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from resilient._kernel.context import REQUEST_ID
from resilient.instrumentation._hub import HUB
from resilient.logging import _add_span_ids
from resilient.redaction import redact_text, redact_url

#: Log fields longer than this are cut: a 64 KiB path must not make a 64 KiB log line.
MAX_LOGGED_LENGTH: Final = 1024

# --- telemetry both middlewares share ----------------------------------------------------

EVENT_ACCESS: Final = "http.access"
EVENT_UNHANDLED: Final = "http.unhandled_error"
#: The `policy` of the middleware's events (access log, unhandled errors, rejections).
POLICY: Final = "http"


def loggable(text: str) -> str:
    """Text safe for a log line: undecodable bytes and control characters escaped, length cut."""
    if not text.isprintable():
        text = text.encode("utf-8", "backslashreplace").decode("ascii", "backslashreplace")
        text = text.encode("unicode_escape").decode("ascii")
    if len(text) > MAX_LOGGED_LENGTH:
        return text[:MAX_LOGGED_LENGTH] + "..."
    return text


def display_target(path: str, query: str) -> str:
    """The request target for logs and spans: path plus query, secret parameters masked."""
    if not query and "?" not in path and "#" not in path and "//" not in path:
        return loggable(path)  # nothing `redact_url` could mask: no query, fragment or userinfo
    return loggable(redact_url(f"{path}?{query}" if query else path))


_KNOWN_METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"})


def span_method(method: str) -> str:
    """The semantic-convention method: known methods as they are, anything else ``_OTHER``."""
    return method if method in _KNOWN_METHODS else "_OTHER"


def host_without_port(host: str) -> str:
    """``example.com:8080`` -> ``example.com``; ``[::1]:80`` -> ``[::1]``."""
    if host.startswith("["):
        return host[: host.find("]") + 1] if "]" in host else host
    return host.partition(":")[0]


# A service sees the same few user agents and host names over and over: each is cleaned once
# (a redaction scan costs 1-2 µs). A client sending many distinct ones only churns the cache.
@functools.lru_cache(maxsize=256)
def _logged_user_agent(user_agent: str) -> str:
    """A user agent as the access line and the span carry it: `loggable`, then `redact_text`."""
    return redact_text(loggable(user_agent))


@functools.lru_cache(maxsize=64)
def _server_address(host: str) -> str:
    """The span's ``server.address``: the Host header without its port, `loggable`."""
    return loggable(host_without_port(host))


# --- the request id in log lines -----------------------------------------------------------


def _structlog_variable(key: str) -> ContextVar[Any]:
    """The context variable behind ``structlog.contextvars.bind_contextvars(key=...)``.

    Found through the public API (a bind's token names its variable) and set directly per
    request: `bind_contextvars` and `reset_contextvars` build a dict and loop over keyword
    arguments each time, about 0.9 µs a request for one key.
    """
    tokens = structlog.contextvars.bind_contextvars(**{key: None})
    structlog.contextvars.reset_contextvars(**tokens)
    variable: ContextVar[Any] = tokens[key].var
    return variable


_STRUCTLOG_REQUEST_ID: Final = _structlog_variable("request_id")

RequestIdTokens = tuple[Token[str | None], Token[Any]]


def bind_request_id(request_id: str) -> RequestIdTokens:
    """Put the request id where log lines find it: `REQUEST_ID` and structlog's context."""
    return REQUEST_ID.set(request_id), _STRUCTLOG_REQUEST_ID.set(request_id)


def unbind_request_id(tokens: RequestIdTokens) -> None:
    """Undo `bind_request_id`."""
    REQUEST_ID.reset(tokens[0])
    _STRUCTLOG_REQUEST_ID.reset(tokens[1])


# --- the SERVER span ---------------------------------------------------------------------


class AsgiHeaderGetter(Getter[Mapping[bytes, bytes]]):
    """Reads propagation headers from the ASGI header map (lower-case byte names).

    The propagator asks for two or three names; decoding every header into a text dict
    first would cost more than the lookups.
    """

    def get(self, carrier: Mapping[bytes, bytes], key: str) -> list[str] | None:
        # Propagators ask in lower case; a text dict carrier (what this replaces) was no
        # more forgiving.
        value = carrier.get(key.encode("latin-1"))
        return None if value is None else [value.decode("latin-1")]

    def keys(self, carrier: Mapping[bytes, bytes]) -> list[str]:
        return [name.decode("latin-1") for name in carrier]

    @staticmethod
    def lacks_default_fields(carrier: Mapping[bytes, bytes]) -> bool:
        """Whether none of the headers OpenTelemetry's default propagators read is present."""
        return b"traceparent" not in carrier and b"baggage" not in carrier


class WsgiHeaderGetter(Getter[Mapping[str, Any]]):
    """Reads propagation headers from a WSGI environ (``HTTP_*`` keys), without copying it."""

    def get(self, carrier: Mapping[str, Any], key: str) -> list[str] | None:
        value = carrier.get("HTTP_" + key.upper().replace("-", "_"))
        return None if value is None else [str(value)]

    def keys(self, carrier: Mapping[str, Any]) -> list[str]:
        return [name[5:].lower().replace("_", "-") for name in carrier if name.startswith("HTTP_")]

    @staticmethod
    def lacks_default_fields(carrier: Mapping[str, Any]) -> bool:
        """Whether none of the headers OpenTelemetry's default propagators read is present."""
        return "HTTP_TRACEPARENT" not in carrier and "HTTP_BAGGAGE" not in carrier


HeaderGetter = AsgiHeaderGetter | WsgiHeaderGetter
ASGI_HEADERS: Final = AsgiHeaderGetter()
WSGI_HEADERS: Final = WsgiHeaderGetter()

# The propagators OpenTelemetry installs unless told otherwise (OTEL_PROPAGATORS), in order.
_DEFAULT_PROPAGATORS: Final = (TraceContextTextMapPropagator, W3CBaggagePropagator)
_last_textmap: tuple[object, bool] = (None, False)


def _is_default_textmap(textmap: TextMapPropagator) -> bool:
    """Whether the app's propagator is OpenTelemetry's default pair (remembered per propagator)."""
    global _last_textmap  # noqa: PLW0603 - a one-entry cache, replaced whole
    seen, verdict = _last_textmap
    if seen is not textmap:
        inner = getattr(textmap, "_propagators", None) if type(textmap) is CompositePropagator else None
        verdict = inner is not None and tuple(type(each) for each in inner) == _DEFAULT_PROPAGATORS
        _last_textmap = (textmap, verdict)
    return verdict


def extract_parent(carrier: Any, getter: HeaderGetter) -> otel_context.Context:
    """The caller's trace context through the app's propagator; a broken header starts a new trace."""
    textmap = propagate.get_global_textmap()
    if _is_default_textmap(textmap) and getter.lacks_default_fields(carrier):
        # Exactly what the default pair extracts from a request without their headers, with
        # no call into either (about 2 µs a request for the first hop of every trace).
        return otel_context.Context()
    try:
        return textmap.extract(carrier, getter=getter)
    except Exception:
        return otel_context.Context()


def server_span_attributes(
    *,
    method: str,
    path: str,
    scheme: str,
    client: str,
    protocol: str,
    user_agent: str | None,
    host: str | None,
    request_id: str | None,
) -> dict[str, Any]:
    """The SERVER span's start attributes (HTTP semantic conventions); optional ones only when known."""
    known = span_method(method)
    attributes: dict[str, Any] = {
        "http.request.method": known,
        "url.path": loggable(path),
        "url.scheme": scheme,
        "client.address": client,
        "network.protocol.version": protocol,
    }
    if known == "_OTHER":
        attributes["http.request.method_original"] = loggable(method)
    if user_agent is not None:
        attributes["user_agent.original"] = _logged_user_agent(user_agent)
    if host:
        attributes["server.address"] = _server_address(host)
    if request_id is not None:
        attributes["resilient.request_id"] = request_id
    return attributes


def start_server_span(
    tracer: Tracer, attributes: dict[str, Any], carrier: Any, getter: HeaderGetter
) -> tuple[Span, Token[Any]]:
    """Start the SERVER span (named after the method until the route is known) and make it current."""
    parent = extract_parent(carrier, getter)
    known = attributes["http.request.method"]
    name = "HTTP" if known == "_OTHER" else known
    span = tracer.start_span(name, context=parent, kind=SpanKind.SERVER, attributes=attributes)
    return span, otel_context.attach(trace.set_span_in_context(span, parent))


def end_server_span(span: Span, method: str, route: str | None, status: int) -> None:
    """Name the span ``METHOD route`` when the route is known, record the status, end it."""
    # One `set_attributes` call: the SDK takes its lock and cleans values once per call.
    attributes: dict[str, Any] = {}
    if route is not None:
        known = span_method(method)
        span.update_name(f"{'HTTP' if known == '_OTHER' else known} {route}")
        attributes["http.route"] = route
    if status:
        attributes["http.response.status_code"] = status
    if status >= 500:
        attributes["error.type"] = str(status)
        span.set_status(Status(StatusCode.ERROR))
    if attributes:
        span.set_attributes(attributes)
    span.end()


def report_unhandled(exc: BaseException, request_id: str | None, span: Span | None) -> None:
    """The full exception to the log (the hub redacts it) and the span (redacted here)."""
    HUB.emit(EVENT_UNHANDLED, POLICY, logging.ERROR, error=exc, request_id=request_id)
    if span is not None:
        stack = "".join(traceback.format_exception(exc))
        span.record_exception(
            exc,
            attributes={"exception.message": redact_text(str(exc)), "exception.stacktrace": redact_text(stack)},
        )


# --- the access log ----------------------------------------------------------------------


def access_level(status: int, rejection: str | None) -> int:
    """INFO below 500; WARNING for the middleware's own 503/504 (load it chose to shed); ERROR else."""
    if status < 500:
        return logging.INFO
    if rejection in {"overloaded", "deadline_exceeded"}:
        return logging.WARNING
    return logging.ERROR


def access_wanted(status: int, rejection: str | None) -> int | None:
    """The level of this request's access-log line, or None when no log or listener would see it."""
    level = logging.INFO if status < 500 else access_level(status, rejection)
    if HUB.listeners or HUB.logger.is_enabled_for(level):
        return level
    return None


def access_fields(
    *,
    method: str,
    path: str,
    query: str,
    route: str | None,
    status: int,
    duration: float,
    sent: int,
    client: str,
    request_id: str | None,
    user_agent: str,
    rejection: str | None,
) -> dict[str, Any]:
    """The fields of one access-log line, ``policy`` first as the hub orders them.

    Built only when `access_wanted` said yes; a dict straight away rather than a record
    turned into one later: it is what the logger takes.
    """
    fields: dict[str, Any] = {
        "policy": POLICY,
        "method": method if method in _KNOWN_METHODS else loggable(method),
        "path": display_target(path, query),
        "route": route,
        "status": status,
        "duration_ms": round(duration * 1_000_000) / 1000,  # to the microsecond; round(x, 3) costs 3x more
        "bytes": sent,
        "client": client,
        "request_id": request_id,
        "user_agent": _logged_user_agent(user_agent),
    }
    if rejection is not None:
        fields["rejection"] = rejection
    return fields


def log_access(level: int, fields: dict[str, Any], span: Span | None) -> None:
    """Emit the ``http.access`` event (`fields` from `access_fields`): one structured line per request.

    With listeners the event goes through the hub like any other. Without, the line is all
    that is left to do (``http.access`` feeds no metric, and the SERVER span carries its
    fields), so it goes straight to the logger: no `Event`, no second level check, and no
    redaction scan of the fields that are safe by construction (the user agent, the one field
    a client wrote freely, was redacted by `access_fields`). `span` is the request's
    SERVER span (None when tracing is off): its ids join the line to the trace, read from
    it rather than looked up in the current context.
    """
    if HUB.listeners:
        policy = fields.pop("policy")
        HUB.emit(EVENT_ACCESS, policy, level, **fields)
        return
    if span is None:  # an outer middleware's span may be current: the logger looks it up
        HUB.logger.log(level, EVENT_ACCESS, fields)
        return
    HUB.logger.log_joined(level, EVENT_ACCESS, _add_span_ids(fields, span))  # the request id is in `fields` already


def emit_rejection(status: int, route: str, **fields: Any) -> None:
    """Count a protection at work (metrics, listeners; a DEBUG log line) beside the access log."""
    HUB.emit(_REJECTION_EVENTS[status], POLICY, logging.DEBUG, route=route, **fields)


# The core's event names, so the built-in metrics count the middleware's rejections too.
_REJECTION_EVENTS: Final = {429: "ratelimit.rejected", 503: "bulkhead.rejected", 504: "timeout.exceeded"}
