"""Telemetry both middlewares share: the SERVER span, the access log, unhandled errors.

Split from `_edge` (options, ids, client keys, limits, bodies): this part only reports. It
never decides what a client gets back.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Mapping
from contextvars import Token
from dataclasses import dataclass
from typing import Any, Final

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer

from resilient.instrumentation._hub import HUB
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
    target = f"{path}?{query}" if query else path
    return loggable(redact_url(target))


_KNOWN_METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"})


def span_method(method: str) -> str:
    """The semantic-convention method: known methods as they are, anything else ``_OTHER``."""
    return method if method in _KNOWN_METHODS else "_OTHER"


def host_without_port(host: str) -> str:
    """``example.com:8080`` -> ``example.com``; ``[::1]:80`` -> ``[::1]``."""
    if host.startswith("["):
        return host[: host.find("]") + 1] if "]" in host else host
    return host.partition(":")[0]


def extract_parent(carrier: Mapping[str, str]) -> otel_context.Context:
    """The caller's trace context through the app's propagator; a broken header starts a new trace."""
    try:
        return propagate.extract(carrier)
    except Exception:
        return otel_context.Context()


@dataclass(frozen=True, slots=True, kw_only=True)
class SpanStart:
    """What the SERVER span of a request is started with (HTTP semantic conventions)."""

    method: str
    path: str
    scheme: str
    client: str
    protocol: str
    user_agent: str | None
    host: str | None
    request_id: str | None

    def attributes(self) -> dict[str, Any]:
        """The span's start attributes; optional ones only when known."""
        attributes: dict[str, Any] = {
            "http.request.method": span_method(self.method),
            "url.path": loggable(self.path),
            "url.scheme": self.scheme,
            "client.address": self.client,
            "network.protocol.version": self.protocol,
        }
        if span_method(self.method) == "_OTHER":
            attributes["http.request.method_original"] = loggable(self.method)
        if self.user_agent is not None:
            attributes["user_agent.original"] = loggable(self.user_agent)
        if self.host:
            attributes["server.address"] = loggable(host_without_port(self.host))
        if self.request_id is not None:
            attributes["resilient.request_id"] = self.request_id
        return attributes


def start_server_span(tracer: Tracer, start: SpanStart, carrier: Mapping[str, str]) -> tuple[Span, Token[Any]]:
    """Start the SERVER span (named after the method until the route is known) and make it current."""
    parent = extract_parent(carrier)
    method = span_method(start.method)
    name = "HTTP" if method == "_OTHER" else method
    span = tracer.start_span(name, context=parent, kind=SpanKind.SERVER, attributes=start.attributes())
    return span, otel_context.attach(trace.set_span_in_context(span, parent))


def end_server_span(span: Span, method: str, route: str | None, status: int) -> None:
    """Name the span ``METHOD route`` when the route is known, record the status, end it."""
    if route is not None:
        known = span_method(method)
        span.update_name(f"{'HTTP' if known == '_OTHER' else known} {route}")
        span.set_attribute("http.route", route)
    if status:
        span.set_attribute("http.response.status_code", status)
    if status >= 500:
        span.set_attribute("error.type", str(status))
        span.set_status(Status(StatusCode.ERROR))
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


def access_level(status: int, rejection: str | None) -> int:
    """INFO below 500; WARNING for the middleware's own 503/504 (load it chose to shed); ERROR else."""
    if status < 500:
        return logging.INFO
    if rejection in {"overloaded", "deadline_exceeded"}:
        return logging.WARNING
    return logging.ERROR


@dataclass(frozen=True, slots=True, kw_only=True)
class AccessRecord:
    """One access-log line's raw material; turned into fields only when someone listens."""

    method: str
    path: str
    query: str
    route: str | None
    status: int
    duration: float
    sent: int
    client: str
    request_id: str | None
    user_agent: str
    rejection: str | None


def access_wanted(status: int, rejection: str | None) -> bool:
    """Whether an access-log line at this status would reach a log or a listener."""
    return bool(HUB.listeners) or HUB.logger.is_enabled_for(access_level(status, rejection))


def log_access(record: AccessRecord) -> None:
    """Emit the ``http.access`` event: one structured line per request."""
    fields: dict[str, Any] = {
        "method": loggable(record.method),
        "path": display_target(record.path, record.query),
        "route": record.route,
        "status": record.status,
        "duration_ms": round(record.duration * 1000, 3),
        "bytes": record.sent,
        "client": record.client,
        "request_id": record.request_id,
        "user_agent": loggable(record.user_agent),
    }
    if record.rejection is not None:
        fields["rejection"] = record.rejection
    HUB.emit(EVENT_ACCESS, POLICY, access_level(record.status, record.rejection), **fields)


def emit_rejection(status: int, route: str, **fields: Any) -> None:
    """Count a protection at work (metrics, listeners; a DEBUG log line) beside the access log."""
    HUB.emit(_REJECTION_EVENTS[status], POLICY, logging.DEBUG, route=route, **fields)


# The core's event names, so the built-in metrics count the middleware's rejections too.
_REJECTION_EVENTS: Final = {429: "ratelimit.rejected", 503: "bulkhead.rejected", 504: "timeout.exceeded"}
