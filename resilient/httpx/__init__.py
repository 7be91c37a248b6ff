"""httpx transports that add retries, per-host circuit breakers, deadlines and telemetry.

    import resilient.httpx

    with resilient.httpx.client(timeout=10.0, retry=3) as client:      # an httpx.Client
        client.get("https://api.example.com/orders")

    httpx.AsyncClient(transport=resilient.httpx.AsyncResilientTransport(retry=3))

A transport sits under every httpx feature (auth, cookies, redirects, event hooks,
mounts, streaming), so swapping it changes nothing else. Each logical request runs once
through the policy's layers (rate limit, bulkhead, total timeout, retry + budget); each
attempt consults the host's breaker, clamps httpx's timeouts to the deadline, sends the
remaining budget in `resilient.deadline.HEADER`, and turns a retryable status into a
`StatusFailure` so the retry loop and the breaker see it. The caller always gets a
normal `httpx.Response` back, even the last 503 after the retries ran out: the very object
the inner transport returned, unread. What the transport refuses (open circuit, rate limit,
full bulkhead, deadline) is raised as an httpx exception that is also the `resilient` one
(`HTTPCircuitOpenError`, ...); httpx's own errors pass through as they were raised.

This module does the I/O only; every decision lives in `resilient.httpx._engine` (per request),
`httpx._options`, `httpx._hosts` and `httpx._rules`, shared by the sync and the async transport.
"""

from __future__ import annotations

import functools
import time
from types import TracebackType
from typing import Any, Self, Unpack

import httpx

from resilient._engine.policy import Policy
from resilient._kernel.validate import check_int
from resilient._strategies.breaker import BreakerRuntime
from resilient._strategies.retry import Retry
from resilient.httpx._engine import EVENT_REQUEST, Engine, Exchange
from resilient.httpx._errors import (
    HTTPBulkheadFullError,
    HTTPCircuitOpenError,
    HTTPDeadlineExceededError,
    HTTPRateLimitedError,
)
from resilient.httpx._options import (
    DEFAULT_MAX_HOSTS,
    DEFAULT_MAX_RETRY_AFTER,
    OPTION_NAMES,
    TransportOptions,
    build_options,
)
from resilient.httpx._rules import (
    IDEMPOTENCY_KEY,
    IDEMPOTENT_METHODS,
    RETRY_STATUSES,
    TRANSIENT_ERRORS,
    StatusFailure,
)

__all__ = [
    "DEFAULT_MAX_HOSTS",
    "DEFAULT_MAX_RETRY_AFTER",
    "EVENT_REQUEST",
    "IDEMPOTENT_METHODS",
    "RETRY_STATUSES",
    "AsyncResilientTransport",
    "HTTPBulkheadFullError",
    "HTTPCircuitOpenError",
    "HTTPDeadlineExceededError",
    "HTTPRateLimitedError",
    "ResilientTransport",
    "StatusFailure",
    "TransportOptions",
    "aread_with_retries",
    "async_client",
    "client",
    "read_with_retries",
]

#: Bytes of a discarded error body read before closing it, so its connection is reused.
DRAIN_LIMIT = 65_536
#: httpx's own per-operation timeout used by `client()` / `async_client()` unless told otherwise.
DEFAULT_HTTPX_TIMEOUT = httpx.Timeout(5.0)


