"""OpenTelemetry: spans and metrics, through the API only, costing nothing without a provider.

The global providers are checked by identity on each call (one attribute read): until the
application installs an SDK provider nothing is created, no span object, no metric call.
"""

from __future__ import annotations

import threading
import traceback
from typing import TYPE_CHECKING, Any

import opentelemetry.metrics._internal as _metrics_state
import opentelemetry.trace as _trace_state
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.metrics import CallbackOptions, NoOpMeterProvider, Observation
from opentelemetry.trace import NoOpTracerProvider, SpanKind, Status, StatusCode

from resilient._version import __version__

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from opentelemetry.metrics import Counter, Histogram, Meter, MeterProvider
    from opentelemetry.trace import Span, Tracer, TracerProvider

    from resilient.instrumentation._events import Event

__all__ = ["CallObservation", "Otel"]

# Advice for duration histograms, in seconds (the HTTP semantic conventions' buckets).
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)

_REJECTION_EVENTS = {
    "ratelimit.rejected": "resilient.ratelimit.rejections",
    "bulkhead.rejected": "resilient.bulkhead.rejections",
    "breaker.rejected": "resilient.breaker.rejections",
    "budget.exhausted": "resilient.retry.budget_exhausted",
    "timeout.exceeded": "resilient.timeouts",
    "fallback.used": "resilient.fallbacks",
}

# One line per request that the integrations' own SERVER/CLIENT span already carries as
# attributes: repeating them as a span event would cost an SDK event per request for nothing.
_SUMMARY_EVENTS = frozenset({"http.access", "http.request"})

BREAKER_STATE_VALUES = {"closed": 0, "half-open": 1, "open": 2}
_STATE_AFTER = {"breaker.opened": "open", "breaker.half_opened": "half-open", "breaker.closed": "closed"}


