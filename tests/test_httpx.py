"""resilient.httpx: the sync and async transports, one scenario table, a real server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import email.utils
import logging
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, StatusCode, TraceFlags

import resilient.httpx as rh
from resilient import CircuitBreaker, CircuitOpenError, Fallback, Policy, RateLimitedError, Retry, deadline, testing
from resilient._kernel.context import REQUEST_ID
from resilient._strategies.breaker_registry import _REGISTRY
from resilient.httpx._engine import _context_getter
from resilient.httpx._hosts import Hosts
from resilient.instrumentation import Event
from resilient.testing import Fault, FaultyUpstream

MODES = ["sync", "async"]
TIMEOUTS = (httpx.TimeoutException, TimeoutError)
BROKEN = (httpx.ReadError, httpx.RemoteProtocolError)


class Driver:
    """One client, sync or async, driven from a sync test (the async one on its own loop)."""

    def __init__(self, mode: str, **options: Any) -> None:
        self.mode = mode
        self.closed = False
        self._loop = asyncio.new_event_loop() if mode == "async" else None
        self.client: httpx.Client | httpx.AsyncClient = (
            rh.async_client(**options) if mode == "async" else rh.client(**options)
        )

    @property
    def transport(self) -> rh.ResilientTransport | rh.AsyncResilientTransport:
        transport = self.client._transport
        assert isinstance(transport, rh.ResilientTransport | rh.AsyncResilientTransport)
        return transport

    def request(self, method: str, url: str, **options: Any) -> httpx.Response:
        if isinstance(self.client, httpx.Client):
            return self.client.request(method, url, **options)
        assert self._loop is not None
        return self._loop.run_until_complete(self.client.request(method, url, **options))

    def run(self, work: Callable[[Any], Any]) -> Any:
        """Run `work(client)` (a coroutine for the async client) and return its result."""
        result = work(self.client)
        if self._loop is not None:
            return self._loop.run_until_complete(result)
        return result

    def close(self) -> None:
        """Close the client (and the async one's loop); idempotent."""
        if self.closed:
            return
        self.closed = True
        if isinstance(self.client, httpx.Client):
            self.client.close()
            return
        assert self._loop is not None
        self._loop.run_until_complete(self.client.aclose())
        self._loop.close()


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest) -> str:
    """Each test runs once with the sync transport and once with the async one."""
    return str(request.param)


@pytest.fixture
def drivers(mode: str) -> Iterator[Callable[..., Driver]]:
    """A factory of clients in the test's mode, all closed after the test."""
    made: list[Driver] = []

    def make(**options: Any) -> Driver:
        options.setdefault("httpx_timeout", 5.0)
        made.append(Driver(mode, **options))
        return made[-1]

    yield make
    for driver in made:
        driver.close()


def closed_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- the scenario table


@dataclass(frozen=True)
class Scenario:
    """Faults in order, the request, and what the caller and the upstream must see."""

    id: str
    faults: list[Fault]
    method: str = "GET"
    headers: dict[str, str] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    status: int | None = 200  # None: an exception of type `raises`
    raises: tuple[type[BaseException], ...] = ()
    upstream_calls: int = 1
    min_waits: tuple[float, ...] = ()  # recorded backoff delays must be at least these


