"""The transports' rejections as httpx exceptions: each is both the `resilient` error and an httpx one.

A caller's ``except httpx.HTTPError:`` (or ``httpx.TransportError``, ``httpx.TimeoutException``)
catches what the transport refused, and ``except resilient.CircuitOpenError:`` still does too,
with every field (`breaker`, `retry_after`, ...) and `.request` set. The core errors stay free of
httpx (`resilient._kernel.errors` never imports it): the twins live here and are made at the
transport's boundary, on the failure path only.

An open circuit, a rate limit and a full bulkhead are `httpx.TransportError`s, not a
`NetworkError`/`ConnectError`: no connection was tried, and code (or an outer retry) treating
network errors as transient must not retry a rejection. A deadline is an
`httpx.TimeoutException` (not `ReadTimeout` and co.: it bounds the whole request, not one
socket operation).
"""

from __future__ import annotations

import threading

import httpx

from resilient._kernel.errors import (
    BulkheadFullError,
    CircuitOpenError,
    DeadlineExceededError,
    RateLimitedError,
    ResilienceError,
)

__all__ = [
    "HTTPBulkheadFullError",
    "HTTPCircuitOpenError",
    "HTTPDeadlineExceededError",
    "HTTPRateLimitedError",
    "as_httpx_error",
]


class HTTPCircuitOpenError(CircuitOpenError, httpx.TransportError):
    """The host's breaker is open: a `resilient.CircuitOpenError` and an `httpx.TransportError`."""


class HTTPRateLimitedError(RateLimitedError, httpx.TransportError):
    """The client-side rate limit refused the request: a `resilient.RateLimitedError` and an `httpx.TransportError`."""


class HTTPBulkheadFullError(BulkheadFullError, httpx.TransportError):
    """No concurrency slot freed up in time: a `resilient.BulkheadFullError` and an `httpx.TransportError`."""


class HTTPDeadlineExceededError(DeadlineExceededError, httpx.TimeoutException):
    """The deadline ran out: a `resilient.DeadlineExceededError` (a `TimeoutError`) and an `httpx.TimeoutException`."""


_TWINS: dict[type[BaseException], type[BaseException]] = {
    CircuitOpenError: HTTPCircuitOpenError,
    RateLimitedError: HTTPRateLimitedError,
    BulkheadFullError: HTTPBulkheadFullError,
    DeadlineExceededError: HTTPDeadlineExceededError,
}
_TWINS_LOCK = threading.Lock()

for _cls in (HTTPCircuitOpenError, HTTPRateLimitedError, HTTPBulkheadFullError, HTTPDeadlineExceededError):
    _cls.__module__ = "resilient.httpx"


def _twin_of(cls: type[BaseException]) -> type[BaseException]:
    """The httpx twin of a `ResilienceError` class; one made (once) for a subclass the table lacks."""
    twin = _TWINS.get(cls)
    if twin is not None:
        return twin
    base = httpx.TimeoutException if issubclass(cls, DeadlineExceededError) else httpx.TransportError
    with _TWINS_LOCK:
        twin = _TWINS.get(cls)
        if twin is None:
            twin = type(f"HTTP{cls.__name__}", (cls, base), {"__module__": "resilient.httpx"})
            _TWINS[cls] = twin
    return twin


def as_httpx_error(error: BaseException, request: httpx.Request) -> BaseException:
    """`error` itself, or for a `resilient` rejection its httpx twin: same message, fields and traceback.

    httpx's own errors (and the user's) are returned as they are, the same object.
    """
    if not isinstance(error, ResilienceError) or isinstance(error, httpx.HTTPError):
        return error
    cls = _twin_of(type(error))
    twin = cls.__new__(cls, *error.args)
    twin.args = error.args
    twin.__dict__.update(error.__dict__)
    twin.request = request  # type: ignore[attr-defined]  # httpx.HTTPError's setter
    return twin.with_traceback(error.__traceback__)
