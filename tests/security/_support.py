"""What the security tests share: the secrets, and everything the library wrote, as text.

A secret counts as leaked if its first `PREFIX` characters appear anywhere: masking may
keep the last four characters of a long secret (``***wxyz``), never its beginning.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from resilient.instrumentation._log import LOGGER_NAME

__all__ = ["BEARER", "COOKIE", "PASSWORD", "QUERY_TOKEN", "LogSink", "leaked", "spans_text"]

# Fake credentials that must never show up in a response, a log line or a span.
BEARER = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2VjcmV0LXNpZ25hdHVyZS12YWx1ZQ"
PASSWORD = "Tr0ub4dor-and-3-horse-battery"  # noqa: S105
COOKIE = "s3ss10n-7f1d0b3c9a2e4d5f8a6b"
QUERY_TOKEN = "qt-9b8a7c6d5e4f3a2b1c0d"  # noqa: S105
PREFIX = 12


def leaked(text: str, *secrets: str) -> list[str]:
    """The secrets (by their first PREFIX characters) that occur in `text`."""
    return [secret for secret in secrets if secret[:PREFIX] in text]


class LogSink:
    """Every line the library logged during a test, through the stdlib or through structlog."""

    def __init__(self, kind: str, caplog: pytest.LogCaptureFixture, entries: list[dict[str, object]]) -> None:
        self.kind = kind
        self._caplog = caplog
        self._entries = entries

    def lines(self) -> list[str]:
        """One text per log event: the message, its fields and any formatted exception."""
        if self.kind == "structlog":
            return [repr(entry) for entry in self._entries]
        formatter = logging.Formatter()
        out = []
        for record in self._caplog.records:
            if not record.name.startswith(LOGGER_NAME):
                continue
            text = f"{record.getMessage()} {getattr(record, LOGGER_NAME, '')!r}"
            if record.exc_info:
                text += formatter.formatException(record.exc_info)
            out.append(text)
        return out

    def text(self) -> str:
        return "\n".join(self.lines())


def _span_texts(span: ReadableSpan) -> Iterable[str]:
    yield span.name
    yield repr(dict(span.attributes or {}))
    yield str(span.status.description)
    for event in span.events:
        yield event.name
        yield repr(dict(event.attributes or {}))


def spans_text(exporter: InMemorySpanExporter) -> str:
    """Names, attributes, status descriptions and events of every finished span, as text."""
    return "\n".join(text for span in exporter.get_finished_spans() for text in _span_texts(span))
