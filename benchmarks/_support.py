"""What the case modules share: the measured functions, section baselines, and imports
that turn a missing feature or peer into an "n/a" row instead of a crash."""

from __future__ import annotations

import functools
import importlib
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks._harness import Case, Phase, SyncBench, UnavailableError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from contextlib import ExitStack

# Far above what any case can reach, so the limiters are measured admitting, never
# rejecting: at 1,000,000/second a fast fixed window could fill within a 0.2 s repeat.
HUGE_RATE = "1000000000/second"
HUGE_RATE_AMOUNT = 1_000_000_000
ARGUMENT = 1
PHASES: tuple[tuple[Phase, str], ...] = (("plain", "no SDK"), ("sdk", "SDK tracer, no exporter"))
#: The middlewares' options with every feature on (sections 9 and 13): request id, span,
#: access log (one INFO line per request, rendered to devnull by `configure_structlog_filtered`)
#: and error shield are defaults; these switch on the limits.
EDGE_ALL_ON: dict[str, object] = {
    "rate_limit": HUGE_RATE,
    "max_in_flight": 1000,
    "timeout": 30.0,
    "max_body_size": 1_000_000,
}


def work(x: int) -> int:
    """The protected function: as cheap as a call gets, so overheads stand out."""
    return x


async def awork(x: int) -> int:
    return x


def bind(function: Callable[[int], object]) -> SyncBench:
    """A zero-argument callable; every case calls through the same partial, baseline too."""
    return functools.partial(function, ARGUMENT)


def abind(function: Callable[[int], Awaitable[object]]) -> SyncBench:
    return functools.partial(function, ARGUMENT)


def resilient_api(name: str, module: str = "resilient") -> Any:
    """A name of resilient's: one the benchmarks use and cannot find is a defect, not a missing
    peer, so its case becomes a failed row and the run exits non-zero."""
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise LookupError(f"{module}.{name} is gone (moved or renamed?)") from exc


def peer(module: str) -> Any:
    """A peer's module, or UnavailableError naming the distribution that is missing."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise UnavailableError(f"not installed: {module}") from exc


def resilient_decorator(**options: object) -> Callable[[Callable[..., Any]], Any]:
    decorator: Callable[..., Callable[[Callable[..., Any]], Any]] = resilient_api("resilient")
    return decorator(**options)


def breaker(name: str) -> object:
    return resilient_api("CircuitBreaker")(name=name)


def raw_case(section: str, *, is_async: bool = False, phase: Phase = "plain") -> Case:
    """The section's baseline: the bare function through the same partial."""

    def setup(_stack: ExitStack) -> SyncBench:
        return abind(awork) if is_async else bind(work)

    return Case(section=section, name="raw call", tag="raw", setup=setup, is_async=is_async, baseline=True, phase=phase)


def configure_structlog_filtered() -> None:
    """A production-style structlog setup: JSON lines, debug filtered out, loggers cached.

    Lines that do pass the filter (an access log, say) are rendered and written to devnull:
    their cost is measured, and the table stays readable. JSON rather than structlog's
    default console renderer, because that is what a service runs with.
    """
    structlog = peer("structlog")
    sink = Path(os.devnull).open("w")  # noqa: SIM115 - open for the whole process
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        logger_factory=structlog.PrintLoggerFactory(sink),
        cache_logger_on_first_use=True,
    )


def install_otel_sdk() -> None:
    """Install an SDK tracer and meter provider with no exporter or reader, once."""
    trace = peer("opentelemetry.trace")
    metrics = peer("opentelemetry.metrics")
    sdk_trace = peer("opentelemetry.sdk.trace")
    sdk_metrics = peer("opentelemetry.sdk.metrics")
    trace.set_tracer_provider(sdk_trace.TracerProvider())
    metrics.set_meter_provider(sdk_metrics.MeterProvider())


def sdk_tracer() -> Any:
    return peer("opentelemetry.trace").get_tracer("benchmarks")
