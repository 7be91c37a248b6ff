"""Every safeguard is visible: spans, metrics, log lines and listener events, sync and async."""

from __future__ import annotations

import logging
from collections.abc import Iterator, MutableMapping
from typing import Any

import pytest
import structlog
from opentelemetry import trace
from opentelemetry.sdk.metrics.export import AggregationTemporality, InMemoryMetricReader, Sum
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from resilient import CircuitBreaker, CircuitOpenError, Retry, instrumentation, testing
from resilient._kernel.context import REQUEST_ID
from resilient.instrumentation import Event
from resilient.instrumentation._hub import HUB

from ._metrics import metric_points
from ._scripts import MODES, Script, protect

RETRY = Retry(attempts=3, initial_delay=0.0, max_delay=0.0, budget=None)


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class Delta:
    """Metric values recorded between construction and `of()`."""

    def __init__(self, reader: InMemoryMetricReader, *names: str) -> None:
        self.reader = reader
        self.before = {name: metric_points(reader, name) for name in names}

    def of(self, name: str, **attrs: Any) -> float:
        after = metric_points(self.reader, name)
        wanted = {f"resilient.{key}": value for key, value in attrs.items()}
        total = 0.0
        for key, value in after.items():
            if all(item in key for item in wanted.items()):
                total += value - self.before[name].get(key, 0)
        return total


# ------------------------------------------------------------------ spans


def test_one_span_per_call_with_attempts_and_outcome(mode: str, spans: InMemorySpanExporter) -> None:
    """A retried success: one span named after the policy, attempts=3, a retry event per retry."""
    script = Script(ConnectionError("a"), ConnectionError("b"), "ok")
    assert protect(mode, script, name="payments", retry=RETRY)() == "ok"
    (span,) = spans.get_finished_spans()
    assert span.name == "payments"
    assert span.attributes is not None
    assert span.attributes["resilient.policy"] == "payments"
    assert span.attributes["resilient.attempts"] == 3
    assert span.attributes["resilient.outcome"] == "success"
    assert [event.name for event in span.events] == ["resilient.retry.scheduled"] * 2
    assert span.events[0].attributes is not None
    assert span.events[0].attributes["error.type"] == "ConnectionError"
    assert span.status.status_code is StatusCode.UNSET


def test_a_failed_call_sets_error_status_and_records_the_exception_once(mode: str, spans: InMemorySpanExporter) -> None:
    """The final failure marks the span as an error with `error.type` and one exception event."""
    script = Script(ConnectionError("down"))
    with pytest.raises(ConnectionError):
        protect(mode, script, name="dep", retry=RETRY, breaker=CircuitBreaker(name="dep"))()
    (span,) = spans.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes is not None
    assert span.attributes["error.type"] == "ConnectionError"
    assert span.attributes["resilient.outcome"] == "failure"
    assert span.attributes["resilient.breaker.state"] == "closed"
    assert [e.name for e in span.events].count("exception") == 1


def test_a_rejection_is_a_span_with_its_reason(mode: str, spans: InMemorySpanExporter) -> None:
    """An open circuit shows as outcome=rejected with the rejection reason."""
    call = protect(mode, Script(ConnectionError()), name="dep", breaker=CircuitBreaker(name="dep", failure_threshold=1))
    with pytest.raises(ConnectionError):
        call()
    with pytest.raises(CircuitOpenError):
        call()
    rejected = spans.get_finished_spans()[-1]
    assert rejected.attributes is not None
    assert rejected.attributes["resilient.outcome"] == "rejected"
    assert rejected.attributes["resilient.rejection"] == "circuit_open"
    assert rejected.attributes["error.type"] == "resilient.CircuitOpenError"


def test_the_span_is_current_inside_the_call(spans: InMemorySpanExporter) -> None:
    """Code inside the protected function runs under the policy's span (children nest)."""
    seen: list[int] = []
    call = protect("sync", Script("x"), name="outer")

    def inner() -> str:
        seen.append(trace.get_current_span().get_span_context().span_id)
        return "x"

    from resilient import Policy  # noqa: PLC0415

    Policy(name="outer").call(inner)
    call()
    outer = next(s for s in spans.get_finished_spans() if s.name == "outer")
    assert seen == [outer.context.span_id]


def test_no_span_and_no_observation_without_a_provider() -> None:
    """With tracing and metrics off (as without an SDK) the fast path allocates nothing."""
    assert HUB.begin_call("anything") is None


# ------------------------------------------------------------------ metrics


def test_calls_attempts_and_retries_are_counted(mode: str, metric_reader: InMemoryMetricReader) -> None:
    """Counters by outcome add up: calls == successes + failures + rejections + fallbacks."""
    delta = Delta(metric_reader, "resilient.calls", "resilient.retries", "resilient.attempt.duration")
    ok = protect(mode, Script(ConnectionError(), "ok"), name="m", retry=RETRY)
    bad = protect(mode, Script(ConnectionError()), name="m", retry=RETRY)
    assert ok() == "ok"
    with pytest.raises(ConnectionError):
        bad()
    assert delta.of("resilient.calls", policy="m", outcome="success") == 1
    assert delta.of("resilient.calls", policy="m", outcome="failure") == 1
    assert delta.of("resilient.calls", policy="m") == 2
    assert delta.of("resilient.retries", policy="m") == 3
    assert delta.of("resilient.attempt.duration", policy="m") == 5  # the histogram count is the attempt count
    assert delta.of("resilient.attempt.duration", policy="m", outcome="failure") == 4


