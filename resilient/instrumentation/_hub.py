"""The one object strategies report to: it fans events out to logs, spans, metrics, listeners.

With nobody listening (no SDK provider, log level above the event, no listener) an event
costs one level check; the per-call path asks `begin_call()` which returns None then.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from resilient._kernel.errors import (
    BulkheadFullError,
    CircuitOpenError,
    DeadlineExceededError,
    RateLimitedError,
)
from resilient.instrumentation._events import Event, Listener
from resilient.instrumentation._log import EventLogger, redact_fields
from resilient.instrumentation._otel import CallObservation, Otel, _error_type
from resilient.redaction import redact_text

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

__all__ = ["HUB", "Hub", "outcome_of"]

_log = logging.getLogger("resilient.instrumentation")


def outcome_of(error: BaseException) -> tuple[str, str | None]:
    """Classify a final error as (outcome, rejection reason)."""
    if isinstance(error, CircuitOpenError):
        return "rejected", "circuit_open"
    if isinstance(error, RateLimitedError):
        return "rejected", "rate_limited"
    if isinstance(error, BulkheadFullError):
        return "rejected", "bulkhead_full"
    if isinstance(error, DeadlineExceededError):
        return "failure", "timeout"
    return "failure", None


class Hub:
    """Where events go. One instance (`HUB`); `resilient.instrumentation` is its public face."""

    def __init__(self) -> None:
        self.listeners: tuple[Listener, ...] = ()
        self.logger = EventLogger()
        self.otel = Otel(self._breaker_states)
        self.breaker_states: Callable[[], Iterable[tuple[str, str]]] = tuple

    def _breaker_states(self) -> Iterable[tuple[str, str]]:
        return self.breaker_states()

    def begin_call(self, label: str) -> CallObservation | None:
        """Start observing a call, or None when there is no tracer and no meter (fast path)."""
        otel = self.otel
        if otel.idle and otel.providers_unchanged():
            return None
        tracer = otel.tracer()
        metrics = otel.metrics()
        if tracer is None and metrics is None:
            return None
        return CallObservation(label, tracer, metrics)

    def emit(
        self,
        name: str,
        policy: str,
        level: int,
        error: BaseException | None = None,
        **fields: Any,
    ) -> None:
        """Report an event to logs, the current span, metrics and listeners."""
        log_it = self.logger.is_enabled_for(level)
        metrics = self.otel.metrics()
        tracer = self.otel.tracer()
        if not (log_it or metrics or tracer or self.listeners):
            return
        event = Event(name, policy, level, error, fields)
        if log_it:
            self.logger.log(level, name, self._log_fields(event))
        if tracer is not None:
            self.otel.add_span_event(event)
        if metrics is not None:
            metrics.record_event(event)
        for listener in self.listeners:
            self._notify(listener, event)

    @staticmethod
    def _log_fields(event: Event) -> dict[str, Any]:
        fields = redact_fields({"policy": event.policy, **event.fields})
        if event.error is not None:
            fields["error_type"] = _error_type(event.error)
            fields["error"] = redact_text(str(event.error))[:500]
        return fields

    @staticmethod
    def _notify(listener: Listener, event: Event) -> None:
        try:
            listener(event)
        except Exception:
            # A broken listener must never break the protected call; say so, once per event.
            _log.exception("resilient listener %r failed on %s", listener, event.name)


HUB = Hub()
