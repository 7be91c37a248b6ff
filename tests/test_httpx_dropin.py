"""resilient.httpx as a drop-in transport: what a client sees is what plain httpx shows, plus the policy.

One table per promise, each row run with the sync and the async transport: context managers
reach the inner transport, every rejection is an `httpx.HTTPError` with `.request`, httpx's own
errors come out as httpx raised them, a client's breakers are its own unless a scope is named,
the final response is the ordinary one, and nothing after the response arrived leaks it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Self

import anyio
import httpx
import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

import resilient.httpx as rh
from resilient import (
    Bulkhead,
    BulkheadFullError,
    CircuitBreaker,
    CircuitOpenError,
    DeadlineExceededError,
    Policy,
    RateLimitedError,
    ResilienceError,
    Retry,
    deadline,
    testing,
)
from resilient.instrumentation import Event
from resilient.testing import Fault, FaultyUpstream

MODES = ["sync", "async"]
URL = "http://api.example/orders"

Handler = Callable[[httpx.Request], Any]


@pytest.fixture
def anyio_backend() -> str:
    """asyncio for now; the backend list is the one place to add trio."""
    return "asyncio"


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest) -> str:
    """Each test runs with the sync transport and with the async one."""
    return str(request.param)


def client_for(mode: str, inner: Any, **options: Any) -> httpx.Client | httpx.AsyncClient:
    """An httpx client of `mode` over a resilient transport wrapping `inner`."""
    if mode == "sync":
        return httpx.Client(transport=rh.ResilientTransport(inner, **options))
    return httpx.AsyncClient(transport=rh.AsyncResilientTransport(inner, **options))


def plain_for(mode: str, inner: Any) -> httpx.Client | httpx.AsyncClient:
    """The same client without resilient: the reference behaviour."""
    return httpx.Client(transport=inner) if mode == "sync" else httpx.AsyncClient(transport=inner)


def inner_for(mode: str, handler: Handler | None = None) -> Any:
    """A MockTransport, or httpx's real transport when `handler` is None."""
    if handler is None:
        return httpx.HTTPTransport() if mode == "sync" else httpx.AsyncHTTPTransport()
    return httpx.MockTransport(handler)


async def send(client: httpx.Client | httpx.AsyncClient, url: str = URL, **options: Any) -> httpx.Response:
    """`client.get(url)`, awaited for an async client."""
    if isinstance(client, httpx.AsyncClient):
        return await client.get(url, **options)
    return client.get(url, **options)


async def close(client: httpx.Client | httpx.AsyncClient) -> None:
    """Close either kind of client."""
    if isinstance(client, httpx.AsyncClient):
        await client.aclose()
    else:
        client.close()


async def raised(client: httpx.Client | httpx.AsyncClient, url: str = URL) -> BaseException:
    """The exception `send` raises (the test fails if it returns)."""
    try:
        response = await send(client, url)
    except Exception as error:
        return error
    pytest.fail(f"expected an exception, got {response!r}")


def status(code: int, **headers: str) -> Handler:
    """A handler answering `code` to every request."""
    return lambda _request: httpx.Response(code, headers=headers, text="body")


# --- context managers


class SpyTransport(httpx.MockTransport):
    """A MockTransport recording the context-manager and close calls httpx makes on it."""

    def __init__(self) -> None:
        super().__init__(status(200))
        self.calls: list[str] = []

    def __enter__(self) -> Self:
        self.calls.append("enter")
        return self

    def __exit__(self, *args: object) -> None:
        self.calls.append("exit")
        super().__exit__(*args)  # type: ignore[arg-type]

    def close(self) -> None:
        self.calls.append("close")

    async def __aenter__(self) -> Self:
        self.calls.append("aenter")
        return self

    async def __aexit__(self, *args: object) -> None:
        self.calls.append("aexit")
        await self.aclose()

    async def aclose(self) -> None:
        self.calls.append("aclose")


async def spy_calls(mode: str, wrap: Callable[[SpyTransport], Any]) -> list[str]:
    """Use a client over `wrap(spy)` as a context manager, then close it again; the spy's calls."""
    spy = SpyTransport()
    if mode == "sync":
        with httpx.Client(transport=wrap(spy)) as sync_client:
            sync_client.get(URL)
        sync_client._transport.close()
    else:
        async with httpx.AsyncClient(transport=wrap(spy)) as async_client:
            await async_client.get(URL)
        await async_client._transport.aclose()
    return spy.calls