def test_calls_is_a_monotonic_cumulative_sum_for_exporters(metric_reader: InMemoryMetricReader) -> None:
    """Counted in process and observed at collection: readers still get a monotonic counter."""
    protect("sync", Script("ok"), name="kind")()
    data = metric_reader.get_metrics_data()
    assert data is not None
    found = [
        metric
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        if metric.name == "resilient.calls"
    ]
    assert len(found) == 1
    assert isinstance(found[0].data, Sum)
    assert found[0].data.is_monotonic
    assert found[0].data.aggregation_temporality == AggregationTemporality.CUMULATIVE
    assert found[0].unit == "{call}"


def test_call_counts_beyond_the_cardinality_limit_go_to_the_overflow_set(
    monkeypatch: pytest.MonkeyPatch, metric_reader: InMemoryMetricReader
) -> None:
    """As in the SDK's own limit: new attribute sets past the limit are counted, not kept apart."""
    counts = HUB.otel.metrics().calls  # type: ignore[union-attr]
    monkeypatch.setattr(type(counts), "MAX_SETS", len(counts._counts) + 1)
    delta = Delta(metric_reader, "resilient.calls")
    for index in range(3):
        protect("sync", Script("ok"), name=f"overflow-{index}")()
    assert delta.of("resilient.calls", policy="overflow-0") == 1
    assert delta.of("resilient.calls", policy="overflow-1") == 0
    overflow_set = (("otel.metric.overflow", True),)
    counted = metric_points(metric_reader, "resilient.calls").get(overflow_set, 0)
    assert counted - delta.before["resilient.calls"].get(overflow_set, 0) == 2


def test_breaker_state_gauge_and_transitions(metric_reader: InMemoryMetricReader) -> None:
    """The state gauge reads 2 when open and transitions are counted."""
    delta = Delta(metric_reader, "resilient.breaker.transitions", "resilient.breaker.rejections")
    call = protect(
        "sync", Script(ConnectionError()), name="g", breaker=CircuitBreaker(name="gauge", failure_threshold=1)
    )
    with pytest.raises(ConnectionError):
        call()
    with pytest.raises(CircuitOpenError):
        call()
    assert delta.of("resilient.breaker.transitions", breaker="gauge") == 1
    assert delta.of("resilient.breaker.rejections", policy="g") == 1
    gauge = metric_points(metric_reader, "resilient.breaker.state")
    assert gauge[(("resilient.breaker", "gauge"),)] == 2


# ------------------------------------------------------------------ logs


@pytest.fixture
def captured() -> Iterator[list[MutableMapping[str, Any]]]:
    with structlog.testing.capture_logs() as logs:
        yield logs


def test_events_are_logged_through_structlog_with_stable_names(
    mode: str, captured: list[MutableMapping[str, Any]]
) -> None:
    """An app using structlog gets `retry.scheduled` etc. with their fields, policy and error type."""
    with pytest.raises(ConnectionError):
        protect(mode, Script(ConnectionError("down")), name="db", retry=RETRY)()
    names = [entry["event"] for entry in captured]
    assert names == ["retry.scheduled", "retry.scheduled", "retry.exhausted"]
    assert captured[0]["policy"] == "db"
    assert captured[0]["attempt"] == 1
    assert captured[0]["error_type"] == "ConnectionError"
    assert captured[0]["log_level"] == "info"
    assert captured[-1]["log_level"] == "warning"


def test_log_lines_carry_trace_and_request_ids(
    spans: InMemorySpanExporter, captured: list[MutableMapping[str, Any]]
) -> None:
    """Each event has the trace id of the active span and the request id in context."""
    token = REQUEST_ID.set("req-123")
    try:
        with pytest.raises(ConnectionError):
            protect("sync", Script(ConnectionError()), name="t", retry=RETRY)()
    finally:
        REQUEST_ID.reset(token)
    (span,) = spans.get_finished_spans()
    assert {entry["trace_id"] for entry in captured} == {format(span.context.trace_id, "032x")}
    assert {entry["request_id"] for entry in captured} == {"req-123"}


def test_secrets_in_error_messages_are_redacted_in_logs(captured: list[MutableMapping[str, Any]]) -> None:
    """A token in an exception message never reaches the log line."""
    secret = "Bearer abcdefghijklmnopqrstuvwxyz123456"  # noqa: S105 - a fake token to redact
    with pytest.raises(ConnectionError):
        protect("sync", Script(ConnectionError(f"auth failed: {secret}")), retry=RETRY)()
    assert captured
    assert all("abcdefghijklmnop" not in str(entry) for entry in captured)


