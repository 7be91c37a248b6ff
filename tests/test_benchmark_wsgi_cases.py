"""Section 13's cases serve the request they claim to measure, each peer doing its job.

The timing runner asserts no figure, so a case whose middleware silently did nothing (a
limiter not mounted, a span not started) would print a flattering ratio unnoticed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from benchmarks import cases_wsgi
from benchmarks._support import EDGE_ALL_ON

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

pytest.importorskip("flask_limiter")
pytest.importorskip("opentelemetry.instrumentation.wsgi")


class Answer:
    """A `start_response` that keeps the status and the headers."""

    status = ""
    headers: dict[str, str]

    def __call__(self, status: str, headers: list[tuple[str, str]], _exc_info: Any = None) -> Any:
        self.status, self.headers = status, {name.lower(): value for name, value in headers}
        return cases_wsgi._write


def _serve(wraps: tuple[cases_wsgi.Wrap, ...]) -> tuple[Answer, bytes]:
    answer = Answer()
    body = cases_wsgi.drive(cases_wsgi.flask_app(wraps), answer)
    return answer, body


def test_bare_app_answers_ok() -> None:
    answer, body = _serve(())
    assert (answer.status, body) == ("200 OK", b"ok")


@pytest.mark.parametrize("access_log", [True, False])
def test_resilient_case_answers_with_its_request_id(access_log: bool) -> None:
    options = {**EDGE_ALL_ON, "access_log": access_log}
    answer, body = _serve((cases_wsgi.with_resilient(**options),))
    assert (answer.status, body) == ("200 OK", b"ok")
    assert len(answer.headers["x-request-id"]) == 32


# The cases run at a rate no benchmark reaches; at one a minute, the second request shows
# that the limiter each case mounts counts every request.
def test_resilient_case_rate_limit_counts_requests() -> None:
    options = {**EDGE_ALL_ON, "rate_limit": "1/minute"}
    app = cases_wsgi.flask_app((cases_wsgi.with_resilient(**options),))
    statuses = [_status(app) for _ in range(2)]
    assert statuses == ["200 OK", "429 Too Many Requests"]


def test_flask_limiter_case_counts_requests(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cases_wsgi, "HUGE_RATE", "1/minute")
    app = cases_wsgi.flask_app((cases_wsgi.with_flask_limiter,))
    statuses = [_status(app) for _ in range(2)]
    assert statuses == ["200 OK", "429 TOO MANY REQUESTS"]


def _status(app: Any) -> str:
    answer = Answer()
    cases_wsgi.drive(app, answer)
    return answer.status


def test_otel_case_emits_a_server_span(spans: InMemorySpanExporter) -> None:
    answer, body = _serve((cases_wsgi.with_otel,))
    assert (answer.status, body) == ("200 OK", b"ok")
    (span,) = spans.get_finished_spans()
    assert span.kind.name == "SERVER"
    assert (span.attributes or {}).get("http.request.method", (span.attributes or {}).get("http.method")) == "GET"
