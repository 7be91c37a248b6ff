"""The decisions behind `resilient.httpx`: HTTP facts, options and the per-request engine.

The transports in `resilient.httpx` only do I/O (send, read, close); everything they
decide — which policy a request runs under, which host breaker it consults, how its
timeouts fit the deadline, which response is retried and for how long, what the span and
the log line say — is decided here, once for both twins (httpx's `BaseClient` split).
Helpers are plain functions over httpx objects, cheap enough for every request.
"""

from __future__ import annotations

import dataclasses
import email.utils
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from datetime import UTC
from typing import TYPE_CHECKING, Any, Literal, TypedDict, cast

import httpx
import opentelemetry.metrics._internal as _metrics_state
import opentelemetry.trace as _trace_state
import tenacity
from httpx._multipart import MultipartStream
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.propagators.textmap import Setter
from opentelemetry.trace import SpanKind, Status, StatusCode

from resilient._breaker import _REGISTRY, CLOSED, BreakerRuntime, CircuitBreaker, breaker_for, forget_breaker
from resilient._clock import CLOCK
from resilient._context import REQUEST_ID
from resilient._errors import DeadlineExceededError
from resilient._policy import (
    BulkheadOption,
    Policy,
    RateLimitOption,
    RetryOption,
    TimeoutOption,
    _as_bulkhead,
    _as_rate_limit,
    _as_retry,
    _as_timeout,
)
from resilient._retry import Retry
from resilient._validate import check_int, check_name, check_seconds
from resilient.deadline import _DEADLINE, HEADER, format_header
from resilient.instrumentation._hub import HUB, outcome_of
from resilient.instrumentation._otel import CallObservation, _error_type, _redacted_exception
from resilient.redaction import redact_url

#: Read on every request to decide whether telemetry is needed at all.
_OTEL = HUB.otel

if TYPE_CHECKING:
    from resilient._compiled import CompiledPolicy
    from resilient._ratelimit import RateLimit

__all__ = [
    "DEFAULT_MAX_HOSTS",
    "DEFAULT_MAX_RETRY_AFTER",
    "DEFAULT_PORTS",
    "EVENT_REQUEST",
    "IDEMPOTENCY_KEY",
    "IDEMPOTENT_METHODS",
    "KNOWN_METHODS",
    "OPTION_NAMES",
    "RETRY_STATUSES",
    "TRANSIENT_ERRORS",
    "Engine",
    "Exchange",
    "StatusFailure",
    "TransportOptions",
    "body_is_replayable",
    "build_options",
    "counts_as_failure",
    "normalise_methods",
    "normalise_statuses",
    "parse_retry_after",
]

#: Methods that may be repeated without changing the outcome (RFC 9110 section 9.2.2).
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
#: Statuses that say "try again later" rather than "this request is wrong".
RETRY_STATUSES = frozenset({429, 502, 503, 504})
#: The header that makes a non-idempotent request safe to repeat (draft-ietf-httpapi-idempotency-key-header).
IDEMPOTENCY_KEY = "idempotency-key"
#: Methods the HTTP semantic conventions name; others are reported as ``_OTHER``.
KNOWN_METHODS = frozenset({"CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE"})
DEFAULT_PORTS = {"http": 80, "https": 443}

DEFAULT_NAME = "httpx"
DEFAULT_MAX_RETRY_AFTER = 60.0
DEFAULT_MAX_HOSTS = 1024
EVENT_REQUEST = "http.request"
REQUEST_ID_HEADER = "x-request-id"

RateLimitScope = Literal["host", "client"]
BreakerTemplate = CircuitBreaker | bool | None
ResponsePredicate = Callable[[httpx.Response], bool]

#: Transport failures worth another attempt of an idempotent request: the connection could
#: not be made or broke, or a connect/read/write/pool timeout fired. Protocol violations by
#: our side (`LocalProtocolError`, `UnsupportedProtocol`) and decoding errors are bugs, not weather.
TRANSIENT_ERRORS: tuple[type[Exception], ...] = (
    httpx.TimeoutException,
    httpx.NetworkError,
    httpx.RemoteProtocolError,
)