@pytest.mark.anyio
async def test_context_managers_reach_the_inner_transport(mode: str) -> None:
    """`with client:` enters and exits the inner transport, and `close` reaches it, exactly as without resilient."""
    wrapper = rh.ResilientTransport if mode == "sync" else rh.AsyncResilientTransport
    plain = await spy_calls(mode, lambda spy: spy)
    wrapped = await spy_calls(mode, wrapper)
    assert plain == (["enter", "exit", "close", "close"] if mode == "sync" else ["aenter", "aexit", "aclose", "aclose"])
    assert wrapped == plain


# --- rejections are httpx errors


@dataclass(frozen=True)
class Rejection:
    """A way to make the transport refuse a request, and what the refusal must be."""

    id: str
    options: dict[str, Any]
    resilient_type: type[ResilienceError]
    httpx_type: type[httpx.HTTPError]
    fields: dict[str, Any] = field(default_factory=dict)
    modes: tuple[str, ...] = ("sync", "async")


REJECTIONS = [
    Rejection(
        "circuit-open",
        {"breaker": CircuitBreaker(name="dropin-open", failure_threshold=1), "retry": False},
        CircuitOpenError,
        httpx.TransportError,
        {"breaker": "dropin-open:http://api.example:80"},
    ),
    Rejection(
        "rate-limited",
        {"rate_limit": "1/minute", "breaker": False},
        RateLimitedError,
        httpx.TransportError,
        {"limit": "1/minute", "key": "http://api.example:80"},
    ),
    Rejection(
        "bulkhead-full",
        {"bulkhead": Bulkhead(max_concurrent=1, max_wait=0), "breaker": False},
        BulkheadFullError,
        httpx.TransportError,
        {"max_concurrent": 1},
    ),
    Rejection(
        "deadline-spent",
        {"breaker": False},
        DeadlineExceededError,
        httpx.TimeoutException,
        {"scope": "inherited"},
    ),
    Rejection(
        "total-timeout-cancels",
        {"timeout": 0.05, "breaker": False, "retry": False},
        DeadlineExceededError,
        httpx.TimeoutException,
        {"scope": "total"},
        modes=("async",),
    ),
]


async def provoke(mode: str, case: Rejection) -> tuple[BaseException, list[httpx.Response]]:
    """Make the transport refuse one request as `case` says; (the refusal, the responses before it)."""
    answered: list[httpx.Response] = []
    nested: list[BaseException] = []
    client: httpx.Client | httpx.AsyncClient

    def respond(request: httpx.Request) -> httpx.Response:
        if case.id == "bulkhead-full" and request.url.path == "/outer":  # a second request while this one runs
            assert isinstance(client, httpx.Client)
            with pytest.raises(httpx.HTTPError) as info:
                client.get(URL)
            nested.append(info.value)
        return httpx.Response(503 if case.id == "circuit-open" else 200)

    async def arespond(request: httpx.Request) -> httpx.Response:
        if case.id == "total-timeout-cancels":
            await anyio.sleep_forever()
        if case.id == "bulkhead-full" and request.url.path == "/outer":
            assert isinstance(client, httpx.AsyncClient)
            nested.append(await raised(client))
        return respond(request) if case.id != "bulkhead-full" else httpx.Response(200)

    client = client_for(mode, httpx.MockTransport(respond if mode == "sync" else arespond), **case.options)
    try:
        if case.id == "bulkhead-full":
            answered.append(await send(client, "http://api.example/outer"))
            return nested[0], answered
        if case.id == "deadline-spent":
            with testing.fake_clock() as clock, deadline.scope(1.0):
                clock.advance(2.0)
                return await raised(client), answered
        if case.id in {"circuit-open", "rate-limited"}:
            answered.append(await send(client))
        return await raised(client), answered
    finally:
        await close(client)