SCENARIOS = [
    Scenario("success", [Fault.ok()]),
    Scenario("reset-before-answer", [Fault.reset(), Fault.reset()], upstream_calls=3),
    Scenario("reset-mid-response", [Fault.reset(mid_response=True)], status=None, raises=BROKEN),
    Scenario("503-retry-after-seconds", [Fault.status(503, retry_after="1")], upstream_calls=2, min_waits=(1.0,)),
    Scenario("429-then-ok", [Fault.status(429)], upstream_calls=2),
    Scenario("502-504-then-ok", [Fault.status(502), Fault.status(504)], upstream_calls=3),
    Scenario("final-503-returned", [Fault.status(503)] * 3, status=503, upstream_calls=3),
    Scenario("500-not-retried", [Fault.status(500)], status=500),
    Scenario("404-not-retried", [Fault.status(404)], status=404),
    Scenario("post-not-retried", [Fault.status(503)], method="POST", status=503),
    Scenario(
        "post-with-idempotency-key-retried",
        [Fault.status(503)],
        method="POST",
        headers={"Idempotency-Key": "order-1"},
        upstream_calls=2,
    ),
    Scenario(
        "post-retried-when-opted-in",
        [Fault.reset()],
        method="POST",
        options={"retry_non_idempotent": True},
        upstream_calls=2,
    ),
    Scenario(
        "retry-after-beyond-max-not-retried",
        [Fault.status(503, retry_after="120")],
        status=503,
        options={"max_retry_after": 30.0},
    ),
    Scenario("slow-body", [Fault.slow_body(4, 0.02)]),
    Scenario("retries-off", [Fault.status(503)], status=503, options={"retry": False}),
    Scenario("custom-statuses", [Fault.status(500)], options={"retry_statuses": {500}}, upstream_calls=2),
]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.id)
def test_scenario(scenario: Scenario, drivers: Callable[..., Driver]) -> None:
    """Each fault shape ends as the table says: the caller's result, the upstream's count, the waits."""
    with FaultyUpstream(scenario.faults) as up, testing.no_wait() as waits:
        client = drivers(breaker=False, **scenario.options)
        if scenario.status is None:
            with pytest.raises(scenario.raises):
                client.request(scenario.method, up.url, headers=scenario.headers)
        else:
            response = client.request(scenario.method, up.url, headers=scenario.headers)
            assert response.status_code == scenario.status
            assert response.content  # the final response is a normal, readable response
        assert up.requests == scenario.upstream_calls
    assert len(waits) == scenario.upstream_calls - 1
    for waited, asked in zip(waits, scenario.min_waits, strict=False):
        assert waited >= asked


def test_connection_refused_is_retried_then_raised(drivers: Callable[..., Driver]) -> None:
    """A closed port fails every attempt with ConnectError, raised after the retries."""
    client = drivers(breaker=False, retry=3)
    with testing.no_wait() as waits, pytest.raises(httpx.ConnectError):
        client.request("GET", f"http://127.0.0.1:{closed_port()}/")
    assert len(waits) == 2


def test_retry_after_http_date_is_never_cut_short(drivers: Callable[..., Driver]) -> None:
    """A Retry-After HTTP-date is waited until: the recorded delay covers the time left to it."""
    when = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=4)
    with FaultyUpstream([Fault.status(503, retry_after=when)]) as up, testing.no_wait() as waits:
        before = time.time()
        response = drivers(breaker=False).request("GET", up.url)
        after = time.time()
    assert response.status_code == 200
    assert len(waits) == 1
    assert when.timestamp() - after <= waits[0] <= when.timestamp() - before + 0.001


def test_hang_fails_within_the_policy_timeout(drivers: Callable[..., Driver]) -> None:
    """A hanging upstream fails the request at the total timeout (clamped httpx timeouts or cancellation)."""
    with FaultyUpstream(default=Fault.hang(30)) as up:
        client = drivers(breaker=False, timeout=0.3)
        started = time.monotonic()
        with pytest.raises(TIMEOUTS):
            client.request("GET", up.url)
        assert time.monotonic() - started < 0.3 + 1.0


def test_deadline_scope_clamps_a_hanging_request(drivers: Callable[..., Driver]) -> None:
    """Inside `deadline.scope(0.2)` a hanging request fails within about 0.2 s, not httpx's 5 s."""
    with FaultyUpstream(default=Fault.hang(30)) as up:
        client = drivers(breaker=False)
        started = time.monotonic()
        with deadline.scope(0.2), pytest.raises(TIMEOUTS):
            client.request("GET", up.url)
        assert time.monotonic() - started < 0.2 + 1.0


def test_slow_body_keeps_streaming(drivers: Callable[..., Driver]) -> None:
    """`client.stream` gets the head at once and the body as it arrives: the transport reads nothing."""
    with FaultyUpstream([Fault.slow_body(3, 0.2)]) as up:
        client = drivers(breaker=False)
        started = time.monotonic()

        if client.mode == "sync":

            def work(c: Any) -> tuple[float, bytes]:
                with c.stream("GET", up.url) as response:
                    return time.monotonic() - started, response.read()
        else:

            async def awork(c: Any) -> tuple[float, bytes]:
                async with c.stream("GET", up.url) as response:
                    return time.monotonic() - started, await response.aread()

            work = awork  # type: ignore[assignment]
        head_after, body = client.run(work)
    assert body == b"xxx"
    assert head_after < 0.2  # the head came back before the first chunk's delay
    assert time.monotonic() - started >= 0.6