_MAX_RETRY_AFTER_TEXT = 64  # longer values are not a delay or a date: ignore them


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds a ``Retry-After`` value asks to wait, rounded up to the millisecond.

    Accepts delta-seconds (``"120"``, leniently ``"1.5"``) and an HTTP-date (waited until,
    measured against `now`, a `time.time()` value). Absent, malformed, negative or
    non-finite values give None; a date in the past gives 0.0.
    """
    if value is None:
        return None
    text = value.strip()
    if not text or len(text) > _MAX_RETRY_AFTER_TEXT:
        return None
    seconds = _delta_seconds(text)
    if seconds is None:
        seconds = _seconds_until_date(text, time.time() if now is None else now)
    if seconds is None:
        return None
    # Round up so that we never wait less than the server asked (dotnet/extensions#7001).
    return math.ceil(seconds * 1000) / 1000


def _delta_seconds(text: str) -> float | None:
    if not text[0].isdigit():
        return None
    try:
        seconds = float(text)
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) else None


def _seconds_until_date(text: str, now: float) -> float | None:
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # "-0000" parses zone-less; HTTP-dates are always GMT
        when = when.replace(tzinfo=UTC)
    return max(when.timestamp() - now, 0.0)


def counts_as_failure(status: int) -> bool:
    """Does this status count against the host's circuit breaker? 5xx and 429 do; other 4xx do not."""
    return status >= 500 or status == 429


_REPLAYABLE_STREAMS = (httpx.ByteStream, MultipartStream)  # a tuple: `A | B` would build a union per call


def body_is_replayable(request: httpx.Request) -> bool:
    """Can the request body be sent again? Bytes and multipart (files are re-read from 0) can.

    A body given as an iterator or generator is consumed by the first attempt, so such a
    request is sent at most once.
    """
    return isinstance(request.stream, _REPLAYABLE_STREAMS)


def normalise_statuses(field: str, statuses: object) -> frozenset[int]:
    """Validate a set of HTTP status codes (100-599)."""
    if isinstance(statuses, str | bytes) or not isinstance(statuses, Iterable):
        raise TypeError(f"{field} must be a set of HTTP status codes, got {statuses!r}")
    values = frozenset(statuses)
    bad = sorted(repr(code) for code in values if isinstance(code, bool) or not isinstance(code, int))
    if bad:
        raise TypeError(f"{field} must contain ints (HTTP status codes), got {', '.join(bad)}")
    out_of_range = sorted(code for code in values if not 100 <= code <= 599)
    if out_of_range:
        raise ValueError(f"{field} must contain HTTP status codes between 100 and 599, got {out_of_range}")
    return values


def normalise_methods(field: str, methods: object) -> frozenset[str]:
    """Validate a set of HTTP method names; returns them upper-cased."""
    if isinstance(methods, str | bytes) or not isinstance(methods, Iterable):
        raise TypeError(f"{field} must be a set of HTTP method names such as {{'GET', 'PUT'}}, got {methods!r}")
    values = list(methods)
    bad = [repr(m) for m in values if not isinstance(m, str) or not m.strip() or not m.strip().isalpha()]
    if bad:
        raise ValueError(f"{field} must contain HTTP method names such as 'GET', got {', '.join(bad)}")
    return frozenset(m.strip().upper() for m in values)


# ---------------------------------------------------------------------- options


class StatusFailure(Exception):  # noqa: N818 - it carries a response, it is not an error the caller sees
    """A response whose status counts as a failure (5xx, 429, or one the retry predicate flags).

    Used inside the policy only: it feeds the host's breaker and drives the retry loop, and
    is turned back into the response before the transport returns. Retry and breaker events
    name it as their error.
    """

    def __init__(self, response: httpx.Response, retry_after: float | None) -> None:
        super().__init__(f"HTTP {response.status_code}")
        self.response = response
        self.retry_after = retry_after


StatusFailure.__module__ = "resilient.httpx"  # where users meet it (re-exported there)


