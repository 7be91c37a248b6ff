"""Shared fixtures: telemetry capture, Redis, and a clean slate of global state per test.

OpenTelemetry lets a process set its global providers once, and `resilient` reads the
global ones. So the SDK providers are installed once for the session but *switched off*
in the library for every test, which therefore runs the no-SDK fast path; the `spans`
and `metric_reader` fixtures switch them on for the tests that look at telemetry.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Generator, Iterator
from inspect import iscoroutinefunction

import pytest
import structlog
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from resilient import instrumentation, testing
from resilient._kernel.clock import CLOCK
from resilient.instrumentation._hub import HUB

#: Fixtures of the shared-storage tests (`prefix`, `uri`, `client`), in one place.
pytest_plugins = ["tests._redis_fixtures"]

_EXPORTER = InMemorySpanExporter()
_TRACER_PROVIDER = TracerProvider()
_TRACER_PROVIDER.add_span_processor(SimpleSpanProcessor(_EXPORTER))
trace.set_tracer_provider(_TRACER_PROVIDER)

_METRIC_READER = InMemoryMetricReader()
metrics.set_meter_provider(MeterProvider(metric_readers=[_METRIC_READER]))


@pytest.hookimpl(hookwrapper=True, trylast=True)
def pytest_pycollect_makeitem(collector: pytest.Collector, name: str, obj: object) -> Generator[None, object, None]:
    """pytest-asyncio's auto mode, minus the tests anyio's plugin runs (`@pytest.mark.anyio`).

    pytest-asyncio runs in strict mode so that anyio-marked tests reach anyio (auto mode
    would run them on asyncio whatever their `anyio_backend`); this wrapper, inside
    pytest-asyncio's own, marks every other coroutine test `asyncio` before it looks.
    """
    outcome = yield
    del collector, name, obj
    items = outcome.get_result()  # type: ignore[attr-defined]
    for item in items if isinstance(items, list) else [items]:
        if (
            isinstance(item, pytest.Function)
            and iscoroutinefunction(getattr(getattr(item.obj, "hypothesis", None), "inner_test", item.obj))
            and item.get_closest_marker("anyio") is None
        ):
            item.add_marker("asyncio")


@pytest.fixture(autouse=True)
def _clean_global_state() -> Iterator[None]:
    """Every test starts with no breakers, no listeners, real waits and telemetry off."""
    instrumentation.configure(traces=False, metrics=False, logs=True)
    yield
    structlog.reset_defaults()  # capture_logs() leaves structlog marked as configured
    testing.forget_breakers()
    HUB.listeners = ()
    CLOCK.skip_waits, CLOCK.recorded, CLOCK.on_skipped_wait = False, None, None
    CLOCK.monotonic = time.monotonic
    instrumentation.configure(traces=False, metrics=False, logs=True)


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Turn tracing on against an in-memory exporter; yields the exporter (cleared)."""
    _EXPORTER.clear()
    instrumentation.configure(traces=True)
    yield _EXPORTER
    instrumentation.configure(traces=False)
    _EXPORTER.clear()


@pytest.fixture
def metric_reader() -> Iterator[InMemoryMetricReader]:
    """Turn metrics on; yields a reader whose `get_metrics_data()` holds what was recorded."""
    _METRIC_READER.get_metrics_data()  # drain what earlier tests left (cumulative: see helper)
    instrumentation.configure(metrics=True)
    yield _METRIC_READER
    instrumentation.configure(metrics=False)


@pytest.fixture
def events() -> Iterator[list[instrumentation.Event]]:
    """Collect every event the library emits during the test."""
    seen: list[instrumentation.Event] = []
    instrumentation.add_listener(seen.append)
    yield seen
    instrumentation.remove_listener(seen.append)


@pytest.fixture
def access() -> Iterator[list[instrumentation.Event]]:
    """The ``http.access`` events emitted during the test."""
    seen: list[instrumentation.Event] = []

    def keep(event: instrumentation.Event) -> None:
        if event.name == "http.access":
            seen.append(event)

    instrumentation.add_listener(keep)
    yield seen
    instrumentation.remove_listener(keep)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A real Redis: $REDIS_URL, else a private redis-server on a free port, else skip.

    Under CI=true a missing Redis fails the run instead of skipping it.
    """
    url = os.environ.get("REDIS_URL")
    if url:
        yield url
        return
    binary = shutil.which("redis-server")
    if binary is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true but no Redis: set REDIS_URL or install redis-server")
        pytest.skip("no Redis: set REDIS_URL or install redis-server")
    port = _free_port()
    with tempfile.TemporaryDirectory() as workdir:
        process = subprocess.Popen(  # noqa: S603 - fixed argv, loopback only
            [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no", "--dir", workdir],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            _wait_until_ready(process)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            process.terminate()
            process.wait(timeout=10)
            if process.stdout is not None:
                process.stdout.close()


def _wait_until_ready(process: subprocess.Popen[str]) -> None:
    """Read redis-server's log until it says it accepts connections (bounded)."""
    assert process.stdout is not None
    for _ in range(200):
        line = process.stdout.readline()
        if not line:
            pytest.fail(f"redis-server exited early with {process.wait(timeout=5)}")
        if "Ready to accept connections" in line:
            return
    pytest.fail("redis-server did not report readiness")