class ResilientTransport(httpx.BaseTransport):
    """An `httpx.BaseTransport` adding retries, per-host breakers, deadlines and telemetry.

    Wraps `transport` (default: a new `httpx.HTTPTransport()`): `with`, `close()` reach it.
    Takes a `policy` or the shorthands (see `TransportOptions`). Raises `HTTPCircuitOpenError`
    while the host's breaker is open, `HTTPRateLimitedError` / `HTTPBulkheadFullError` on
    rejection (`httpx.TransportError`s) and `HTTPDeadlineExceededError` (an
    `httpx.TimeoutException`), each also the `resilient` error of that name; otherwise returns
    the last response (whatever its status) or raises the last error, as httpx raised it.
    """

    def __init__(self, transport: httpx.BaseTransport | None = None, **options: Unpack[TransportOptions]) -> None:
        if transport is not None and not isinstance(transport, httpx.BaseTransport):
            raise TypeError(f"transport must be an httpx.BaseTransport (sync), got {transport!r}")
        self._engine = Engine(build_options(options))
        self._inner = transport if transport is not None else httpx.HTTPTransport()
        runner = self._engine.options.retrying.runner  # `once` shares it
        if runner is not None:  # thread mode: close what an attempt gets after its caller left
            runner.on_late = _close_late

    def breakers(self) -> dict[str, BreakerRuntime]:
        """The live breaker of each host seen recently, by origin (``http://host:80``)."""
        return self._engine.hosts.breakers()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Send `request` under the policy; the final response is returned whatever its status."""
        engine = self._engine
        exchange = engine.begin(request)
        compiled = exchange.compiled
        try:
            response: httpx.Response = compiled.sync_entry(
                compiled,
                engine.label,
                ResilientTransport._attempt,  # and self as an argument: a bound method is an object per request
                (self, exchange),
                {},
                exchange.obs,
                exchange.started,
            )
        except StatusFailure as last:  # the retries gave up on a status: its response is the answer
            response, exchange.pending = last.response, None
        except BaseException as error:
            _close_pending(exchange)
            raised = engine.fail(exchange, error)
            if raised is error:
                raise
            raise raised from error.__cause__  # the rejection's httpx twin, in its place
        try:
            engine.finish(exchange, response)
        except BaseException:
            response.close()
            raise
        return response

    def _attempt(self, exchange: Exchange) -> httpx.Response:
        if exchange.pending is not None:  # this attempt replaces the response a retry discarded
            _discard_pending(exchange)
        engine = self._engine
        probe = engine.before_attempt(exchange)
        started = time.monotonic() if engine.times_attempts else 0.0
        try:
            response = self._inner.handle_request(exchange.request)
        except BaseException as error:
            engine.attempt_failed(exchange, error, probe)
            raise
        try:
            failure = engine.judge(exchange, response, probe, started)
        except BaseException:  # whatever fails once the response is here must not keep its connection
            response.close()
            raise
        if failure is None:
            return response
        exchange.pending = response  # unread: it may yet be the final answer
        raise failure

    def __enter__(self) -> Self:
        """Enter the wrapped transport too (httpx enters a client's transports with the client)."""
        self._inner.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        """Exit the wrapped transport (which closes it) and drop the per-host state."""
        self._inner.__exit__(exc_type, exc_value, traceback)
        self._engine.hosts.clear()

    def close(self) -> None:
        """Close the wrapped transport (and its connection pool) and drop the per-host state."""
        self._inner.close()
        self._engine.hosts.clear()


class AsyncResilientTransport(httpx.AsyncBaseTransport):
    """The async twin of `ResilientTransport` for `httpx.AsyncClient`: same options, same behaviour.

    Timeouts cancel the attempt for real (the event loop's deadline watchdog), so a total deadline holds
    even while the server keeps the response back.
    """

    def __init__(self, transport: httpx.AsyncBaseTransport | None = None, **options: Unpack[TransportOptions]) -> None:
        if transport is not None and not isinstance(transport, httpx.AsyncBaseTransport):
            raise TypeError(f"transport must be an httpx.AsyncBaseTransport (async), got {transport!r}")
        self._engine = Engine(build_options(options))
        self._inner = transport if transport is not None else httpx.AsyncHTTPTransport()

    def breakers(self) -> dict[str, BreakerRuntime]:
        """The live breaker of each host seen recently, by origin (``http://host:80``)."""
        return self._engine.hosts.breakers()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send `request` under the policy; the final response is returned whatever its status."""
        engine = self._engine
        exchange = engine.begin(request)
        compiled = exchange.compiled
        try:
            response: httpx.Response = await compiled.async_entry(
                compiled,
                engine.label,
                AsyncResilientTransport._attempt,  # not a bound method, as in the sync twin
                (self, exchange),
                {},
                exchange.obs,
                exchange.started,
            )
        except StatusFailure as last:
            response, exchange.pending = last.response, None
        except BaseException as error:
            await _aclose_pending(exchange)
            raised = engine.fail(exchange, error)
            if raised is error:
                raise
            raise raised from error.__cause__
        try:
            engine.finish(exchange, response)
        except BaseException:
            await response.aclose()
            raise
        return response

    async def _attempt(self, exchange: Exchange) -> httpx.Response:
        if exchange.pending is not None:  # tested here: a coroutine per attempt costs more than the test
            await _adiscard_pending(exchange)
        engine = self._engine
        probe = engine.before_attempt(exchange)
        started = time.monotonic() if engine.times_attempts else 0.0
        try:
            response = await self._inner.handle_async_request(exchange.request)
        except BaseException as error:
            engine.attempt_failed(exchange, error, probe)
            raise
        try:
            failure = engine.judge(exchange, response, probe, started)
        except BaseException:
            await response.aclose()
            raise
        if failure is None:
            return response
        exchange.pending = response
        raise failure

    async def __aenter__(self) -> Self:
        """Enter the wrapped transport too (httpx enters a client's transports with the client)."""
        await self._inner.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        """Exit the wrapped transport (which closes it) and drop the per-host state."""
        await self._inner.__aexit__(exc_type, exc_value, traceback)
        self._engine.hosts.clear()

    async def aclose(self) -> None:
        """Close the wrapped transport (and its connection pool) and drop the per-host state."""
        await self._inner.aclose()
        self._engine.hosts.clear()


# ---------------------------------------------------------------------- discarded responses


def _close_pending(exchange: Exchange) -> None:
    pending, exchange.pending = exchange.pending, None
    if pending is not None:
        pending.close()


def _close_late(outcome: object) -> None:
    """Close the response of an attempt that finished after its caller gave up: its connection goes back."""
    response = outcome.response if isinstance(outcome, StatusFailure) else outcome
    if isinstance(response, httpx.Response):
        response.close()


async def _aclose_pending(exchange: Exchange) -> None:
    pending, exchange.pending = exchange.pending, None
    if pending is not None:
        await pending.aclose()


def _small_body(response: httpx.Response) -> bool:
    length = response.headers.get("content-length")
    return length is not None and length.isdigit() and int(length) <= DRAIN_LIMIT


def _discard_pending(exchange: Exchange) -> None:
    """Close the response a retry replaces; a small body is read first, so its connection is reused.

    Only a response known to be discarded is read: the final one reaches the caller untouched.
    A failure reading it only costs the keep-alive connection.
    """
    pending, exchange.pending = exchange.pending, None
    if pending is None:
        return
    try:
        if _small_body(pending):
            pending.read()
    except httpx.HTTPError:
        pass
    finally:
        pending.close()


async def _adiscard_pending(exchange: Exchange) -> None:
    pending, exchange.pending = exchange.pending, None
    if pending is None:
        return
    try:
        if _small_body(pending):
            await pending.aread()
    except httpx.HTTPError:
        pass
    finally:
        await pending.aclose()


# ---------------------------------------------------------------------- ready-made clients


def _split(options: dict[str, Any]) -> tuple[TransportOptions, dict[str, Any]]:
    """Separate the transport's options from `httpx.Client`'s."""
    ours = {key: options.pop(key) for key in list(options) if key in OPTION_NAMES}
    return ours, options  # type: ignore[return-value]


def client(
    *,
    transport: httpx.BaseTransport | None = None,
    limits: httpx.Limits | None = None,
    httpx_timeout: httpx.Timeout | float | None = DEFAULT_HTTPX_TIMEOUT,
    **options: Any,
) -> httpx.Client:
    """An `httpx.Client` over a `ResilientTransport`.

    Keywords in `TransportOptions` configure the transport (`timeout` is the policy's total
    deadline over all attempts and backoff); the others go to `httpx.Client` (`base_url`,
    `headers`, `auth`, ...). `httpx_timeout` is httpx's own per-operation timeout, clamped
    to the deadline on every attempt; `limits` sizes the default inner transport's pool.
    """
    ours, theirs = _split(options)
    inner = transport if transport is not None else httpx.HTTPTransport(limits=limits or httpx.Limits())
    return httpx.Client(transport=ResilientTransport(inner, **ours), timeout=httpx_timeout, **theirs)


def async_client(
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    limits: httpx.Limits | None = None,
    httpx_timeout: httpx.Timeout | float | None = DEFAULT_HTTPX_TIMEOUT,
    **options: Any,
) -> httpx.AsyncClient:
    """An `httpx.AsyncClient` over an `AsyncResilientTransport` (keywords as for `client`)."""
    ours, theirs = _split(options)
    inner = transport if transport is not None else httpx.AsyncHTTPTransport(limits=limits or httpx.Limits())
    return httpx.AsyncClient(transport=AsyncResilientTransport(inner, **ours), timeout=httpx_timeout, **theirs)


# ---------------------------------------------------------------------- body-read retries


@functools.lru_cache(maxsize=32)
def _body_read_policy(attempts: int) -> Policy:
    """One policy (and retry budget) per attempt count, built once."""
    return Policy(name="httpx.read", retry=Retry(attempts=attempts, on=TRANSIENT_ERRORS))


def _body_retry_policy(method: str, attempts: int, headers: Any) -> Policy:
    check_int("attempts", attempts, minimum=1)
    has_key = headers is not None and IDEMPOTENCY_KEY in httpx.Headers(headers)
    if attempts > 1 and method.upper() not in IDEMPOTENT_METHODS and not has_key:
        raise ValueError(
            "read_with_retries repeats whole requests: method must be idempotent (one of "
            f"{', '.join(sorted(IDEMPOTENT_METHODS))}) or carry an Idempotency-Key header, got {method!r}"
        )
    return _body_read_policy(attempts)


def read_with_retries(
    client: httpx.Client, method: str, url: httpx.URL | str, *, attempts: int = 3, **request_options: Any
) -> httpx.Response:
    """Send a request and read its body, repeating the whole request if reading the body fails.

    A transport returns as soon as the response head arrives, so an error while the body
    streams in (a reset mid-response) happens after it returned and no transport can retry
    it (httpx-retries#29). This runs ``client.request(method, url, **request_options)``,
    which reads the body, under a retry of transient errors (backoff, budget). Idempotent
    requests only; each attempt may itself be retried by the transport.
    """
    policy = _body_retry_policy(method, attempts, request_options.get("headers"))
    return policy.call(client.request, method, url, **request_options)


async def aread_with_retries(
    client: httpx.AsyncClient, method: str, url: httpx.URL | str, *, attempts: int = 3, **request_options: Any
) -> httpx.Response:
    """The async twin of `read_with_retries`."""
    policy = _body_retry_policy(method, attempts, request_options.get("headers"))
    return await policy.call_async(client.request, method, url, **request_options)