class TransportOptions(TypedDict, total=False):
    """Options of the transports and of `client()` / `async_client()`; defaults in docs/httpx.md.

    Either `policy` (its timeout, retry, rate limit and bulkhead apply, its breaker is the
    per-host template) or the shorthands `timeout`, `retry`, `breaker`, `rate_limit`,
    `bulkhead`, which take what `Policy` takes, except `breaker`: True (default), False or
    a `CircuitBreaker` template.
    """

    policy: Policy | None
    name: str
    timeout: TimeoutOption
    retry: RetryOption
    breaker: BreakerTemplate
    rate_limit: RateLimitOption
    bulkhead: BulkheadOption
    rate_limit_scope: RateLimitScope
    retry_statuses: Iterable[int]
    retry_methods: Iterable[str]
    retry_non_idempotent: bool
    max_retry_after: float
    max_hosts: int


OPTION_NAMES = frozenset(TransportOptions.__annotations__)
_SHORTHANDS = ("timeout", "retry", "breaker", "rate_limit", "bulkhead")


@dataclasses.dataclass(frozen=True, slots=True)
class _Options:
    """Everything a transport decided at construction; shared by the sync and async twins."""

    label: str
    retrying: CompiledPolicy
    once: CompiledPolicy
    template: CircuitBreaker | None
    per_host_limit: bool
    retry_statuses: frozenset[int]
    retry_methods: frozenset[str]
    retry_non_idempotent: bool
    retry_response: ResponsePredicate | None
    max_retry_after: float
    max_hosts: int


def build_options(options: TransportOptions) -> _Options:
    """Validate the options (errors name the field and what is allowed) and compile the policy."""
    unknown = sorted(set(options) - OPTION_NAMES)
    if unknown:
        raise TypeError(f"unknown option(s) {', '.join(unknown)}; allowed: {', '.join(sorted(OPTION_NAMES))}")
    name = check_name("name", options.get("name", DEFAULT_NAME))
    scope = options.get("rate_limit_scope", "host")
    if scope not in ("host", "client"):
        raise ValueError(f"rate_limit_scope must be 'host' or 'client', got {scope!r}")
    max_hosts = check_int("max_hosts", options.get("max_hosts", DEFAULT_MAX_HOSTS), minimum=1)
    max_retry_after = check_seconds(
        "max_retry_after", options.get("max_retry_after", DEFAULT_MAX_RETRY_AFTER), allow_zero=True
    )
    non_idempotent = options.get("retry_non_idempotent", False)
    if not isinstance(non_idempotent, bool):
        raise TypeError(f"retry_non_idempotent must be True or False, got {non_idempotent!r}")
    label, timeout, retry, template, limit, bulkhead = _layers(name, options)
    per_host = limit is not None and scope == "host"
    if limit is not None:
        limit = _scoped_rate_limit(limit, per_host=per_host, max_hosts=max_hosts)
    http_retry, response_predicate = _http_retry(retry) if retry is not None else (None, None)
    compiled = Policy(name=label, timeout=timeout, retry=http_retry, rate_limit=limit, bulkhead=bulkhead)._compiled
    return _Options(
        label=label,
        retrying=compiled,
        once=compiled.without_retry(),
        template=template,
        per_host_limit=per_host,
        retry_statuses=normalise_statuses("retry_statuses", options.get("retry_statuses", RETRY_STATUSES)),
        retry_methods=normalise_methods("retry_methods", options.get("retry_methods", IDEMPOTENT_METHODS)),
        retry_non_idempotent=non_idempotent,
        retry_response=response_predicate,
        max_retry_after=max_retry_after,
        max_hosts=max_hosts,
    )


def _layers(
    name: str, options: TransportOptions
) -> tuple[str, Any, Retry | None, CircuitBreaker | None, RateLimit | None, Any]:
    """(label, timeout, retry, breaker template, rate limit, bulkhead) from a policy or the shorthands."""
    policy = options.get("policy")
    if policy is None:
        return (
            name,
            _as_timeout(options.get("timeout")),
            _as_retry(options.get("retry", True)),
            _as_template(options.get("breaker", True), name),
            _as_rate_limit(options.get("rate_limit")),
            _as_bulkhead(options.get("bulkhead")),
        )
    if not isinstance(policy, Policy):
        raise TypeError(f"policy must be a resilient.Policy or None, got {policy!r}")
    given = [key for key in _SHORTHANDS if key in options]
    if given:
        raise ValueError(f"pass either policy= or the shorthands, not both (got policy= and {', '.join(given)}=)")
    if policy.fallback is not None:
        raise ValueError(
            "policy.fallback is not supported by the httpx transport (a transport returns a response or "
            "raises); catch the error around the client call instead"
        )
    label = policy.name or name
    return label, policy.timeout, policy.retry, _as_template(policy.breaker, label), policy.rate_limit, policy.bulkhead