@pytest.mark.anyio
@pytest.mark.parametrize("case", REJECTIONS, ids=lambda case: case.id)
async def test_every_rejection_is_an_httpx_error_with_its_request(mode: str, case: Rejection) -> None:
    """Each refusal is caught by `except httpx.HTTPError`, carries `.request`, and stays the resilient error."""
    if mode not in case.modes:
        pytest.skip("a sync attempt cannot be cancelled: its timeouts are httpx's own")
    error, _answered = await provoke(mode, case)
    kinds = type(error).__mro__
    assert httpx.HTTPError in kinds
    assert case.httpx_type in kinds
    assert case.resilient_type in kinds
    assert httpx.NetworkError not in kinds  # no connection was tried: nothing to retry as transient
    assert getattr(error, "request").url.host == "api.example"  # noqa: B009 - not narrowed to httpx.HTTPError
    assert type(error).__module__ == "resilient.httpx"
    for name, value in case.fields.items():
        assert getattr(error, name) == value
    if case.resilient_type is DeadlineExceededError:
        assert TimeoutError in kinds
    assert str(error)  # the resilient message, not an empty httpx one


# --- httpx's own errors pass through


@dataclass(frozen=True)
class OwnError:
    """A request httpx itself fails, and the error type it fails with."""

    id: str
    url: str
    error: type[Exception]
    handler: Handler | None = None
    repeat: int = 1


def _gzip_garbage(_request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, headers={"content-encoding": "gzip"}, content=b"not gzip at all")


OWN_ERRORS = [
    OwnError("unsupported-protocol", "ftp://api.example/file", httpx.UnsupportedProtocol, repeat=7),
    OwnError("url-without-host", "http:///orders", httpx.UnsupportedProtocol, repeat=7),
    OwnError("invalid-url", "http://[::1/", httpx.InvalidURL),
    OwnError("decoding-error", URL, httpx.DecodingError, handler=_gzip_garbage),
]


@pytest.mark.anyio
@pytest.mark.parametrize("case", OWN_ERRORS, ids=lambda case: case.id)
async def test_httpx_own_errors_come_out_unchanged(mode: str, case: OwnError) -> None:
    """httpx's errors about the request keep their type and message, however often they repeat (no breaker opens)."""
    plain = plain_for(mode, inner_for(mode, case.handler))
    client = client_for(mode, inner_for(mode, case.handler))
    try:
        expected = await raised(plain, case.url)
        seen = [await raised(client, case.url) for _ in range(case.repeat)]
    finally:
        await close(plain)
        await close(client)
    assert type(expected) is case.error
    assert [(type(error), str(error)) for error in seen] == [(type(expected), str(expected))] * case.repeat


@pytest.mark.anyio
async def test_the_inner_transports_error_is_the_same_object_after_retries(mode: str) -> None:
    """A ConnectError that survives the retries reaches the caller as the very object the inner transport raised."""
    boom = httpx.ConnectError("refused")

    def refuse(_request: httpx.Request) -> httpx.Response:
        raise boom

    client = client_for(mode, httpx.MockTransport(refuse), breaker=False, retry=3)
    with testing.no_wait() as waits:
        error = await raised(client)
    await close(client)
    assert error is boom
    assert len(waits) == 2


# --- breaker scope


@pytest.mark.anyio
@pytest.mark.parametrize(("scope", "shared"), [(None, False), ("payments-api", True)])
async def test_one_clients_open_breaker_reaches_another_only_in_a_named_scope(
    mode: str, scope: str | None, shared: bool
) -> None:
    """Client A's open breaker fails client B's requests to the same host only when both name one scope."""
    template = CircuitBreaker(name="payments", failure_threshold=1)
    options: dict[str, Any] = {"breaker": template, "retry": False}
    if scope is not None:
        options["breaker_scope"] = scope
    failing = client_for(mode, httpx.MockTransport(status(503)), **options)
    healthy = client_for(mode, httpx.MockTransport(status(200)), **options)
    try:
        assert (await send(failing)).status_code == 503
        assert isinstance(await raised(failing), CircuitOpenError)
        if shared:
            error = await raised(healthy)
            assert isinstance(error, CircuitOpenError)
            assert isinstance(error, httpx.TransportError)
            assert error.breaker == "payments-api:http://api.example:80"
        else:
            assert (await send(healthy)).status_code == 200
    finally:
        await close(failing)
        await close(healthy)


