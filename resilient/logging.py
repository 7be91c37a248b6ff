"""An opt-in production logging setup: structlog and stdlib `logging` rendered alike.

Nothing here runs on import: the library never reconfigures an application's logging behind
its back. An application that wants a ready setup calls `configure` once at start-up::

    import resilient.logging

    resilient.logging.configure()  # JSON lines on stderr, or pretty output on a terminal

The processors `add_trace_context` and `add_request_id` are public so an application that
keeps its own structlog chain can add them.
"""

from __future__ import annotations

import io
import logging
import sys
from typing import TYPE_CHECKING, TextIO

import structlog
from opentelemetry import trace

from resilient._kernel.context import REQUEST_ID
from resilient.redaction import redact_event_dict, redact_text, redact_value

if TYPE_CHECKING:
    from structlog.typing import EventDict, ExceptionRenderer, ExcInfo, Processor, WrappedLogger

__all__ = ["add_request_id", "add_trace_context", "configure"]


def add_trace_context(_logger: WrappedLogger, _method_name: str, event_dict: EventDict) -> EventDict:
    """A structlog processor adding the current OpenTelemetry ``trace_id`` and ``span_id``.

    The ids are lower-case hex (32 and 16 digits, as in W3C ``traceparent``) so logs and
    traces join on them. Outside a valid span context, or with no SDK installed, nothing is
    added.
    """
    return _add_span_ids(event_dict, trace.get_current_span())


def _add_span_ids(event_dict: EventDict, span: trace.Span) -> EventDict:
    """`add_trace_context` for a given span rather than the current one (the middleware's own)."""
    span_context = span.get_span_context()
    if span_context.is_valid:
        # The text of `trace.format_trace_id` / `format_span_id` (zero-padded lower-case hex)
        # at half the cost: `bytes.hex` instead of `format`, once per log line. `is_valid`
        # guarantees both ids fit their 16 and 8 bytes.
        event_dict["trace_id"] = span_context.trace_id.to_bytes(16).hex()
        event_dict["span_id"] = span_context.span_id.to_bytes(8).hex()
    return event_dict


def add_request_id(_logger: WrappedLogger, _method_name: str, event_dict: EventDict) -> EventDict:
    """A structlog processor adding the ``request_id`` the middleware bound, if any.

    A ``request_id`` already in the event (bound explicitly or through structlog's
    contextvars) wins.
    """
    request_id = REQUEST_ID.get()
    if request_id is not None and "request_id" not in event_dict:
        event_dict["request_id"] = request_id
    return event_dict


class _CurrentStderrHandler(logging.StreamHandler[TextIO]):
    """A stream handler writing to whatever `sys.stderr` is when a record is emitted.

    Resolving the stream late keeps output going to the right place when stderr is replaced
    after `configure` (test capture, daemonisers); the class also marks the handler as ours
    so that `configure` can replace it instead of adding a second one.
    """

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> TextIO:
        """The current `sys.stderr`."""
        return sys.stderr

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        """Ignore assignments: the stream is always the current `sys.stderr`."""


def configure(*, json: bool | None = None, level: int | str = "INFO", redact: bool = True) -> None:
    """Configure structlog and the stdlib root logger to emit the same structured lines.

    Every event, from ``structlog.get_logger()`` or ``logging.getLogger("sqlalchemy")``,
    carries ``timestamp`` (ISO 8601, UTC), ``level``, ``logger``, ``event``, the fields bound
    with ``structlog.contextvars``, ``trace_id``/``span_id`` of the active OpenTelemetry span
    and the middleware's ``request_id``. Exceptions become a structured ``exception`` field
    in JSON (without local variables, which would log arguments and secrets).

    Args:
        json: JSON lines when True, structlog's console renderer when False; None picks JSON
            unless stderr is a terminal.
        level: the root logger's level, as a number or a name (``"DEBUG"``).
        redact: run `resilient.redaction.redact_event_dict` on every event (recommended).

    Calling it again replaces the previous setup rather than adding a second handler. Other
    handlers on the root logger are left alone.
    """
    root_level = _resolve_level(level)  # first, so a bad level changes nothing
    use_json = _wants_json() if json is None else json
    # Redaction runs before the event leaves structlog, so any other handler on the root
    # logger (an error tracker, a file) receives the redacted event too.
    redaction: list[Processor] = [redact_event_dict] if redact else []
    shared = _shared_processors()
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.PositionalArgumentsFormatter(),
            *redaction,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder(), *redaction],
        processors=_rendering_processors(use_json=use_json, redact=redact),
    )
    _install_handler(formatter, root_level)


def _wants_json() -> bool:
    """JSON unless a person is watching: stderr is a terminal."""
    return not sys.stderr.isatty()


def _resolve_level(level: int | str) -> int:
    """Turn a level number or name (any case) into a number, rejecting unknown names."""
    if isinstance(level, int):
        return level
    names = logging.getLevelNamesMapping()
    try:
        return names[level.upper()]
    except KeyError:
        allowed = ", ".join(sorted(names, key=names.__getitem__))
        msg = f"level must be a number or one of {allowed}, got {level!r}"
        raise ValueError(msg) from None


def _shared_processors() -> list[Processor]:
    """Processors that enrich structlog events and stdlib records alike."""
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
        add_trace_context,
        add_request_id,
        structlog.processors.StackInfoRenderer(),
    ]


def _rendering_processors(*, use_json: bool, redact: bool) -> list[Processor]:
    """The formatter's chain for both sources: exception rendering, then the renderer.

    The exception is only turned into data here, so its text is redacted here too.
    """
    processors: list[Processor] = [structlog.stdlib.ProcessorFormatter.remove_processors_meta]
    if use_json:
        processors.append(_DICT_TRACEBACKS)
        if redact:
            processors.append(_redact_exception_field)
    processors.append(_renderer(use_json=use_json, redact=redact))
    return processors


def _redact_exception_field(_logger: WrappedLogger, _method_name: str, event_dict: EventDict) -> EventDict:
    """Mask secrets in the structured exception (messages, notes) rendered just before."""
    if "exception" in event_dict:
        event_dict["exception"] = redact_value("exception", event_dict["exception"])
    return event_dict


# `structlog.processors.dict_tracebacks` with local variables off: locals are function
# arguments, and logging them is how secrets reach logs.
_DICT_TRACEBACKS = structlog.processors.ExceptionRenderer(
    structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
)


def _renderer(*, use_json: bool, redact: bool) -> Processor:
    """The final renderer: JSON lines, or the console renderer for a terminal."""
    if use_json:
        return structlog.processors.JSONRenderer()
    formatter = structlog.dev.default_exception_formatter
    if redact:
        formatter = _redacting_exception_formatter(formatter)
    return structlog.dev.ConsoleRenderer(exception_formatter=formatter)


def _redacting_exception_formatter(inner: ExceptionRenderer) -> ExceptionRenderer:
    """Wrap a console exception formatter so the traceback text it writes is redacted."""

    def format_exception(sio: TextIO, exc_info: ExcInfo) -> None:
        buffer = io.StringIO()
        inner(buffer, exc_info)
        sio.write(redact_text(buffer.getvalue()))

    return format_exception


def _install_handler(formatter: logging.Formatter, level: int) -> None:
    """Put one handler of ours on the root logger, replacing a previous one."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _CurrentStderrHandler)]:
        root.removeHandler(handler)
    handler = _CurrentStderrHandler()
    handler.setFormatter(formatter)
    root.addHandler(handler)
    root.setLevel(level)
