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
from resilient.redaction import redact_value

if TYPE_CHECKING:
    from collections.abc import Mapping, MutableMapping

__all__ = ["LOGGER_NAME", "EventLogger"]


class _PublicConfig:
    """structlog's public answer, should a release drop the private `_CONFIG` object."""

    @property
    def is_configured(self) -> bool:
        return structlog.is_configured()


# `structlog.is_configured()` reads this flag: read directly, it is one Python call fewer per event.
_STRUCTLOG: Any = getattr(structlog._config, "_CONFIG", None)
if not hasattr(_STRUCTLOG, "is_configured"):
    _STRUCTLOG = _PublicConfig()

LOGGER_NAME = "resilient"

#: structlog's native filtering loggers (public factory, pre-built classes): their level is
#: fixed in the class, so once the app's logger is cached, its verdict per level is too.
_FIXED_LEVEL_LOGGERS = frozenset(
    structlog.make_filtering_bound_logger(level)
    for level in (logging.NOTSET, logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR, logging.CRITICAL)
)

# Fields the library itself fills with numbers, names of its own objects or enumerated
# words, and the URLs its integrations already passed through `redact_url` (`url` from the
# httpx transports, `path` from the middleware; `client` is a parsed IP address): no secret
# can be in them, so they skip the (comparatively costly) redaction scan. Everything else
# (error messages, user agents, fields a listener-facing caller adds) is redacted here.
SAFE_FIELDS = frozenset(
    {
        "policy", "attempt", "attempts", "delay", "breaker", "previous", "reset_timeout",
        "retry_after", "limit", "max_concurrent", "scope", "timeout", "interrupted", "error_type",
        "method", "status", "status_code", "duration", "duration_ms", "bytes", "request_id", "route",
        "storage", "trace_id", "span_id", "url", "path", "client", "rejection",
    }
)  # fmt: skip


def redact_fields(fields: dict[str, Any]) -> dict[str, Any]:
    """A copy of `fields` with every value that could carry a secret redacted."""
    return {
        key: value
        if key in SAFE_FIELDS or not isinstance(value, str | dict | list | tuple)
        else redact_value(key, value)
        for key, value in fields.items()
    }


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
            processors=[add_trace_context, add_request_id, _to_stdlib_call],
            wrapper_class=structlog.stdlib.BoundLogger,
        )
        # One lazy proxy for the process, as structlog recommends: it follows the app's
        # configuration and lets `cache_logger_on_first_use` work.
        self._app = structlog.get_logger(LOGGER_NAME)
        #: The app logger structlog cached on first use, and its fixed level, once known: see
        #: `_app_enabled_for`. The proxy would hand back that same logger on every `bind()`.
        self._app_cached: Any = None
        self._app_floor: int | None = None
        self.enabled = True

    def is_enabled_for(self, level: int) -> bool:
        """Cheap check before an event is built: the app's structlog level, or the stdlib one."""
        if not self.enabled:
            return False
        if _STRUCTLOG.is_configured:
            floor = self._app_floor
            return level >= floor if floor is not None else self._app_enabled_for(level)
        # `Logger.isEnabledFor`, answered from the verdicts it caches (one call fewer per event):
        # the stdlib clears them whenever a level changes (`setLevel`, `logging.disable`), and
        # `disabled` (set by `dictConfig`) comes first, as in `isEnabledFor`. Without that private
        # cache, or before the verdict is cached, the public method answers.
        stdlib = self.stdlib
        if not stdlib.disabled:
            try:
                return stdlib._cache[level]  # type: ignore[attr-defined,no-any-return]
            except (AttributeError, KeyError):
                pass
        return stdlib.isEnabledFor(level)

    def _app_enabled_for(self, level: int) -> bool:
        # `bind()` returns the logger cached on first use as is; then, filtering bound loggers
        # answer `is_enabled_for`, stdlib ones `isEnabledFor`, and anything else gets every
        # event and filters it itself.
        logger = self._app.bind()
        if type(logger) in _FIXED_LEVEL_LOGGERS and "bind" in vars(self._app):
            # The proxy cached this logger on first use (its `bind` replaced by one returning
            # it): every later event goes to it, so its level is the answer from now on.
            # Reconfiguring structlog does not change a cached logger, here or in the app.
            self._app_floor = logger.get_effective_level()
            self._app_cached = logger
        check = getattr(logger, "is_enabled_for", None) or getattr(logger, "isEnabledFor", None)
        if check is None:
            return True
        try:
            return bool(check(level))
        except Exception:  # a custom wrapper with another signature
            return True

    def log(self, level: int, name: str, fields: dict[str, Any]) -> None:
        """Write the event through the app's structlog or stdlib.

        `fields` must be redacted already and is the caller's to give away: it becomes the
        event dict (no copy).
        """
        if _STRUCTLOG.is_configured:
            # The logger structlog cached, else `bind()` of the lazy proxy (rather than an
            # attribute of it: its `__getattr__` binds too, through one more Python call).
            cached = self._app_cached
            logger = self._app.bind() if cached is None else cached
            logger.log(level, name, **add_request_id(None, "", add_trace_context(None, "", fields)))
        else:
            self._fallback.log(level, name, **fields)

    def log_joined(self, level: int, name: str, fields: Mapping[str, Any]) -> None:
        """`log` for fields that carry the request and trace ids already (the access line)."""
        if _STRUCTLOG.is_configured:
            cached = self._app_cached
            (self._app.bind() if cached is None else cached).log(level, name, **fields)
        else:
            self._fallback.log(level, name, **fields)
