"""The per-request engine behind `resilient.httpx`: one logical request, decided once for both twins.

The transports in `resilient.httpx` only do I/O (send, read, close); everything they
decide per request — which policy it runs under, which host breaker it consults, how its
timeouts fit the deadline, which response is retried and for how long, what the span and
the log line say, which headers travel with it — is decided here (httpx's `BaseClient`
split). The options are compiled in `httpx._options`, per-host state lives in `httpx._hosts`,
HTTP facts in `httpx._rules`.
"""

from __future__ import annotations

import contextvars
import functools
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import httpx
import opentelemetry.metrics._internal as _metrics_state
import opentelemetry.trace as _trace_state
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.context.contextvars_context import ContextVarsRuntimeContext
from opentelemetry.propagators.textmap import Setter
from opentelemetry.trace import SpanKind, Status, StatusCode

from resilient._kernel.clock import CLOCK
from resilient._kernel.context import REQUEST_ID
from resilient._kernel.errors import DeadlineExceededError
from resilient._strategies.breaker import CLOSED, BreakerRuntime
from resilient.deadline import _DEADLINE, HEADER, format_header
from resilient.httpx._errors import as_httpx_error
from resilient.httpx._hosts import NO_HOST, Host, Hosts
from resilient.httpx._rules import (
    DEFAULT_PORTS,
    IDEMPOTENCY_KEY,
    KNOWN_METHODS,
    NOT_THE_HOSTS_FAULT,
    REPLAYABLE_STREAMS,
    StatusFailure,
    counts_as_failure,
    parse_retry_after,
)
from resilient.instrumentation._hub import HUB, outcome_of
from resilient.instrumentation._otel import CallObservation, _error_type, _redacted_exception
from resilient.redaction import redact_url

if TYPE_CHECKING:
    from resilient._engine.compiled import CompiledPolicy
    from resilient.httpx._options import Options

__all__ = ["EVENT_REQUEST", "Engine", "Exchange"]

EVENT_REQUEST = "http.request"
REQUEST_ID_HEADER = "x-request-id"

#: Read on every request to decide whether telemetry is needed at all.
_OTEL = HUB.otel
#: The context variables' getters, bound once: Python 3.11 calls a method of an imported
#: name through a new bound method object each time.
_request_id = REQUEST_ID.get
_deadline = _DEADLINE.get


class Exchange:
    """Per-request state, in the request's own locals: never on the shared transport."""

    __slots__ = (
        "attempts",
        "caller_limits",
        "compiled",
        "host",
        "obs",
        "pending",
        "request",
        "span",
        "started",
        "token",
    )

    def __init__(self, request: httpx.Request, compiled: CompiledPolicy, host: Host) -> None:
        self.request = request
        self.compiled = compiled
        self.host = host
        self.attempts = 0
        self.pending: httpx.Response | None = None
        # (the caller's httpx timeouts, add the deadline header?), read at the first clamped
        # attempt: most requests have no deadline.
        self.caller_limits: tuple[dict[str, float | None] | None, bool] | None = None
        self.span: trace.Span | None = None
        self.token: object | None = None
        self.obs: CallObservation | None = None
        # The drivers' clock, read once: handed to them as the call's start, and the log's duration.
        self.started = CLOCK.monotonic()