def _as_template(value: object, name: str) -> CircuitBreaker | None:
    """The breaker every host's own breaker is copied from (named ``{template}:{origin}``)."""
    if value is None or value is False:
        return None
    if value is True:
        return CircuitBreaker(name=name)
    if not isinstance(value, CircuitBreaker):
        raise TypeError(f"breaker must be True, False, None or a CircuitBreaker template, got {value!r}")
    if value.pybreaker is not None:
        raise ValueError(
            "breaker must not wrap a pybreaker.CircuitBreaker: each host gets its own breaker copied from "
            f"the template, and one pybreaker object cannot be shared (got {value!r})"
        )
    _check_template_is_unique(value)
    return value


def _check_template_is_unique(template: CircuitBreaker) -> None:
    """Two transports using one breaker name with different settings would fight over each host."""
    prefix = f"{template.name}:"
    for breaker_name, runtime in list(_REGISTRY.items()):
        if breaker_name.startswith(prefix) and dataclasses.replace(runtime.config, name=template.name) != template:
            raise ValueError(
                f"breaker.name {template.name!r} is already used by another transport with different settings "
                f"({runtime.config!r}); give this template another name"
            )


def _scoped_rate_limit(limit: RateLimit, *, per_host: bool, max_hosts: int) -> RateLimit:
    if not per_host:
        return dataclasses.replace(limit, key=None)
    return dataclasses.replace(limit, key=_origin_of_exchange, max_keys=max(max_hosts, 1))


def _origin_of_exchange(exchange: Exchange) -> str:
    return exchange.host.origin


def _http_retry(retry: Retry) -> tuple[Retry, ResponsePredicate | None]:
    """The retry the drivers run: the user's settings, HTTP's idea of what is transient.

    `on` (types or a predicate) keeps deciding which transport errors are retried; a
    `StatusFailure` is always retried (the transport raises it only for retryable
    responses). `on_result` becomes a predicate on responses, evaluated in the attempt
    so the happy path allocates no retry state. `Retry-After` feeds the backoff.
    """
    user_on = retry.on
    if isinstance(user_on, tenacity.retry_base):
        raise TypeError(
            "retry.on for the httpx transport must be exception types or a predicate (exc) -> bool, "
            f"not a tenacity strategy, got {user_on!r}"
        )
    return (
        dataclasses.replace(
            retry, on=_retry_filter(user_on), on_result=None, retry_after=_retry_after_hint(retry.retry_after)
        ),
        retry.on_result,
    )


def _retry_filter(user_on: Any) -> Callable[[BaseException], bool]:
    if user_on is None:
        errors: tuple[type[BaseException], ...] = TRANSIENT_ERRORS
    elif isinstance(user_on, type | tuple):
        errors = user_on if isinstance(user_on, tuple) else (user_on,)
    else:
        predicate: Callable[[BaseException], bool] = user_on
        return lambda error: isinstance(error, StatusFailure) or bool(predicate(error))
    retried = cast("tuple[type[BaseException], ...]", (StatusFailure, *errors))
    return lambda error: isinstance(error, retried)


def _retry_after_hint(
    user_hint: Callable[[BaseException | None, Any], float | None] | None,
) -> Callable[[BaseException | None, Any], float | None]:
    def hint(error: BaseException | None, result: Any) -> float | None:
        ours = error.retry_after if isinstance(error, StatusFailure) else None
        theirs = user_hint(error, result) if user_hint is not None else None
        if ours is None or theirs is None:
            return ours if theirs is None else theirs
        return max(ours, theirs)

    return hint


# ---------------------------------------------------------------------- per-host state


class _Host:
    """One origin (scheme, host, port): its rate-limit key and its own breaker."""

    __slots__ = ("breaker", "origin")

    def __init__(self, origin: str, breaker: BreakerRuntime | None) -> None:
        self.origin = origin
        self.breaker = breaker


