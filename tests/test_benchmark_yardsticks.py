"""The benchmark's SERVER span yardsticks emit the spans their rows claim to measure.

A yardstick that drifted from what it stands for would mislead every ratio quoted against
it, and nothing else would notice: the timing runner asserts no figure.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from benchmarks import cases_web
from benchmarks._support import EDGE_ALL_ON

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

REQUIRED = {"http.request.method", "url.path", "url.scheme", "http.response.status_code"}


def _one_server_span(spans: InMemorySpanExporter, middleware: list[Any]) -> ReadableSpan:
    spans.clear()
    asyncio.run(cases_web.drive(cases_web.starlette_app(middleware)))
    (span,) = spans.get_finished_spans()
    return span


def test_bare_floor_carries_the_required_attributes_only(spans: InMemorySpanExporter) -> None:
    span = _one_server_span(spans, [(cases_web.span_floor_middleware, {})])
    assert span.name == "GET"
    assert dict(span.attributes or {}) == {
        "http.request.method": "GET",
        "url.path": "/",
        "url.scheme": "http",
        "http.response.status_code": 200,
    }


def test_floor_as_ours_carries_what_the_middleware_span_carries(spans: InMemorySpanExporter) -> None:
    floor = _one_server_span(spans, [(cases_web.span_floor_middleware, {"as_ours": True})])
    ours = _one_server_span(spans, [(cases_web.resilient_middleware, EDGE_ALL_ON)])
    assert floor.name == ours.name == "GET /"
    floor_attributes, our_attributes = dict(floor.attributes or {}), dict(ours.attributes or {})
    assert set(floor_attributes) == set(our_attributes) > REQUIRED
    # Same values, but for the request id, which the middleware makes up per request.
    del floor_attributes["resilient.request_id"], our_attributes["resilient.request_id"]
    assert floor_attributes == our_attributes