class Engine:
    """Every decision of a transport, sync or async: the twins add only the I/O."""

    def __init__(self, options: Options) -> None:
        self.options = options
        self.label = options.label
        self.hosts = Hosts(options.template, options.max_hosts, options.breaker_scope)
        self._needs_host = options.template is not None or options.per_host_limit
        self._statuses = options.retry_statuses
        self._retry_response = options.retry_response
        self._retrying = options.retrying if options.retrying.retry is not None else None
        self._once = options.once
        self._idempotent = options.retry_methods
        #: Statuses handed over as they are, decided in one test: below 500, neither retried nor
        #: counted by the breaker (429), and none at all when a predicate judges every response.
        self._passed = (
            frozenset(range(100, 500)) - options.retry_statuses - {429}
            if options.retry_response is None
            else frozenset()
        )
        #: Only a breaker that counts slow calls needs each attempt's start.
        self.times_attempts = options.template is not None and options.template.slow_call_duration is not None

    # -- before

    def begin(self, request: httpx.Request) -> Exchange:
        """Choose the policy, find the host, start the span and add the propagation headers."""
        host = self.hosts.get(request.url) if self._needs_host else NO_HOST
        compiled = self._once
        if (  # an idempotent method, tested here: one call fewer for most requests
            self._retrying is not None
            and (request.method in self._idempotent or self._made_idempotent(request))
            and isinstance(request.stream, REPLAYABLE_STREAMS)
        ):
            compiled = self._retrying
        exchange = Exchange(request, compiled, host)
        if (  # the drivers' "anyone listening?" test, inlined: the idle flag and two identity tests
            _OTEL.idle
            and _trace_state._TRACER_PROVIDER is _OTEL._tracer_provider
            and _metrics_state._METER_PROVIDER is _OTEL._meter_provider
        ):
            # No SDK: no span, no meter; an empty context and no request id need no call at all.
            context, request_id = _current_context(), _request_id()
            if context or request_id is not None:
                _propagate(request.headers, context, request_id)
        else:
            self._observe(exchange, _OTEL.tracer(), _OTEL.metrics())
        return exchange

    def _observe(self, exchange: Exchange, tracer: trace.Tracer | None, metrics: Any) -> None:
        context = self._start_span(exchange, tracer) if tracer is not None else _current_context()
        _propagate(exchange.request.headers, context, _request_id())
        if metrics is not None:
            exchange.obs = CallObservation(self.label, None, metrics)

    def _made_idempotent(self, request: httpx.Request) -> bool:
        """May a request with a method outside `retry_methods` be sent twice? (Its body must replay too.)"""
        return self.options.retry_non_idempotent or IDEMPOTENCY_KEY in request.headers

    def _start_span(self, exchange: Exchange, tracer: trace.Tracer) -> otel_context.Context:
        """Start the CLIENT span with every attribute known now (one SDK call) and make it current."""
        request = exchange.request
        url = request.url
        method = request.method
        attributes: dict[str, Any] = {
            "http.request.method": method if method in KNOWN_METHODS else "_OTHER",
            "url.full": _redacted(url),
            "server.address": url.host,
            "server.port": url.port or DEFAULT_PORTS.get(url.scheme, 0),
        }
        if method not in KNOWN_METHODS:
            attributes["http.request.method_original"] = method
        span = tracer.start_span(method, kind=SpanKind.CLIENT, attributes=attributes)
        exchange.span = span
        context = trace.set_span_in_context(span)
        exchange.token = otel_context.attach(context)
        return context

    # -- each attempt

    def before_attempt(self, exchange: Exchange) -> bool:
        """Admit the attempt through the host's breaker and fit it into the deadline; True for a probe."""
        exchange.attempts += 1
        deadline = _deadline()
        if deadline is not None:  # the drivers' clock: a test may have swapped it
            _fit_into_deadline(exchange, deadline - CLOCK.monotonic(), self.label)
        breaker = exchange.host.breaker
        # A closed in-process breaker admits without a call; a shared one always asks Redis.
        if breaker is None or (breaker.state is CLOSED and not breaker.shared):
            return False
        return breaker.acquire(self.label)

    def judge(self, exchange: Exchange, response: httpx.Response, probe: bool, started: float) -> StatusFailure | None:
        """Record the response with the breaker; a `StatusFailure` to raise when it should be retried."""
        if response.status_code in self._passed:
            # The common case: a success, and a clean breaker needs no news.
            breaker = exchange.host.breaker
            if breaker is not None and (probe or breaker.reports_success):
                self._breaker_success(breaker, probe, started)
            return None
        return self._judge_status(exchange, response, probe, started)

    def _judge_status(
        self, exchange: Exchange, response: httpx.Response, probe: bool, started: float
    ) -> StatusFailure | None:
        status = response.status_code
        retrying = exchange.compiled.retry
        # On the last attempt there is nothing to retry: the response is the answer, handed
        # over as it came (no "retries exhausted" warning for an upstream's 503).
        retry = (
            retrying is not None
            and exchange.attempts < retrying.attempts
            and (status in self._statuses or (self._retry_response is not None and self._retry_response(response)))
        )
        failed = counts_as_failure(status)
        breaker = exchange.host.breaker
        if not (failed or retry):
            if breaker is not None and (probe or breaker.reports_success):
                self._breaker_success(breaker, probe, started)
            return None
        failure = StatusFailure(response, _retry_after_of(response))
        if breaker is not None:
            if failed:
                breaker.on_failure(failure, probe=probe, label=self.label)
            else:
                self._breaker_success(breaker, probe, started)
        if not retry:
            return None
        if failure.retry_after is not None and failure.retry_after > self.options.max_retry_after:
            return None  # the server asks for longer than we may wait: hand its answer over
        return failure

    def _breaker_success(self, breaker: BreakerRuntime, probe: bool, started: float) -> None:
        duration = time.monotonic() - started if breaker.timed else 0.0
        breaker.on_success(probe=probe, duration=duration, label=self.label)

    def attempt_failed(self, exchange: Exchange, error: BaseException, probe: bool) -> None:
        """Count a transport error against the host's breaker (cancellation gives the probe back).

        httpx's errors about the request itself (`NOT_THE_HOSTS_FAULT`) say nothing of the host.
        """
        breaker = exchange.host.breaker
        if breaker is None:
            return
        if isinstance(error, Exception) and not isinstance(error, NOT_THE_HOSTS_FAULT):
            breaker.on_failure(error, probe=probe, label=self.label)
        else:
            breaker.on_abandon(probe)

    # -- after

    def finish(self, exchange: Exchange, response: httpx.Response) -> None:
        """Close the span, count the call and log one line for a request that got a response."""
        status = response.status_code
        failed = status >= 500 or status in self._statuses
        # An upstream's 5xx handed back is the upstream's news, not a warning per request.
        level = logging.INFO if failed else logging.DEBUG
        if HUB.listeners or HUB.logger.is_enabled_for(level):  # else the span carries every field
            self._log(exchange, level, None, status)
        if exchange.span is not None:
            attributes: dict[str, Any] = {"http.response.status_code": status}
            if status >= 400:
                attributes["error.type"] = str(status)
            _end_span(exchange, attributes, Status(StatusCode.ERROR) if status >= 400 else None)
        if exchange.obs is not None:  # `error.type` on the metric too: the status, as on the span
            named = StatusFailure(response, None) if status >= 400 else None
            exchange.obs.end("failure" if failed else "success", named, {})

    def fail(self, exchange: Exchange, error: BaseException) -> BaseException:
        """Close the span, count the call and log one line for a request that raised; the error to raise.

        That is `error` itself, or for a `resilient` rejection its httpx twin (`httpx._errors`).
        """
        error = as_httpx_error(error, exchange.request)
        if isinstance(error, Exception):
            outcome, rejection = outcome_of(error)
            # A rejection (open circuit, rate limit) is logged where it happens, once per
            # transition; a line per fail-fast request would flood the logs during an outage.
            level = logging.DEBUG if outcome == "rejected" else logging.WARNING
            if HUB.listeners or HUB.logger.is_enabled_for(level):
                self._log(exchange, level, error, None)
        else:
            outcome, rejection = "cancelled", None
        span = exchange.span
        if span is not None:
            error_type = _error_type(error)
            span.record_exception(error, attributes=_redacted_exception(error))
            _end_span(exchange, {"error.type": error_type}, Status(StatusCode.ERROR, error_type))
        if exchange.obs is not None:
            extra = {"resilient.rejection": rejection} if outcome == "rejected" else {}
            exchange.obs.end(outcome, None if outcome == "cancelled" else error, extra)
        return error

    def _log(self, exchange: Exchange, level: int, error: BaseException | None, status: int | None) -> None:
        request = exchange.request
        HUB.emit(
            EVENT_REQUEST,
            self.label,
            level,
            error,
            method=request.method,
            url=_redacted(request.url),
            status=status,
            duration=round(CLOCK.monotonic() - exchange.started, 6),
            attempts=exchange.attempts,
        )


