"""Log lines for events, through structlog, without reconfiguring the application's logging.

If the application configured structlog, events go through its pipeline (logger name
``resilient``). Otherwise they go to the stdlib logger ``resilient`` as one ``key=value``
line with the fields also attached to the record (``record.resilient``), so plain
`logging` users see them and JSON formatters can pick the fields up.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import structlog

from resilient.logging import add_request_id, add_trace_context
from resilient.redaction import redact_event_dict

if TYPE_CHECKING:
    from collections.abc import MutableMapping

__all__ = ["LOGGER_NAME", "EventLogger"]

LOGGER_NAME = "resilient"


def _to_stdlib_call(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Render `event key=value ...` as the message and keep the fields on the record."""
    event = event_dict.pop("event")
    rendered = " ".join(f"{key}={value!r}" for key, value in event_dict.items())
    message = f"{event} {rendered}" if rendered else str(event)
    return (message,), {"extra": {"resilient": {"event": event, **event_dict}}}


class EventLogger:
    """Emits one log line per event at the event's level."""

    def __init__(self) -> None:
        self.stdlib = logging.getLogger(LOGGER_NAME)
        self._fallback = structlog.wrap_logger(
            self.stdlib,
            processors=[add_trace_context, add_request_id, redact_event_dict, _to_stdlib_call],
            wrapper_class=structlog.stdlib.BoundLogger,
        )
        self.enabled = True

    def is_enabled_for(self, level: int) -> bool:
        """Cheap check before an event is built (the stdlib level, which structlog apps share)."""
        if not self.enabled:
            return False
        if structlog.is_configured():
            return True  # the application's own filtering decides
        return self.stdlib.isEnabledFor(level)

    def log(self, level: int, name: str, fields: dict[str, Any]) -> None:
        """Write the event through the application's structlog, or the stdlib fallback."""
        if structlog.is_configured():
            event_dict = redact_event_dict(
                None, "", add_request_id(None, "", add_trace_context(None, "", dict(fields)))
            )
            structlog.get_logger(LOGGER_NAME).log(level, name, **event_dict)
        else:
            self._fallback.log(level, name, **fields)