def test_streamed_request_body_is_not_retried(drivers: Callable[..., Driver]) -> None:
    """A request whose body is a generator is sent once: a consumed stream cannot be replayed."""

    def chunks() -> Iterator[bytes]:
        yield b"part"

    async def achunks() -> Any:
        yield b"part"

    with FaultyUpstream([Fault.status(503)]) as up, testing.no_wait():
        client = drivers(breaker=False)
        body = chunks() if client.mode == "sync" else achunks()
        response = client.request("PUT", up.url, content=body)
    assert response.status_code == 503
    assert up.requests == 1


# --- circuit breakers, one per host


def test_breaker_for_host_a_does_not_affect_host_b(drivers: Callable[..., Driver]) -> None:
    """Host A's breaker opens on its 5xx; requests to host B (another port) still go through."""
    template = CircuitBreaker(name="hosts", failure_threshold=2)
    with FaultyUpstream(default=Fault.status(503)) as a, FaultyUpstream() as b:
        client = drivers(breaker=template, retry=False)
        assert [client.request("GET", a.url).status_code for _ in range(2)] == [503, 503]
        with pytest.raises(CircuitOpenError) as rejected:
            client.request("GET", a.url)
        assert client.request("GET", b.url).status_code == 200
    assert a.requests == 2
    assert rejected.value.breaker == f"hosts:http://127.0.0.1:{a.port}"
    assert client.transport.breakers()[f"http://127.0.0.1:{b.port}"].state == "closed"


def test_breaker_ignores_client_errors_but_counts_429(drivers: Callable[..., Driver]) -> None:
    """4xx other than 429 do not count against the breaker; 429 does."""
    template = CircuitBreaker(name="fourxx", failure_threshold=2)
    with FaultyUpstream([Fault.status(404)] * 3 + [Fault.status(429)] * 2) as up:
        client = drivers(breaker=template, retry=False)
        statuses = [client.request("GET", up.url).status_code for _ in range(5)]
        with pytest.raises(CircuitOpenError):
            client.request("GET", up.url)
    assert statuses == [404, 404, 404, 429, 429]


def test_breaker_counts_transport_errors(drivers: Callable[..., Driver]) -> None:
    """Connection failures count: after the threshold the breaker fails fast without connecting."""
    client = drivers(breaker=CircuitBreaker(name="refused", failure_threshold=2), retry=False)
    url = f"http://127.0.0.1:{closed_port()}/"
    for _ in range(2):
        with pytest.raises(httpx.ConnectError):
            client.request("GET", url)
    with pytest.raises(CircuitOpenError):
        client.request("GET", url)


def test_hosts_are_told_apart_without_httpx_private_parsed_url() -> None:
    """Per-host state keys on httpx's parsed URL when it has one, else on the public parts."""

    class PublicOnly:  # an httpx.URL as a release without `_uri_reference` would have it
        def __init__(self, url: str) -> None:
            parsed = httpx.URL(url)
            self.scheme, self.host, self.port = parsed.scheme, parsed.host, parsed.port

    hosts = Hosts(CircuitBreaker(name="fallback-keys"), max_hosts=10)
    a = hosts.get(PublicOnly("https://a.test/x"))  # type: ignore[arg-type]
    assert hosts.get(PublicOnly("https://a.test/y")) is a  # type: ignore[arg-type]
    assert hosts.get(PublicOnly("https://b.test/")) is not a  # type: ignore[arg-type]
    assert a.origin == "https://a.test:443"
    assert len(hosts) == 2