def _end_span(exchange: Exchange, attributes: dict[str, Any], status: Status | None) -> None:
    """Set the closing attributes in one SDK call, end the span and restore the caller's context."""
    span: trace.Span = exchange.span  # type: ignore[assignment]
    attributes["resilient.attempts"] = exchange.attempts
    if exchange.attempts > 1:
        attributes["http.request.resend_count"] = exchange.attempts - 1
    span.set_attributes(attributes)
    if status is not None:
        span.set_status(status)
    span.end()
    otel_context.detach(exchange.token)  # type: ignore[arg-type]


# A client mostly calls the same few URLs; bounded, as URLs carrying ids never repeat
# (the same memo as the middleware's user-agent redaction).
_redact_url_text = functools.lru_cache(maxsize=256)(redact_url)


def _redacted(url: httpx.URL) -> str:
    """`redact_url` of the URL, remembered."""
    return _redact_url_text(str(url))


def _retry_after_of(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    return parse_retry_after(value) if value is not None else None


def _fit_into_deadline(exchange: Exchange, remaining: float, label: str) -> None:
    """Clamp httpx's connect/read/write/pool timeouts to what is left, and tell the server."""
    if remaining <= 0:
        raise DeadlineExceededError(0.0, scope="inherited", policy=label)
    request = exchange.request
    if exchange.caller_limits is None:  # first clamped attempt: remember what the caller set
        exchange.caller_limits = (request.extensions.get("timeout"), HEADER not in request.headers)
    base, add_header = exchange.caller_limits
    if base is not None:
        request.extensions["timeout"] = {
            phase: remaining if limit is None or limit > remaining else limit for phase, limit in base.items()
        }
    else:
        request.extensions["timeout"] = dict.fromkeys(("connect", "read", "write", "pool"), remaining)
    if add_header:
        request.headers[HEADER] = format_header(remaining)


def _context_getter() -> Callable[[], otel_context.Context]:
    """`otel_context.get_current`, or the ContextVar it reads: one C call instead of two Python calls.

    The runtime context is private: any other runtime (``OTEL_PYTHON_CONTEXT``), or an API
    release without it, goes through the public function.
    """
    runtime = getattr(otel_context, "_RUNTIME_CONTEXT", None)
    variable = getattr(runtime, "_current_context", None)
    if type(runtime) is ContextVarsRuntimeContext and isinstance(variable, contextvars.ContextVar):
        return variable.get
    return otel_context.get_current


_current_context = _context_getter()


def _propagate(headers: httpx.Headers, context: otel_context.Context, request_id: str | None) -> None:
    """Add trace context (the app's propagator) and the request id, never replacing the caller's headers.

    `context` holds the request's CLIENT span, or is the current (maybe remote) context.
    """
    if context:  # an empty context (no span, no baggage) has nothing to propagate: skip the 2 µs
        propagate.inject(headers, context=context, setter=_KEEP_CALLERS)
    if request_id is not None and REQUEST_ID_HEADER not in headers:
        headers[REQUEST_ID_HEADER] = request_id


class _SetUnlessPresent(Setter[httpx.Headers]):
    """The propagator writes straight into the request's headers, keeping any the caller set."""

    def set(self, carrier: httpx.Headers, key: str, value: str) -> None:
        if key not in carrier:
            carrier[key] = value


_KEEP_CALLERS = _SetUnlessPresent()