def test_stdlib_logging_users_see_the_events(caplog: pytest.LogCaptureFixture) -> None:
    """Without structlog configured, events reach the stdlib logger `resilient`."""
    caplog.set_level(logging.INFO, logger="resilient")
    with pytest.raises(ConnectionError):
        protect("sync", Script(ConnectionError("down")), name="std", retry=RETRY)()
    records = [r for r in caplog.records if r.name == "resilient"]
    assert [r.getMessage().split()[0] for r in records] == ["retry.scheduled", "retry.scheduled", "retry.exhausted"]
    assert "policy='std'" in records[0].getMessage()
    assert records[0].resilient["attempt"] == 1  # type: ignore[attr-defined]
    assert records[-1].levelno == logging.WARNING


def test_a_healthy_service_logs_nothing_at_info(caplog: pytest.LogCaptureFixture) -> None:
    """Successful calls emit no log lines at all."""
    caplog.set_level(logging.DEBUG, logger="resilient")
    call = protect("sync", Script("ok"), retry=RETRY, breaker=CircuitBreaker(name="quiet"), rate_limit="100/second")
    for _ in range(10):
        call()
    assert [r for r in caplog.records if r.name.startswith("resilient")] == []


def test_logs_can_be_switched_off(caplog: pytest.LogCaptureFixture) -> None:
    """`instrumentation.configure(logs=False)` silences the library's own log lines."""
    caplog.set_level(logging.INFO, logger="resilient")
    instrumentation.configure(logs=False)
    with pytest.raises(ConnectionError):
        protect("sync", Script(ConnectionError()), retry=RETRY)()
    assert [r for r in caplog.records if r.name == "resilient"] == []


# ------------------------------------------------------------------ hooks


def test_listeners_receive_every_event(mode: str, events: list[Event]) -> None:
    """A listener sees breaker transitions with the breaker name and the causing error."""
    call = protect(
        mode, Script(ConnectionError("x")), name="hooked", breaker=CircuitBreaker(name="hk", failure_threshold=1)
    )
    with pytest.raises(ConnectionError):
        call()
    opened = [e for e in events if e.name == "breaker.opened"]
    assert len(opened) == 1
    assert opened[0].policy == "hooked"
    assert opened[0].fields["breaker"] == "hk"
    assert isinstance(opened[0].error, ConnectionError)


def test_a_broken_listener_never_breaks_the_call(caplog: pytest.LogCaptureFixture) -> None:
    """A listener that raises is logged and ignored; the call's outcome is unchanged."""

    def broken(event: Event) -> None:
        raise RuntimeError("listener bug")

    instrumentation.add_listener(broken)
    script = Script(ConnectionError(), "ok")
    with caplog.at_level(logging.ERROR, logger="resilient.instrumentation"):
        assert protect("sync", script, retry=RETRY)() == "ok"
    assert any("listener" in r.getMessage() for r in caplog.records)


def test_breaker_reset_is_observable(events: list[Event]) -> None:
    """Resetting breakers for tests emits breaker.closed."""
    call = protect("sync", Script(ConnectionError()), breaker=CircuitBreaker(name="r", failure_threshold=1))
    with pytest.raises(ConnectionError):
        call()
    testing.reset_breakers()
    assert events[-1].name == "breaker.closed"


def test_a_failing_fallback_still_ends_the_span(mode: str, spans: InMemorySpanExporter) -> None:
    """If the fallback handler raises, the span ends with its error and no context leaks."""

    def broken(exc: BaseException) -> str:
        raise RuntimeError("cache down too")

    with pytest.raises(RuntimeError):
        protect(mode, Script(ConnectionError()), name="fb", fallback=broken)()
    (span,) = spans.get_finished_spans()
    assert span.attributes is not None
    assert span.attributes["error.type"] == "RuntimeError"
    assert not trace.get_current_span().get_span_context().is_valid


def test_exception_events_on_spans_are_redacted(spans: InMemorySpanExporter) -> None:
    """The recorded exception's message and stack trace carry no secret."""
    secret = "Bearer abcdefghijklmnopqrstuvwxyz123456"  # noqa: S105 - a fake token to redact
    with pytest.raises(ConnectionError):
        protect("sync", Script(ConnectionError(f"auth failed: {secret}")), name="r")()
    (span,) = spans.get_finished_spans()
    (event,) = [e for e in span.events if e.name == "exception"]
    assert event.attributes is not None
    assert "abcdefghijklmnop" not in str(event.attributes["exception.message"])
    assert "abcdefghijklmnop" not in str(event.attributes["exception.stacktrace"])
    assert "ConnectionError" in str(event.attributes["exception.stacktrace"])


def test_transition_metrics_name_the_new_state(metric_reader: InMemoryMetricReader) -> None:
    """`resilient.breaker.transitions` carries the state entered: open, half-open, closed."""
    delta = Delta(metric_reader, "resilient.breaker.transitions")
    call = protect("sync", Script(ConnectionError()), name="tr", breaker=CircuitBreaker(name="tr", failure_threshold=1))
    with pytest.raises(ConnectionError):
        call()
    assert delta.of("resilient.breaker.transitions", breaker="tr", **{"breaker.state": "open"}) == 1