def test_hosts_keep_least_recently_used_order_when_one_host_repeats() -> None:
    """The most recent host is found without the dict; the order it is evicted in stays the same."""
    hosts = Hosts(None, max_hosts=2)
    a = hosts.get(httpx.URL("http://a.test/"))
    for url in ("http://b.test/", "http://b.test/1", "http://a.test/2", "http://a.test/3"):
        hosts.get(httpx.URL(url))
    assert hosts.get(httpx.URL("http://a.test/4")) is a
    c = hosts.get(httpx.URL("http://c.test/"))  # evicts b, used before a
    assert hosts.get(httpx.URL("http://a.test/5")) is a
    hosts.get(httpx.URL("http://b.test/"))  # a new b evicts c, used before a
    assert hosts.get(httpx.URL("http://a.test/")) is a
    assert hosts.get(httpx.URL("http://c.test/")) is not c
    assert len(hosts) == 2


def test_breakers_are_bounded_by_max_hosts() -> None:
    """Beyond `max_hosts`, the least recently used host's breaker is dropped (a scoped one from the registry too)."""
    transport = rh.ResilientTransport(
        httpx.MockTransport(lambda _request: httpx.Response(200)),
        breaker=CircuitBreaker(name="lru"),
        breaker_scope="lru",
        max_hosts=2,
    )
    with httpx.Client(transport=transport) as client:
        for host in ("a", "b", "a", "c"):
            client.get(f"http://{host}.example/")
        assert sorted(transport.breakers()) == ["http://a.example:80", "http://c.example:80"]
        assert "lru:http://b.example:80" not in _REGISTRY
        assert "lru:http://a.example:80" in _REGISTRY
    assert not [name for name in _REGISTRY if name.startswith("lru:")]  # closed: its last user gave them back


# --- propagation


def test_deadline_trace_context_and_request_id_are_forwarded(drivers: Callable[..., Driver]) -> None:
    """The remaining budget, the caller's traceparent and the request id reach the upstream."""
    parent = SpanContext(trace_id=0x1234, span_id=0x5678, is_remote=True, trace_flags=TraceFlags(1))
    token = otel_context.attach(trace.set_span_in_context(NonRecordingSpan(parent)))
    request_id = REQUEST_ID.set("req-42")
    try:
        with FaultyUpstream() as up, deadline.scope(5.0):
            drivers(breaker=False).request("GET", up.url)
    finally:
        REQUEST_ID.reset(request_id)
        otel_context.detach(token)
    headers = up.received[0].headers
    assert 0 < int(headers[deadline.HEADER]) <= 5000
    assert headers["traceparent"] == f"00-{0x1234:032x}-{0x5678:016x}-01"
    assert headers["x-request-id"] == "req-42"


def test_trace_context_and_request_id_each_travel_alone(drivers: Callable[..., Driver]) -> None:
    """Without an SDK, propagation is skipped only when there is neither a context nor a request id."""
    parent = SpanContext(trace_id=0x1234, span_id=0x5678, is_remote=True, trace_flags=TraceFlags(1))
    token = otel_context.attach(trace.set_span_in_context(NonRecordingSpan(parent)))
    try:
        with FaultyUpstream() as up:
            drivers(breaker=False).request("GET", up.url)
    finally:
        otel_context.detach(token)
    request_id = REQUEST_ID.set("req-7")
    try:
        with FaultyUpstream() as up_id:
            drivers(breaker=False).request("GET", up_id.url)
    finally:
        REQUEST_ID.reset(request_id)
    with FaultyUpstream() as up_none:
        drivers(breaker=False).request("GET", up_none.url)
    assert "traceparent" in up.received[0].headers
    assert "x-request-id" not in up.received[0].headers
    assert up_id.received[0].headers["x-request-id"] == "req-7"
    assert "traceparent" not in up_id.received[0].headers
    assert not {"traceparent", "x-request-id"} & set(up_none.received[0].headers)