def test_a_named_scope_in_redis_is_shared_across_processes(uri: str, prefix: str) -> None:
    """With a Redis storage, a scoped breaker opened by one process's client is open for a fresh process."""
    template = CircuitBreaker(name="payments", failure_threshold=1, storage=uri)
    options: dict[str, Any] = {"breaker": template, "retry": False, "breaker_scope": f"{prefix}-payments"}
    with httpx.Client(transport=rh.ResilientTransport(httpx.MockTransport(status(503)), **options)) as first:
        assert first.get(URL).status_code == 503
    testing.forget_breakers()  # what a new process starts with: an empty registry, the same Redis
    with (
        httpx.Client(transport=rh.ResilientTransport(httpx.MockTransport(status(200)), **options)) as second,
        pytest.raises(httpx.TransportError) as info,
    ):
        second.get(URL)
    assert isinstance(info.value, CircuitOpenError)
    assert info.value.breaker == f"{prefix}-payments:http://api.example:80"


@pytest.mark.parametrize(
    ("options", "match"),
    [
        (
            {"breaker": CircuitBreaker(name="api", storage="redis://127.0.0.1:6379/0")},
            "needs a name: pass breaker_scope",
        ),
        ({"breaker": False, "breaker_scope": "api"}, "breaker is off"),
        ({"breaker_scope": ""}, "breaker_scope"),
    ],
)
def test_bad_breaker_scope_fails_at_construction(options: dict[str, Any], match: str) -> None:
    """Shared storage without a scope, a scope without a breaker or an empty scope are refused when built."""
    with pytest.raises(ValueError, match=match):
        rh.ResilientTransport(httpx.MockTransport(status(200)), **options)


def test_one_scope_with_two_different_templates_is_refused() -> None:
    """A second transport joining a scope with other breaker settings is refused at construction."""
    first = rh.ResilientTransport(httpx.MockTransport(status(200)), breaker_scope="orders")
    with httpx.Client(transport=first) as client:
        client.get(URL)
        with pytest.raises(ValueError, match="breaker_scope 'orders' is already used"):
            rh.ResilientTransport(breaker=CircuitBreaker(name="httpx", failure_threshold=2), breaker_scope="orders")


# --- the final response is an ordinary one


@pytest.mark.anyio
async def test_the_response_after_retries_run_out_is_ordinary(mode: str) -> None:
    """The last 503 has `elapsed`, and under `client.stream` its raw body streams, as with plain httpx."""
    with FaultyUpstream(default=Fault.status(503)) as up, testing.no_wait():
        client = client_for(mode, inner_for(mode), breaker=False, retry=3)
        try:
            response = await send(client, up.url)
            assert response.status_code == 503
            assert response.elapsed.total_seconds() >= 0
            if isinstance(client, httpx.AsyncClient):
                async with client.stream("GET", up.url) as streamed:
                    raw = b"".join([chunk async for chunk in streamed.aiter_raw()])
            else:
                with client.stream("GET", up.url) as streamed:
                    raw = b"".join(streamed.iter_raw())
            assert streamed.elapsed.total_seconds() >= 0
        finally:
            await close(client)
    assert streamed.status_code == 503
    assert raw == response.content
    assert up.requests == 6


# --- nothing after the response leaks it


class JudgeBrokeError(Exception):
    """What a broken response predicate raises."""


def broken_judge(_response: httpx.Response) -> bool:
    """A `Retry.on_result` predicate that fails on every response."""
    raise JudgeBrokeError


@pytest.fixture
def one_connection() -> httpx.Limits:
    """A pool of one connection: a leaked response makes the next request wait for it."""
    return httpx.Limits(max_connections=1, max_keepalive_connections=1)


@pytest.mark.anyio
async def test_a_failure_after_the_response_arrived_returns_its_connection(
    mode: str, one_connection: httpx.Limits
) -> None:
    """A judge raising on the response closes it: the one-connection pool still serves the next request."""
    broken = [True]

    def judge(_response: httpx.Response) -> bool:
        if broken[0]:
            raise JudgeBrokeError
        return False

    policy = Policy(name="broken-judge", retry=Retry(attempts=2, on_result=judge))
    transport_class = httpx.HTTPTransport if mode == "sync" else httpx.AsyncHTTPTransport
    with FaultyUpstream(default=Fault.ok()) as up:
        client = client_for(mode, transport_class(limits=one_connection), policy=policy)
        client.timeout = httpx.Timeout(5.0, pool=1.0)
        try:
            for _ in range(3):
                assert isinstance(await raised(client, up.url), JudgeBrokeError)
            broken[0] = False
            assert (await send(client, up.url)).status_code == 200  # a leaked response: PoolTimeout here
        finally:
            await close(client)
    assert up.requests == 4