class Metrics:
    """The library's instruments on one meter; names are a documented contract (README)."""

    def __init__(self, meter: Meter, breaker_states: Callable[[], Iterable[tuple[str, str]]]) -> None:
        # Counted in process and observed at collection time: see CallCounts.
        self.calls = CallCounts()
        meter.create_observable_counter(
            "resilient.calls", callbacks=[self.calls.observe], unit="{call}", description="Protected calls by outcome"
        )
        self.retries: Counter = meter.create_counter(
            "resilient.retries", unit="{retry}", description="Retries scheduled"
        )
        # One histogram per attempt; its count *is* the attempt count (by outcome), so no
        # separate counter: with an SDK every instrument call costs microseconds.
        self.attempt_duration: Histogram = meter.create_histogram(
            "resilient.attempt.duration",
            unit="s",
            description="Duration of one attempt",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self.transitions: Counter = meter.create_counter(
            "resilient.breaker.transitions", unit="{transition}", description="Breaker state changes"
        )
        self.storage_degraded: Counter = meter.create_counter(
            "resilient.storage.degraded",
            unit="{event}",
            description="Shared storage became unreachable and local state took over",
        )
        self.by_event: dict[str, Counter] = {
            event: meter.create_counter(name, unit="{event}") for event, name in _REJECTION_EVENTS.items()
        }

        def observe_states(_options: CallbackOptions) -> Iterable[Observation]:
            for name, state in breaker_states():
                yield Observation(BREAKER_STATE_VALUES[state], {"resilient.breaker": name})

        meter.create_observable_gauge(
            "resilient.breaker.state",
            callbacks=[observe_states],
            unit="{state}",
            description="Breaker state: 0 closed, 1 half-open, 2 open",
        )

    def record_event(self, event: Event) -> None:
        """Count an event in its instrument, if it has one."""
        attrs: dict[str, Any] = {"resilient.policy": event.policy}
        if event.name == "retry.scheduled":
            self.retries.add(1, attrs)
        elif event.name in _STATE_AFTER:
            attrs["resilient.breaker"] = event.fields.get("breaker", "")
            attrs["resilient.breaker.state"] = _STATE_AFTER[event.name]
            self.transitions.add(1, attrs)
        elif event.name == "storage.degraded":
            self.storage_degraded.add(1, attrs)
        else:
            counter = self.by_event.get(event.name)
            if counter is not None:
                counter.add(1, attrs)


class CallCounts:
    """`resilient.calls`: cumulative counts per attribute set, read by an observable counter.

    A synchronous `Counter.add` costs about 3.4 µs with the SDK (a `Measurement`, an exemplar
    decision, the reader storages), on every call; a dict increment under a lock costs about
    0.2 µs. An observable counter reports the same cumulative, monotonic sum to every reader
    (the SDK derives deltas for delta exporters), so exporters see no difference. As in the
    SDK's own cardinality limit, attribute sets beyond `MAX_SETS` are counted under
    ``otel.metric.overflow=true``.
    """

    MAX_SETS = 2000
    _OVERFLOW: tuple[tuple[str, Any], ...] = (("otel.metric.overflow", True),)

    __slots__ = ("_counts", "_lock")

    def __init__(self) -> None:
        self._counts: dict[tuple[tuple[str, Any], ...], int] = {}
        self._lock = threading.Lock()

    def add(self, key: tuple[tuple[str, Any], ...]) -> None:
        """Count one call under the attribute set `key` (the attribute items, in a fixed order)."""
        counts = self._counts
        lock = self._lock
        lock.acquire()  # not `with`: the protocol costs more than the lock on this path
        try:
            if key in counts:
                counts[key] += 1
            elif len(counts) < self.MAX_SETS:
                counts[key] = 1
            else:
                counts[self._OVERFLOW] = counts.get(self._OVERFLOW, 0) + 1
        finally:
            lock.release()

    def observe(self, _options: CallbackOptions) -> Iterable[Observation]:
        with self._lock:
            snapshot = list(self._counts.items())
        return [Observation(count, dict(key)) for key, count in snapshot]


class CallObservation:
    """One protected call as seen by telemetry: its span (if tracing) and its timings."""

    __slots__ = ("_metrics", "_token", "attempts", "label", "span")

    def __init__(self, label: str, tracer: Tracer | None, metrics: Metrics | None) -> None:
        self.label = label
        self.attempts = 0
        self._metrics = metrics
        self.span: Span | None = None
        self._token: object | None = None
        if tracer is not None:
            span = tracer.start_span(label, kind=SpanKind.INTERNAL)
            self.span = span
            self._token = otel_context.attach(trace.set_span_in_context(span))

    def attempt_finished(self, duration: float, ok: bool) -> None:
        """Record one attempt's duration (metrics only; the span carries the count)."""
        self.attempts += 1
        metrics = self._metrics
        if metrics is not None:
            metrics.attempt_duration.record(duration, _attempt_attributes(self.label, ok=ok))

    def end(self, outcome: str, error: BaseException | None, extra: dict[str, Any]) -> None:
        """Close the span and count the call under its outcome."""
        attrs: dict[str, Any] = {"resilient.policy": self.label, "resilient.outcome": outcome}
        if error is not None:
            attrs["error.type"] = _error_type(error)
        span = self.span
        if span is not None:
            span.set_attributes({**attrs, **extra, "resilient.attempts": self.attempts})
            if error is not None and outcome != "fallback":
                span.record_exception(error, attributes=_redacted_exception(error))
                span.set_status(Status(StatusCode.ERROR, attrs["error.type"]))
            span.end()
            if self._token is not None:
                otel_context.detach(self._token)  # type: ignore[arg-type]
        metrics = self._metrics
        if metrics is not None:
            if "resilient.rejection" in extra:
                attrs["resilient.rejection"] = extra["resilient.rejection"]
            metrics.calls.add(tuple(attrs.items()))


_ATTEMPT_ATTRIBUTES: dict[tuple[str, bool], dict[str, Any]] = {}


def _attempt_attributes(label: str, *, ok: bool) -> dict[str, Any]:
    """The attribute dict of an attempt, built once per (policy, outcome)."""
    key = (label, ok)
    attrs = _ATTEMPT_ATTRIBUTES.get(key)
    if attrs is None:
        if len(_ATTEMPT_ATTRIBUTES) > 10_000:  # labels are code locations; bound it anyway
            _ATTEMPT_ATTRIBUTES.clear()
        attrs = {"resilient.policy": label, "resilient.outcome": "success" if ok else "failure"}
        _ATTEMPT_ATTRIBUTES[key] = attrs
    return attrs


def _redacted_exception(error: BaseException) -> dict[str, str]:
    """The message and stack trace of an exception event, with secrets masked (as in logs)."""
    from resilient.redaction import redact_text  # noqa: PLC0415 - failure path only

    trace_text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    return {"exception.message": redact_text(str(error)), "exception.stacktrace": redact_text(trace_text)}


def _error_type(error: BaseException) -> str:
    """`error.type` per the semantic conventions: the fully qualified class name.

    An integration's internal signal names what the user sees instead, in a
    ``_resilient_error_type`` attribute (the httpx transports' status failure says ``"503"``).
    """
    named = getattr(error, "_resilient_error_type", None)
    if named is not None:
        return str(named)
    cls = type(error)
    module = cls.__module__
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"


class Otel:
    """Finds the global providers lazily and caches the tracer and instruments per provider."""

    def __init__(self, breaker_states: Callable[[], Iterable[tuple[str, str]]]) -> None:
        self._breaker_states = breaker_states
        self._tracer_provider: TracerProvider | None = None
        self._tracer: Tracer | None = None
        self._meter_provider: MeterProvider | None = None
        self._metrics: Metrics | None = None
        self.tracing_enabled = True
        self.metrics_enabled = True
        #: True when, for the providers last seen, there is no tracer and no meter to feed.
        self.idle = True

    def providers_unchanged(self) -> bool:
        """Are the global providers still the ones `idle` was computed for? (two reads)"""
        return (
            _trace_state._TRACER_PROVIDER is self._tracer_provider
            and _metrics_state._METER_PROVIDER is self._meter_provider
        )

    def _refresh_idle(self) -> None:
        self.idle = (self._tracer is None or not self.tracing_enabled) and (
            self._metrics is None or not self.metrics_enabled
        )

    def tracer(self) -> Tracer | None:
        """The library's tracer, or None when no SDK provider is installed (or disabled)."""
        provider = _trace_state._TRACER_PROVIDER
        if provider is not self._tracer_provider:
            self._tracer_provider = provider
            real = provider is not None and not isinstance(provider, NoOpTracerProvider)
            self._tracer = provider.get_tracer("resilient", __version__) if real else None  # type: ignore[union-attr]
            self._refresh_idle()
        return self._tracer if self.tracing_enabled else None

    def metrics(self) -> Metrics | None:
        """The library's instruments, or None when no SDK meter provider is installed."""
        provider = _metrics_state._METER_PROVIDER
        if provider is not self._meter_provider:
            self._meter_provider = provider
            real = provider is not None and not isinstance(provider, NoOpMeterProvider)
            self._metrics = (
                Metrics(provider.get_meter("resilient", __version__), self._breaker_states)  # type: ignore[union-attr]
                if real
                else None
            )
            self._refresh_idle()
        return self._metrics if self.metrics_enabled else None

    def add_span_event(self, event: Event) -> None:
        """Attach an event to the current span (e.g. one per retry), if it is recording."""
        if self._tracer is None or not self.tracing_enabled or event.name in _SUMMARY_EVENTS:
            return
        span = trace.get_current_span()
        if not span.is_recording():
            return
        attrs: dict[str, Any] = {
            f"resilient.{key}": value
            for key, value in event.fields.items()
            if isinstance(value, str | int | float | bool)
        }
        if event.error is not None:
            attrs["error.type"] = _error_type(event.error)
        span.add_event(f"resilient.{event.name}", attrs)