def test_current_context_is_read_through_the_public_api_for_another_runtime(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The runtime's ContextVar is read directly only for the default contextvars runtime."""
    assert _context_getter() is not otel_context.get_current  # the default runtime
    monkeypatch.setattr(otel_context, "_RUNTIME_CONTEXT", object())
    assert _context_getter() is otel_context.get_current


def test_headers_set_by_the_caller_are_never_replaced(drivers: Callable[..., Driver]) -> None:
    """A caller's own X-Request-ID, traceparent and deadline header go out unchanged."""
    mine = {"X-Request-ID": "mine", "traceparent": "00-" + "a" * 32 + "-" + "b" * 16 + "-01", deadline.HEADER: "7"}
    request_id = REQUEST_ID.set("ours")
    try:
        with FaultyUpstream() as up, deadline.scope(5.0):
            drivers(breaker=False).request("GET", up.url, headers=mine)
    finally:
        REQUEST_ID.reset(request_id)
    headers = up.received[0].headers
    assert (headers["x-request-id"], headers["traceparent"], headers[deadline.HEADER]) == (
        "mine",
        mine["traceparent"],
        "7",
    )


def test_no_deadline_header_without_a_deadline(drivers: Callable[..., Driver]) -> None:
    """Without an active deadline no budget header is invented."""
    with FaultyUpstream() as up:
        drivers(breaker=False).request("GET", up.url)
    assert deadline.HEADER not in up.received[0].headers


# --- connections


def open_fds() -> int:
    """File descriptors open in this process now."""
    return sum(1 for _ in Path("/proc/self/fd").iterdir())


@pytest.mark.slow
def test_connections_return_to_the_pool_after_many_failures(drivers: Callable[..., Driver]) -> None:
    """1,000 requests failing with 503 (retried, then returned) leak no connection and no socket."""
    max_connections = 4
    limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=2)
    with FaultyUpstream(default=Fault.status(503)) as up, testing.no_wait():
        before = open_fds()
        client = drivers(breaker=False, limits=limits)
        statuses = {client.request("GET", up.url).status_code for _ in range(1000)}
        pool = client.transport._inner._pool  # type: ignore[union-attr]
        assert len(pool.connections) <= max_connections
        client.close()
        drivers_closed_fds = open_fds()
    assert statuses == {503}
    assert up.requests >= 1000
    assert drivers_closed_fds <= before + 5


def test_discarded_responses_are_closed() -> None:
    """Every response a retry discards is closed before the next attempt (large bodies unread)."""
    closed: list[int] = []

    class Body(httpx.SyncByteStream):
        def __init__(self, index: int) -> None:
            self.index = index

        def __iter__(self) -> Iterator[bytes]:
            yield b"x"

        def close(self) -> None:
            closed.append(self.index)

    calls = iter(range(3))

    def respond(_request: httpx.Request) -> httpx.Response:
        index = next(calls)
        return httpx.Response(503 if index < 2 else 200, stream=Body(index))

    transport = rh.ResilientTransport(httpx.MockTransport(respond), breaker=False)
    with testing.no_wait(), httpx.Client(transport=transport) as client:
        assert client.get("http://a.example/").status_code == 200
    assert closed[:2] == [0, 1]


# --- telemetry


def test_span_per_logical_request_with_semconv_attributes(
    drivers: Callable[..., Driver], spans: InMemorySpanExporter
) -> None:
    """One CLIENT span per request, carrying the HTTP attributes and the resend count."""
    with FaultyUpstream([Fault.status(503)]) as up, testing.no_wait():
        drivers(breaker=False).request("GET", f"{up.url}/orders?token=s3cret&page=2")
    (span,) = [s for s in spans.get_finished_spans() if s.kind is SpanKind.CLIENT]
    attributes = dict(span.attributes or {})
    assert span.name == "GET"
    assert attributes["http.request.method"] == "GET"
    assert attributes["url.full"] == f"{up.url}/orders?token=***&page=2"
    assert (attributes["server.address"], attributes["server.port"]) == ("127.0.0.1", up.port)
    assert attributes["http.response.status_code"] == 200
    assert attributes["http.request.resend_count"] == 1
    assert "s3cret" not in str(span.to_json())


def test_span_records_the_error_type(drivers: Callable[..., Driver], spans: InMemorySpanExporter) -> None:
    """A request that raised ends its span with `error.type` and an error status."""
    with testing.no_wait(), pytest.raises(httpx.ConnectError):
        drivers(breaker=False, retry=False).request("GET", f"http://127.0.0.1:{closed_port()}/")
    (span,) = spans.get_finished_spans()
    assert (span.attributes or {})["error.type"] == "httpx.ConnectError"
    assert span.status.status_code is StatusCode.ERROR


