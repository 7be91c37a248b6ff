"""Fixtures of the security tests: the library's log lines, whichever way the app logs."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
import structlog

from resilient.instrumentation._log import LOGGER_NAME

from ._support import LogSink


@pytest.fixture(params=["stdlib", "structlog"])
def log_sink(request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture) -> Iterator[LogSink]:
    """The library's log lines: from the stdlib fallback, or from an app that configured structlog."""
    if request.param == "structlog":
        with structlog.testing.capture_logs() as entries:
            yield LogSink("structlog", caplog, entries)  # type: ignore[arg-type]
    else:
        with caplog.at_level(logging.DEBUG, logger=LOGGER_NAME):
            yield LogSink("stdlib", caplog, [])
