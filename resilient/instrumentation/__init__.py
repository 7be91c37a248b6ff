"""Instrumentation seam: every safeguard reports an `Event`; attach listeners here.

Logs (structlog / stdlib logger ``resilient``), OpenTelemetry spans and metrics are
built in and cost nothing until the application installs providers or lowers the level.
Listeners are for anything else (Prometheus client, Sentry, tests)::

    from resilient import instrumentation

    def count(event: instrumentation.Event) -> None:
        if event.name == "breaker.opened":
            BREAKER_OPENED.labels(event.fields["breaker"]).inc()

    instrumentation.add_listener(count)
"""

from __future__ import annotations

from resilient.instrumentation._events import Event, Listener
from resilient.instrumentation._hub import HUB

__all__ = [
    "Event",
    "Listener",
    "add_listener",
    "configure",
    "remove_listener",
]


def add_listener(listener: Listener) -> None:
    """Call `listener` with every event from now on (idempotent)."""
    if listener not in HUB.listeners:
        HUB.listeners = (*HUB.listeners, listener)


def remove_listener(listener: Listener) -> None:
    """Stop calling `listener` (no error if it was not added)."""
    HUB.listeners = tuple(existing for existing in HUB.listeners if existing != listener)


def configure(*, traces: bool | None = None, metrics: bool | None = None, logs: bool | None = None) -> None:
    """Switch the built-in outputs on or off (all on by default; None leaves one as it is)."""
    if traces is not None:
        HUB.otel.tracing_enabled = traces
    if metrics is not None:
        HUB.otel.metrics_enabled = metrics
    if logs is not None:
        HUB.logger.enabled = logs
    HUB.otel._refresh_idle()


Event.__module__ = "resilient.instrumentation"