def test_traceparent_names_the_client_span(drivers: Callable[..., Driver], spans: InMemorySpanExporter) -> None:
    """With an SDK the propagated traceparent carries the CLIENT span's own id."""
    with FaultyUpstream() as up:
        drivers(breaker=False).request("GET", up.url)
    (span,) = spans.get_finished_spans()
    assert f"{span.context.span_id:016x}" in up.received[0].headers["traceparent"]


def test_one_log_event_per_request(drivers: Callable[..., Driver], events: list[Event]) -> None:
    """Each request reports one `http.request` event: DEBUG on success, INFO on a final 5xx."""
    with FaultyUpstream([Fault.ok(), Fault.status(503)]) as up:
        client = drivers(breaker=False, retry=False)
        client.request("GET", f"{up.url}/a?api_key=k")
        client.request("GET", up.url)
    requests = [e for e in events if e.name == rh.EVENT_REQUEST]
    assert [(e.level, e.fields["status"], e.fields["attempts"]) for e in requests] == [
        (logging.DEBUG, 200, 1),
        (logging.INFO, 503, 1),
    ]
    assert requests[0].fields["url"].endswith("/a?api_key=***")
    assert requests[0].fields["method"] == "GET"
    assert requests[0].fields["duration"] >= 0


def test_fail_fast_requests_are_logged_at_debug(drivers: Callable[..., Driver], events: list[Event]) -> None:
    """During an outage the breaker's rejections log at DEBUG: one WARNING per opening, not per request."""
    client = drivers(breaker=CircuitBreaker(name="quiet-outage", failure_threshold=1), retry=False)
    url = f"http://127.0.0.1:{closed_port()}/"
    with pytest.raises(httpx.ConnectError):
        client.request("GET", url)
    for _ in range(5):
        with pytest.raises(CircuitOpenError):
            client.request("GET", url)
    levels = [e.level for e in events if e.name == rh.EVENT_REQUEST]
    assert levels == [logging.WARNING] + [logging.DEBUG] * 5
    assert [e.name for e in events if e.level >= logging.WARNING] == ["breaker.opened", rh.EVENT_REQUEST]


def calls_counted(reader: InMemoryMetricReader, name: str) -> dict[str, float]:
    """`resilient.calls` for one policy label, by outcome (cumulative)."""
    counted: dict[str, float] = {}
    data = reader.get_metrics_data()
    for resource in data.resource_metrics if data is not None else ():
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name != "resilient.calls":
                    continue
                for point in metric.data.data_points:
                    attributes = dict(point.attributes or {})
                    if attributes.get("resilient.policy") == name:
                        counted[str(attributes["resilient.outcome"])] = getattr(point, "value", 0)
    return counted


def test_requests_are_counted_in_the_library_metrics(
    mode: str, drivers: Callable[..., Driver], metric_reader: InMemoryMetricReader
) -> None:
    """Requests count in `resilient.calls` under the transport's name, by outcome."""
    with FaultyUpstream([Fault.ok(), Fault.status(503)]) as up:
        client = drivers(breaker=False, retry=False, name=f"metered-{mode}")
        client.request("GET", up.url)
        client.request("GET", up.url)
    counted = calls_counted(metric_reader, f"metered-{mode}")
    assert (counted["success"], counted["failure"]) == (1, 1)


# --- options


def test_rate_limit_per_host(drivers: Callable[..., Driver]) -> None:
    """With `rate_limit_scope="host"` each host has its own client-side limit."""
    with FaultyUpstream() as a, FaultyUpstream() as b:
        client = drivers(breaker=False, rate_limit="2/minute")
        client.request("GET", a.url)
        client.request("GET", a.url)
        with pytest.raises(RateLimitedError):
            client.request("GET", a.url)
        assert client.request("GET", b.url).status_code == 200


def test_rate_limit_per_client(drivers: Callable[..., Driver]) -> None:
    """With `rate_limit_scope="client"` one limit covers every host."""
    with FaultyUpstream() as a, FaultyUpstream() as b:
        client = drivers(breaker=False, rate_limit="2/minute", rate_limit_scope="client")
        client.request("GET", a.url)
        client.request("GET", b.url)
        with pytest.raises(RateLimitedError):
            client.request("GET", b.url)