#: The host of a transport that keeps no per-host state (no breaker, one rate limit for all).
_NO_HOST = _Host("", None)


class _Hosts:
    """Hosts seen recently, least recently used evicted beyond `max_hosts` (with their breakers)."""

    def __init__(self, template: CircuitBreaker | None, max_hosts: int) -> None:
        self._template = template
        self._max = max_hosts
        self._hosts: OrderedDict[tuple[str, str, int | None], _Host] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._hosts)

    def get(self, url: httpx.URL) -> _Host:
        # httpx's parsed URL, read directly: its `scheme`/`host`/`port` properties are three
        # Python calls per request. Its host is the IDNA-encoded one, so the key is as unique.
        parsed = url._uri_reference
        key = (parsed.scheme, parsed.host, parsed.port)
        host = self._hosts.get(key)
        if host is None:
            return self._add(key, _origin(url.scheme, url.host, url.port))
        try:  # noqa: SIM105 - contextlib.suppress costs a context manager on every request
            self._hosts.move_to_end(key)
        except KeyError:  # evicted by another thread in between: this request keeps its object
            pass
        return host

    def _add(self, key: tuple[str, str, int | None], origin: str) -> _Host:
        with self._lock:
            host = self._hosts.get(key)
            if host is not None:
                return host
            breaker = None
            if self._template is not None:
                breaker = breaker_for(dataclasses.replace(self._template, name=f"{self._template.name}:{origin}"))
            host = _Host(origin, breaker)
            self._hosts[key] = host
            evicted = self._hosts.popitem(last=False)[1] if len(self._hosts) > self._max else None
        if evicted is not None and evicted.breaker is not None:
            forget_breaker(evicted.breaker)
        return host

    def breakers(self) -> dict[str, BreakerRuntime]:
        return {host.origin: host.breaker for host in list(self._hosts.values()) if host.breaker is not None}


def _origin(scheme: str, host: str, port: int | None) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"{scheme}://{shown}:{port or DEFAULT_PORTS.get(scheme, 0)}"


# ---------------------------------------------------------------------- one logical request


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

    def __init__(self, request: httpx.Request, compiled: CompiledPolicy, host: _Host) -> None:
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
        self.started = time.monotonic()


