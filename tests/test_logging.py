"""Tests for resilient.logging: one structured output for structlog and stdlib logging."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pytest
import structlog
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

import resilient.logging
from resilient._kernel.context import REQUEST_ID
from resilient.instrumentation._hub import HUB
from resilient.instrumentation._log import LOGGER_NAME, EventLogger, _PublicConfig
from resilient.logging import add_request_id, add_trace_context, configure

if TYPE_CHECKING:
    from collections.abc import Iterator


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """Undo `configure` after each test so other tests see the default logging setup."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()
    for handler in root.handlers:
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)


def _json_lines(capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    """The JSON objects written to stderr since the last read."""
    return [json.loads(line) for line in capsys.readouterr().err.splitlines()]


def _our_handlers() -> list[logging.Handler]:
    """The root handlers installed by `configure`."""
    return [
        handler
        for handler in logging.getLogger().handlers
        if isinstance(handler, resilient.logging._CurrentStderrHandler)
    ]


def test_structlog_event_is_a_json_line_with_standard_fields(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A structlog event becomes one JSON line with timestamp, level, logger, event and fields."""
    configure(json=True)

    structlog.get_logger("app.orders").info("order placed", order_id=42)

    [line] = _json_lines(capsys)
    assert line["event"] == "order placed"
    assert line["level"] == "info"
    assert line["logger"] == "app.orders"
    assert line["order_id"] == 42
    assert datetime.fromisoformat(line["timestamp"]).utcoffset() == UTC.utcoffset(None)


def test_stdlib_record_comes_out_through_the_same_renderer(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A record from a plain stdlib logger gets the same JSON shape, extras included."""
    configure(json=True)

    logging.getLogger("sqlalchemy.engine").warning("pool %s exhausted", "main", extra={"size": 5})

    [line] = _json_lines(capsys)
    assert line["event"] == "pool main exhausted"
    assert line["level"] == "warning"
    assert line["logger"] == "sqlalchemy.engine"
    assert line["size"] == 5
    assert line["timestamp"].endswith("Z")


def test_trace_and_span_ids_match_the_active_span(capsys: pytest.CaptureFixture[str]) -> None:
    """Inside a span, both structlog and stdlib lines carry its trace and span ids in hex."""
    configure(json=True)
    span = TracerProvider().get_tracer(__name__).start_span("checkout")
    context = span.get_span_context()

    with trace.use_span(span, end_on_exit=True):
        structlog.get_logger("app").info("from structlog")
        logging.getLogger("lib").info("from stdlib")

    lines = _json_lines(capsys)
    assert len(lines) == 2
    for line in lines:
        assert line["trace_id"] == f"{context.trace_id:032x}"
        assert line["span_id"] == f"{context.span_id:016x}"


@pytest.mark.parametrize(
    ("trace_id", "span_id"),
    [(1, 1), (0x0AF7651916CD43DD8448EB211C80319C, 0x00F067AA0BA902B7), (2**128 - 1, 2**64 - 1)],
)
def test_trace_and_span_ids_keep_leading_zeros_and_full_width(trace_id: int, span_id: int) -> None:
    """Ids are always 32 and 16 lower-case hex digits, as OpenTelemetry formats them."""
    span = trace.NonRecordingSpan(trace.SpanContext(trace_id, span_id, is_remote=False))

    with trace.use_span(span):
        fields = add_trace_context(None, "info", {})

    assert fields == {"trace_id": trace.format_trace_id(trace_id), "span_id": trace.format_span_id(span_id)}
    assert (len(fields["trace_id"]), len(fields["span_id"])) == (32, 16)


def test_no_trace_fields_outside_a_span(capsys: pytest.CaptureFixture[str]) -> None:
    """Without an active span no trace_id or span_id is added."""
    configure(json=True)

    structlog.get_logger("app").info("no span")

    [line] = _json_lines(capsys)
    assert "trace_id" not in line
    assert "span_id" not in line


def test_request_id_from_context_is_added(capsys: pytest.CaptureFixture[str]) -> None:
    """The request id bound by the middleware appears on structlog and stdlib lines."""
    configure(json=True)
    token = REQUEST_ID.set("req-7f3a")
    try:
        structlog.get_logger("app").info("handling")
        logging.getLogger("lib").info("handling too")
    finally:
        REQUEST_ID.reset(token)

    assert [line["request_id"] for line in _json_lines(capsys)] == ["req-7f3a", "req-7f3a"]


def test_contextvars_are_merged_and_an_explicit_request_id_wins(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Fields bound with structlog.contextvars appear, and a bound request_id beats the default."""
    configure(json=True)
    token = REQUEST_ID.set("from-middleware")
    try:
        with structlog.contextvars.bound_contextvars(request_id="explicit", tenant="acme"):
            structlog.get_logger("app").info("bound")
    finally:
        REQUEST_ID.reset(token)

    [line] = _json_lines(capsys)
    assert line["request_id"] == "explicit"
    assert line["tenant"] == "acme"


def test_exception_is_a_structured_field_without_locals(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A logged exception is rendered as structured data, with local variables left out."""
    configure(json=True)
    api_key = "local-0123456789"  # a local variable that must not reach the log

    try:
        raise ValueError(len(api_key))
    except ValueError:
        structlog.get_logger("app").exception("failed")

    [line] = _json_lines(capsys)
    [exception] = line["exception"]
    assert exception["exc_type"] == "ValueError"
    assert exception["exc_value"] == "16"
    assert "local-0123456789" not in json.dumps(line)


def test_exception_message_is_redacted(capsys: pytest.CaptureFixture[str]) -> None:
    """A secret inside an exception message is masked in the rendered exception."""
    configure(json=True)

    try:
        raise ConnectionError("cannot reach postgres://app:s3cr3t@db/main")
    except ConnectionError:
        logging.getLogger("lib").exception("db down")

    [line] = _json_lines(capsys)
    assert line["exception"][0]["exc_value"] == "cannot reach postgres://app:***@db/main"


def test_bearer_token_field_is_redacted(capsys: pytest.CaptureFixture[str]) -> None:
    """A bearer token passed as a field is masked, keeping the scheme and the last 4 chars."""
    configure(json=True)

    structlog.get_logger("app").info("calling", authorization="Bearer 0123456789abcdefWXYZ")

    [line] = _json_lines(capsys)
    assert line["authorization"] == "Bearer ***WXYZ"


def test_redaction_can_be_turned_off(capsys: pytest.CaptureFixture[str]) -> None:
    """With redact=False fields are rendered as given."""
    configure(json=True, redact=False)

    structlog.get_logger("app").info("calling", api_key="0123456789abcdefWXYZ")

    [line] = _json_lines(capsys)
    assert line["api_key"] == "0123456789abcdefWXYZ"


def test_configure_twice_installs_one_handler(capsys: pytest.CaptureFixture[str]) -> None:
    """Calling configure again replaces its handler, so each event is written once."""
    configure(json=True)
    configure(json=True)

    logging.getLogger("lib").warning("once")

    assert len(_our_handlers()) == 1
    assert [line["event"] for line in _json_lines(capsys)] == ["once"]


def test_level_filters_both_apis(capsys: pytest.CaptureFixture[str]) -> None:
    """The level, given by name in any case, drops lower events from structlog and stdlib."""
    configure(json=True, level="warning")

    structlog.get_logger("app").info("dropped")
    logging.getLogger("lib").info("dropped too")
    structlog.get_logger("app").warning("kept")

    assert [line["event"] for line in _json_lines(capsys)] == ["kept"]


def test_unknown_level_fails_before_changing_anything() -> None:
    """An unknown level name raises a ValueError naming it, and no handler is installed."""
    with pytest.raises(ValueError, match=r"level must be .* got 'LOUD'"):
        configure(level="LOUD")

    assert _our_handlers() == []
    assert not structlog.is_configured()


def test_json_is_the_default_when_stderr_is_not_a_terminal(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """With json=None and a captured (non-TTY) stderr, the output is JSON."""
    configure()

    structlog.get_logger("app").info("auto")

    assert _json_lines(capsys)[0]["event"] == "auto"


def test_console_renderer_is_used_when_json_is_false(capsys: pytest.CaptureFixture[str]) -> None:
    """With json=False the output is the human-readable console format, still redacted."""
    configure(json=False)

    structlog.get_logger("app").info("pretty", api_key="0123456789abcdefWXYZ")

    err = capsys.readouterr().err
    assert "pretty" in err
    assert "0123456789abcdef" not in err
    assert not err.lstrip().startswith("{")


def test_console_traceback_text_is_redacted(capsys: pytest.CaptureFixture[str]) -> None:
    """In console mode, a secret inside a rendered traceback is masked too."""
    configure(json=False)

    try:
        raise RuntimeError("token=0123456789abcdefWXYZ rejected")
    except RuntimeError:
        structlog.get_logger("app").exception("failed")

    err = capsys.readouterr().err
    assert "RuntimeError" in err
    assert "0123456789abcdef" not in err


def test_add_trace_context_adds_nothing_without_a_valid_span() -> None:
    """The trace processor leaves the event alone outside a span."""
    assert add_trace_context(None, "info", {"event": "x"}) == {"event": "x"}


def test_add_request_id_keeps_an_existing_value() -> None:
    """The request-id processor never overwrites a request_id already in the event."""
    token = REQUEST_ID.set("from-context")
    try:
        assert add_request_id(None, "info", {"request_id": "mine"}) == {"request_id": "mine"}
        assert add_request_id(None, "info", {}) == {"request_id": "from-context"}
    finally:
        REQUEST_ID.reset(token)


def test_add_request_id_adds_nothing_when_unset() -> None:
    """Outside a request the event gets no request_id."""
    assert add_request_id(None, "info", {}) == {}


def test_event_level_check_follows_every_stdlib_change() -> None:
    """The check answers from the stdlib's cached verdicts: each way levels change still counts."""
    check = HUB.logger.is_enabled_for
    ours, root = logging.getLogger(LOGGER_NAME), logging.getLogger()
    saved = ours.level, ours.disabled, root.level
    try:
        ours.setLevel(logging.WARNING)
        assert (check(logging.DEBUG), check(logging.DEBUG), check(logging.WARNING)) == (False, False, True)
        ours.setLevel(logging.DEBUG)
        assert check(logging.DEBUG)
        logging.disable(logging.INFO)
        assert not check(logging.DEBUG)
        logging.disable(logging.NOTSET)
        ours.setLevel(logging.NOTSET)  # inherited: a change of the root's level counts too
        root.setLevel(logging.ERROR)
        assert not check(logging.WARNING)
        root.setLevel(logging.DEBUG)
        assert check(logging.WARNING)
        ours.disabled = True  # what dictConfig does to loggers it was not told about
        assert not check(logging.WARNING)
    finally:
        logging.disable(logging.NOTSET)
        ours.setLevel(saved[0])
        ours.disabled = saved[1]
        root.setLevel(saved[2])


def test_event_level_check_follows_structlog_being_configured() -> None:
    """Once the app configures structlog, its level decides; after a reset, the stdlib's again."""
    check = HUB.logger.is_enabled_for
    logging.getLogger(LOGGER_NAME).setLevel(logging.NOTSET)
    logging.getLogger().setLevel(logging.DEBUG)
    assert check(logging.INFO)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    assert not check(logging.INFO)
    structlog.reset_defaults()
    assert check(logging.INFO)


def test_event_level_check_follows_a_cached_structlog_logger() -> None:
    """A filtering logger cached on first use keeps its level: the check and the lines agree on it."""
    capture = structlog.testing.LogCapture()
    structlog.configure(
        processors=[capture],
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        cache_logger_on_first_use=True,
    )
    events = EventLogger()  # its own lazy proxy: the cache must not outlive this test
    assert (events.is_enabled_for(logging.INFO), events.is_enabled_for(logging.WARNING)) == (False, True)
    # Reconfigured, structlog keeps handing out the cached logger: the check still says WARNING.
    structlog.configure(processors=[capture], wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG))
    assert not events.is_enabled_for(logging.INFO)
    events.log(logging.INFO, "dropped", {})
    events.log(logging.ERROR, "kept", {})
    assert [entry["event"] for entry in capture.entries] == ["kept"]


def test_structlog_flag_has_a_public_fallback() -> None:
    """Should structlog drop its private configuration object, its public function answers."""
    fallback = _PublicConfig()
    assert fallback.is_configured is False
    structlog.configure()
    assert fallback.is_configured is True