def test_policy_drives_the_transport(drivers: Callable[..., Driver]) -> None:
    """A `Policy` supplies the retry (with its response predicate) and the breaker template."""
    policy = Policy(
        name="orders-api",
        retry=Retry(attempts=2, on_result=lambda response: response.status_code == 500),
        breaker=CircuitBreaker(name="orders-api"),
    )
    with FaultyUpstream([Fault.status(500)]) as up, testing.no_wait():
        client = drivers(policy=policy)
        assert client.request("GET", up.url).status_code == 200
    assert up.requests == 2
    assert f"http://127.0.0.1:{up.port}" in client.transport.breakers()


def test_read_with_retries_recovers_a_body_read_error(mode: str) -> None:
    """The helper repeats a request whose body broke after the transport returned (httpx-retries#29)."""
    with FaultyUpstream([Fault.reset(mid_response=True)]) as up, testing.no_wait():
        if mode == "sync":
            with rh.client(breaker=False) as client:
                response = rh.read_with_retries(client, "GET", up.url)
        else:

            async def fetch() -> httpx.Response:
                async with rh.async_client(breaker=False) as client:
                    return await rh.aread_with_retries(client, "GET", up.url)

            response = asyncio.run(fetch())
    assert (response.status_code, response.text, up.requests) == (200, "ok", 2)


def test_read_with_retries_refuses_non_idempotent_requests() -> None:
    """Repeating a POST without an Idempotency-Key is refused up front."""
    with rh.client() as client, pytest.raises(ValueError, match="idempotent"):
        rh.read_with_retries(client, "POST", "http://a.example/")


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"retry_statuses": {700}}, ValueError, "retry_statuses"),
        ({"retry_statuses": "503"}, TypeError, "retry_statuses"),
        ({"retry_methods": {"GET", ""}}, ValueError, "retry_methods"),
        ({"rate_limit_scope": "world"}, ValueError, "rate_limit_scope must be 'host' or 'client'"),
        ({"max_hosts": 0}, ValueError, "max_hosts must be >= 1"),
        ({"max_retry_after": -1}, ValueError, "max_retry_after"),
        ({"retry_non_idempotent": "yes"}, TypeError, "retry_non_idempotent"),
        ({"breaker": "orders"}, TypeError, "breaker must be True, False, None or a CircuitBreaker"),
        ({"policy": Policy(retry=2), "retry": 3}, ValueError, "either policy= or the shorthands"),
        ({"policy": Policy(fallback=Fallback(None))}, ValueError, "policy.fallback"),
        ({"retry_afterwards": 1}, TypeError, "unknown option"),
        ({"retry": 0}, ValueError, "retry.attempts must be >= 1"),
    ],
)
def test_bad_options_fail_at_construction(options: dict[str, Any], error: type[Exception], match: str) -> None:
    """Invalid options raise when the transport is built, naming the field and what is allowed."""
    with pytest.raises(error, match=match):
        rh.ResilientTransport(httpx.MockTransport(lambda _request: httpx.Response(200)), **options)


def test_wrong_inner_transport_kind_is_rejected() -> None:
    """An async inner transport under the sync transport (and vice versa) is refused."""
    with pytest.raises(TypeError, match=r"httpx\.BaseTransport"):
        rh.ResilientTransport(httpx.AsyncHTTPTransport())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"httpx\.AsyncBaseTransport"):
        rh.AsyncResilientTransport(httpx.HTTPTransport())  # type: ignore[arg-type]


def test_retry_after_parsing() -> None:
    """Retry-After: delta-seconds, HTTP-dates (rounded up to the ms), junk ignored."""
    from resilient.httpx._rules import parse_retry_after  # noqa: PLC0415 - private helper under test

    now = 1_700_000_000.0
    date = email.utils.formatdate(now + 2.5, usegmt=True)  # HTTP-dates have whole seconds
    assert parse_retry_after("1") == 1.0
    assert parse_retry_after(" 2 ") == 2.0
    assert parse_retry_after("0.0001") == 0.001
    assert parse_retry_after(date, now=now) == 2.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=now) == 0.0
    for junk in ("", "-1", "soon", "nan", "inf", "x" * 100):
        assert parse_retry_after(junk) is None
    assert parse_retry_after("1e999") == 2**31  # too large to represent: RFC 9110's cap, not "no wait asked"