class Engine:
    """Every decision of a transport, sync or async: the twins add only the I/O."""

    def __init__(self, options: _Options) -> None:
        self.options = options
        self.label = options.label
        self.hosts = _Hosts(options.template, options.max_hosts)
        self._needs_host = options.template is not None or options.per_host_limit
        self._statuses = options.retry_statuses
        self._retry_response = options.retry_response
        self._retrying = options.retrying if options.retrying.retry is not None else None
        self._once = options.once
        #: Statuses below 500 that are not plain successes (retried, or counted by the breaker).
        self._watched = options.retry_statuses | {429}

    # -- before

    def begin(self, request: httpx.Request) -> Exchange:
        """Choose the policy, find the host, start the span and add the propagation headers."""
        host = self.hosts.get(request.url) if self._needs_host else _NO_HOST
        retrying = self._retrying
        may_retry = retrying is not None and self._may_repeat(request)
        exchange = Exchange(request, retrying if may_retry else self._once, host)  # type: ignore[arg-type]
        if (  # the drivers' "anyone listening?" test, inlined: the idle flag and two identity tests
            _OTEL.idle
            and _trace_state._TRACER_PROVIDER is _OTEL._tracer_provider
            and _metrics_state._METER_PROVIDER is _OTEL._meter_provider
        ):
            _propagate(request.headers, otel_context.get_current())  # no SDK: no span, no meter
        else:
            self._observe(exchange, _OTEL.tracer(), _OTEL.metrics())
        return exchange

    def _observe(self, exchange: Exchange, tracer: trace.Tracer | None, metrics: Any) -> None:
        context = self._start_span(exchange, tracer) if tracer is not None else otel_context.get_current()
        _propagate(exchange.request.headers, context)
        if metrics is not None:
            exchange.obs = CallObservation(self.label, None, metrics)

    def _may_repeat(self, request: httpx.Request) -> bool:
        """Is sending the request twice safe (idempotent, or made so) and possible (replayable body)?"""
        options = self.options
        idempotent = (
            request.method in options.retry_methods
            or options.retry_non_idempotent
            or IDEMPOTENCY_KEY in request.headers
        )
        return idempotent and isinstance(request.stream, _REPLAYABLE_STREAMS)

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
        deadline = _DEADLINE.get()
        if deadline is not None:  # the drivers' clock: a test may have swapped it
            _fit_into_deadline(exchange, deadline - CLOCK.monotonic(), self.label)
        breaker = exchange.host.breaker
        # A closed in-process breaker admits without a call; a shared one always asks Redis.
        if breaker is None or (breaker.state is CLOSED and not breaker.shared):
            return False
        return breaker.acquire(self.label)

    def judge(self, exchange: Exchange, response: httpx.Response, probe: bool, started: float) -> StatusFailure | None:
        """Record the response with the breaker; a `StatusFailure` to raise when it should be retried."""
        status = response.status_code
        if status < 500 and status not in self._watched and self._retry_response is None:
            # The common case, decided in one test: a success, and a clean breaker needs no news.
            breaker = exchange.host.breaker
            if breaker is not None and (probe or breaker.reports_success):
                self._breaker_success(breaker, probe, started)
            return None
        return self._judge_status(exchange, response, probe, started)

    def _judge_status(
        self, exchange: Exchange, response: httpx.Response, probe: bool, started: float
    ) -> StatusFailure | None:
        status = response.status_code
        retry = exchange.compiled.retry is not None and (
            status in self._statuses or (self._retry_response is not None and self._retry_response(response))
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
        """Count a transport error against the host's breaker (cancellation gives the probe back)."""
        breaker = exchange.host.breaker
        if breaker is None:
            return
        if isinstance(error, Exception):
            breaker.on_failure(error, probe=probe, label=self.label)
        else:
            breaker.on_abandon(probe)

    # -- after

    def finish(self, exchange: Exchange, response: httpx.Response) -> None:
        """Close the span, count the call and log one line for a request that got a response."""
        status = response.status_code
        failed = status >= 500 or status in self._statuses
        level = logging.WARNING if failed else logging.DEBUG
        if HUB.listeners or HUB.logger.is_enabled_for(level):  # else the span carries every field
            self._log(exchange, level, None, status)
        if exchange.span is not None:
            attributes: dict[str, Any] = {"http.response.status_code": status}
            if status >= 400:
                attributes["error.type"] = str(status)
            _end_span(exchange, attributes, Status(StatusCode.ERROR) if status >= 400 else None)
        if exchange.obs is not None:
            exchange.obs.end("failure" if failed else "success", None, {})

    def fail(self, exchange: Exchange, error: BaseException) -> None:
        """Close the span, count the call and log one line for a request that raised."""
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
            duration=round(time.monotonic() - exchange.started, 6),
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


_REDACTED_URLS: dict[str, str] = {}
_MAX_REDACTED_URLS = 256


def _redacted(url: httpx.URL) -> str:
    """`redact_url` of the URL, remembered: a client mostly calls the same few URLs."""
    text = str(url)
    redacted = _REDACTED_URLS.get(text)
    if redacted is None:
        if len(_REDACTED_URLS) >= _MAX_REDACTED_URLS:  # URLs carrying ids would grow it forever
            _REDACTED_URLS.clear()
        redacted = _REDACTED_URLS[text] = redact_url(text)
    return redacted


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


def _propagate(headers: httpx.Headers, context: otel_context.Context) -> None:
    """Add trace context (the app's propagator) and the request id, never replacing the caller's headers.

    `context` holds the request's CLIENT span, or is the current (maybe remote) context.
    """
    if context:  # an empty context (no span, no baggage) has nothing to propagate: skip the 2 µs
        propagate.inject(headers, context=context, setter=_KEEP_CALLERS)
    request_id = REQUEST_ID.get()
    if request_id is not None and REQUEST_ID_HEADER not in headers:
        headers[REQUEST_ID_HEADER] = request_id


class _SetUnlessPresent(Setter[httpx.Headers]):
    """The propagator writes straight into the request's headers, keeping any the caller set."""

    def set(self, carrier: httpx.Headers, key: str, value: str) -> None:
        if key not in carrier:
            carrier[key] = value


_KEEP_CALLERS = _SetUnlessPresent()