@pytest.mark.anyio
async def test_a_judge_raising_closes_the_response(mode: str) -> None:
    """The response whose judging failed is closed before the error propagates (sync and async)."""
    closed: list[bool] = []

    class Body(httpx.SyncByteStream, httpx.AsyncByteStream):
        def __iter__(self) -> Iterator[bytes]:
            yield b"x"

        async def __aiter__(self) -> Any:
            yield b"x"

        def close(self) -> None:
            closed.append(True)

        async def aclose(self) -> None:
            closed.append(True)

    policy = Policy(retry=Retry(attempts=2, on_result=broken_judge))
    client = client_for(mode, httpx.MockTransport(lambda _r: httpx.Response(200, stream=Body())), policy=policy)
    try:
        assert isinstance(await raised(client), JudgeBrokeError)
    finally:
        await close(client)
    assert closed == [True]


@pytest.mark.anyio
async def test_a_huge_retry_after_never_holds_the_connection(mode: str, one_connection: httpx.Limits) -> None:
    """`Retry-After: 1e306` answered three times leaves the one-connection pool free for the next request."""
    transport_class = httpx.HTTPTransport if mode == "sync" else httpx.AsyncHTTPTransport
    huge = Fault.status(503, retry_after="1e306")
    with FaultyUpstream([huge] * 3, default=Fault.ok()) as up, testing.no_wait():
        client = client_for(mode, transport_class(limits=one_connection), breaker=False)
        client.timeout = httpx.Timeout(5.0, pool=1.0)
        try:
            for _ in range(3):
                with contextlib.suppress(OverflowError):  # until `parse_retry_after` bounds it: closed all the same
                    await send(client, up.url)
            assert (await send(client, up.url)).status_code == 200
        finally:
            await close(client)


# --- telemetry names the status, and a returned 5xx is no warning


@pytest.mark.anyio
async def test_telemetry_names_the_status_not_an_internal_class(
    mode: str,
    events: list[Event],
    spans: InMemorySpanExporter,
    metric_reader: InMemoryMetricReader,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Retry events, their log lines, the span and the calls metric say error type "503", never StatusFailure."""
    label = f"status-named-{mode}"
    calls = iter([503, 503])
    client = client_for(mode, httpx.MockTransport(lambda _r: httpx.Response(next(calls))), name=label, retry=2)
    with testing.no_wait(), caplog.at_level(logging.INFO, logger="resilient"):
        try:
            assert (await send(client)).status_code == 503
        finally:
            await close(client)
    scheduled = [e for e in events if e.name == "retry.scheduled"]
    assert len(scheduled) == 1
    assert "error_type='503'" in caplog.text
    assert "StatusFailure" not in caplog.text
    (span,) = [s for s in spans.get_finished_spans() if s.kind is SpanKind.CLIENT]
    assert (span.attributes or {})["error.type"] == "503"
    assert [dict(e.attributes or {}).get("error.type") for e in span.events] == ["503"]
    assert _metric_error_types(metric_reader, label) == {"503"}


def _metric_error_types(reader: InMemoryMetricReader, label: str) -> set[str]:
    """The `error.type` values of `resilient.calls` points for one policy label."""
    found: set[str] = set()
    data = reader.get_metrics_data()
    for resource in data.resource_metrics if data is not None else ():
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points if metric.name == "resilient.calls" else ():
                    attributes = dict(point.attributes or {})
                    if attributes.get("resilient.policy") == label:
                        found.add(str(attributes.get("error.type")))
    return found


@pytest.mark.anyio
async def test_returned_5xx_are_not_warnings(mode: str, events: list[Event]) -> None:
    """A 503 handed back after its retries and a 500 log below WARNING (stderr stays quiet without logging setup)."""
    answers = iter([503, 503, 503, 500])
    client = client_for(mode, httpx.MockTransport(lambda _r: httpx.Response(next(answers))), breaker=False)
    with testing.no_wait():
        try:
            assert [(await send(client)).status_code for _ in range(2)] == [503, 500]
        finally:
            await close(client)
    requests = [e for e in events if e.name == rh.EVENT_REQUEST]
    assert [(e.level, e.fields["status"]) for e in requests] == [(logging.INFO, 503), (logging.INFO, 500)]
    assert [e.name for e in events if e.level >= logging.WARNING] == []
    assert [e.name for e in events if e.name == "retry.scheduled"] == ["retry.scheduled"] * 2
