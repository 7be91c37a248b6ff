"""Reading what the OpenTelemetry SDK's in-memory metric reader recorded, for assertions."""

from __future__ import annotations

from typing import Any

from opentelemetry.sdk.metrics.export import InMemoryMetricReader


def metric_points(reader: InMemoryMetricReader, name: str) -> dict[tuple[tuple[str, Any], ...], float]:
    """The current cumulative value of each attribute set of one metric (sum or histogram count)."""
    data = reader.get_metrics_data()
    found: dict[tuple[tuple[str, Any], ...], float] = {}
    if data is None:
        return found
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name != name:
                    continue
                for point in metric.data.data_points:
                    value = getattr(point, "value", None)  # a sum; a histogram has a count instead
                    counted = getattr(point, "count", 0) if value is None else value
                    found[tuple(sorted((point.attributes or {}).items()))] = float(counted)
    return found
