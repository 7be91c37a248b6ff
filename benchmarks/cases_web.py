"""Sections 9-10: the ASGI middleware and the httpx transport, in process, no sockets.

ASGI apps are driven by calling them with a prebuilt scope, ``receive`` and ``send``, so
the figure is the middleware's own cost, not a server's or an HTTP client's.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from benchmarks._harness import Case, SyncBench
from benchmarks._support import EDGE_ALL_ON, HUGE_RATE, PHASES, peer, resilient_api, sdk_tracer

if TYPE_CHECKING:
    from contextlib import ExitStack

SCOPE: dict[str, Any] = {
    "type": "http",
    "asgi": {"version": "3.0", "spec_version": "2.3"},
    "http_version": "1.1",
    "method": "GET",
    "scheme": "http",
    "path": "/",
    "raw_path": b"/",
    "root_path": "",
    "query_string": b"",
    "client": ("127.0.0.1", 50000),
    "server": ("127.0.0.1", 8000),
}
HEADERS = ((b"host", b"bench.test"), (b"user-agent", b"benchmarks"), (b"accept", b"*/*"))
REQUEST_MESSAGE = {"type": "http.request", "body": b"", "more_body": False}
URL = "http://bench.test/"

MiddlewareSpec = tuple[Callable[[], Any], dict[str, Any]]


# 9. ASGI ----------------------------------------------------------------------------------


async def receive() -> dict[str, Any]:
    return REQUEST_MESSAGE


async def send(_message: dict[str, Any]) -> None:
    return None


# A request from a traced caller: what a service inside a traced system mostly receives.
TRACEPARENT = (b"traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")


async def drive(app: Callable[..., Any], headers: tuple[tuple[bytes, bytes], ...] = HEADERS) -> None:
    """One request through the app; scope and headers are copied as a server would build them."""
    await app({**SCOPE, "headers": list(headers)}, receive, send)


def starlette_app(middleware: list[MiddlewareSpec]) -> Any:
    starlette = peer("starlette.applications")
    routing, responses = peer("starlette.routing"), peer("starlette.responses")
    stack_middleware = peer("starlette.middleware")

    async def home(_request: Any) -> Any:
        return responses.PlainTextResponse("ok")

    app = starlette.Starlette(
        routes=[routing.Route("/", home)],
        middleware=[stack_middleware.Middleware(factory(), **options) for factory, options in middleware],
    )
    if any(factory is slowapi_middleware for factory, _ in middleware):
        app.state.limiter = slowapi_limiter()  # slowapi finds its limiter on the app state
    return app


def slowapi_limiter() -> Any:
    return peer("slowapi").Limiter(key_func=peer("slowapi.util").get_remote_address, default_limits=[HUGE_RATE])


def slowapi_middleware() -> Any:
    return peer("slowapi.middleware").SlowAPIASGIMiddleware


def otel_middleware() -> Any:
    return peer("opentelemetry.instrumentation.asgi").OpenTelemetryMiddleware


def correlation_id_middleware() -> Any:
    return peer("asgi_correlation_id").CorrelationIdMiddleware


def resilient_middleware() -> Any:
    return resilient_api("ResilientMiddleware", "resilient.asgi")


def asgi_setup(
    middleware: list[MiddlewareSpec], headers: tuple[tuple[bytes, bytes], ...] = HEADERS
) -> Callable[[ExitStack], SyncBench]:
    def setup(stack: ExitStack) -> SyncBench:
        return functools.partial(drive, starlette_app(middleware), headers)

    return setup


class SpanFloorMiddleware:
    """The least a tracing middleware can do: one SDK SERVER span with the attributes the HTTP
    semantic conventions require (method, path, scheme; the status at the end), nothing else.

    Not a product: a yardstick. Its overhead over the peers is the floor under any ratio a
    middleware that emits a conformant span can reach against them. With ``as_ours=True`` the
    span carries what resilient's does: the route (span name and ``http.route``), the four
    recommended attributes and the request id, so that the rest of our cost can be told apart
    from the span's content.
    """

    def __init__(self, app: Callable[..., Any], *, as_ours: bool = False) -> None:
        self.app = app
        self.tracer = sdk_tracer()
        # Found once, not per request: the floor must not pay for our lookups.
        self.trace, self.context = peer("opentelemetry.trace"), peer("opentelemetry.context")
        self.as_ours = as_ours

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        trace, context = self.trace, self.context
        method = scope["method"]
        attributes = {"http.request.method": method, "url.path": scope["path"], "url.scheme": scope["scheme"]}
        if self.as_ours:
            headers = dict(scope["headers"])
            attributes |= {
                "client.address": scope["client"][0],
                "network.protocol.version": scope["http_version"],
                "user_agent.original": headers[b"user-agent"].decode("latin-1"),
                "server.address": headers[b"host"].decode("latin-1").partition(":")[0],
                "resilient.request_id": FLOOR_REQUEST_ID,
            }
        span = self.tracer.start_span(method, kind=trace.SpanKind.SERVER, attributes=attributes)
        token = context.attach(trace.set_span_in_context(span))
        status = 0

        async def send_status(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            if self.as_ours:
                route = scope["route"].path
                span.update_name(f"{method} {route}")
                span.set_attributes({"http.route": route, "http.response.status_code": status})
            else:
                span.set_attribute("http.response.status_code", status)
            span.end()
            context.detach(token)


# A fixed id of the usual length: the yardstick pays for carrying one, not for making it.
FLOOR_REQUEST_ID = "0123456789abcdef0123456789abcdef"


def span_floor_middleware() -> Any:
    return SpanFloorMiddleware


class LogLineMiddleware:
    """One line per request through the app's structlog pipeline, with no field but the
    event name: what any access log written through that pipeline costs at the least.

    A yardstick, as `SpanFloorMiddleware` is. The pipeline is the benchmark's own
    (`benchmarks._support.configure_structlog_filtered`: timestamp, JSON, one write a line).
    """

    def __init__(self, app: Callable[..., Any]) -> None:
        self.app = app
        self.logger = peer("structlog").get_logger("benchmarks.access")

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        await self.app(scope, receive, send)
        self.logger.info("http.access")


def log_line_middleware() -> Any:
    return LogLineMiddleware


ASGI_COMBO = "asgi-correlation-id + slowapi + OTel ASGI"
SPAN_FLOORS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("floor: bare SDK SERVER span, by hand", {}),
    ("floor: SDK SERVER span with our attributes, by hand", {"as_ours": True}),
)
ASGI_PEERS = (ASGI_COMBO, "+ slowapi (ASGI middleware)", "+ OTel OpenTelemetryMiddleware")


def asgi_cases() -> list[Case]:
    cases: list[Case] = []
    variants: list[tuple[str, str, list[MiddlewareSpec], tuple[str, ...]]] = [
        ("bare Starlette app", "bare", [], ()),
        (
            "+ resilient.asgi.ResilientMiddleware (all on)",
            "",
            [(resilient_middleware, EDGE_ALL_ON)],
            ASGI_PEERS,
        ),
        (
            "+ ResilientMiddleware (all on but access_log)",
            "",
            [(resilient_middleware, {**EDGE_ALL_ON, "access_log": False})],
            ASGI_PEERS,
        ),
        ("floor: one app log line per request, by hand", "", [(log_line_middleware, {})], ()),
        ("+ slowapi (ASGI middleware)", "slowapi", [(slowapi_middleware, {})], ()),
        ("+ OTel OpenTelemetryMiddleware", "OTel", [(otel_middleware, {})], ()),
        (ASGI_COMBO, "combo", [(correlation_id_middleware, {}), (slowapi_middleware, {}), (otel_middleware, {})], ()),
    ]
    for phase, suffix in PHASES:
        section = f"9. ASGI request, in process, {suffix}"
        cases += [
            Case(
                section=section,
                name=name,
                tag=tag,
                baseline=not middleware,
                peers=peers,
                is_async=True,
                phase=phase,
                setup=asgi_setup(middleware),
            )
            for name, tag, middleware, peers in variants
        ]
        if phase == "sdk":
            cases += traced_caller_cases(section)
            cases += [
                Case(
                    section=section,
                    name=name,
                    peers=(ASGI_COMBO,),
                    is_async=True,
                    phase=phase,
                    setup=asgi_setup([(span_floor_middleware, options)]),
                )
                for name, options in SPAN_FLOORS
            ]
    return cases


ASGI_COMBO_TRACED = f"{ASGI_COMBO}, traced caller"


def traced_caller_cases(section: str) -> list[Case]:
    """The request carries a `traceparent`: each side's propagator has a parent to extract."""
    traced = (*HEADERS, TRACEPARENT)
    resilient_all_on: list[MiddlewareSpec] = [(resilient_middleware, EDGE_ALL_ON)]
    combo: list[MiddlewareSpec] = [(correlation_id_middleware, {}), (slowapi_middleware, {}), (otel_middleware, {})]
    return [
        Case(
            section=section,
            name="+ ResilientMiddleware (all on), traced caller",
            peers=(ASGI_COMBO_TRACED,),
            is_async=True,
            phase="sdk",
            setup=asgi_setup(resilient_all_on, traced),
        ),
        Case(
            section=section,
            name=ASGI_COMBO_TRACED,
            tag="combo traced",
            is_async=True,
            phase="sdk",
            setup=asgi_setup(combo, traced),
        ),
    ]


# 10. httpx --------------------------------------------------------------------------------


def respond(_request: Any) -> Any:
    return peer("httpx").Response(200, text="ok")


async def arespond(request: Any) -> Any:
    return respond(request)


def mock_transport(is_async: bool) -> Any:
    return peer("httpx").MockTransport(arespond if is_async else respond)


def plain(inner: Any) -> Any:
    return inner


def resilient_transport(is_async: bool) -> Callable[[Any], Any]:
    name = "AsyncResilientTransport" if is_async else "ResilientTransport"
    cls = resilient_api(name, "resilient.httpx")
    return lambda inner: cls(transport=inner)


def retry_transport(inner: Any) -> Any:
    httpx_retries = peer("httpx_retries")
    return httpx_retries.RetryTransport(transport=inner, retry=httpx_retries.Retry(total=3))


def httpx_setup(
    wrap: Callable[[bool], Callable[[Any], Any]], *, is_async: bool, instrument: bool
) -> Callable[[ExitStack], SyncBench]:
    def setup(stack: ExitStack) -> SyncBench:
        httpx = peer("httpx")
        transport = wrap(is_async)(mock_transport(is_async))
        client = (httpx.AsyncClient if is_async else httpx.Client)(transport=transport)
        if not is_async:
            stack.callback(client.close)
        if instrument:
            instrumentor = peer("opentelemetry.instrumentation.httpx").HTTPXClientInstrumentor
            instrumentor.instrument_client(client)
        return functools.partial(client.get, URL)

    return setup


def span_floor_transport(is_async: bool, *, histogram: bool = False) -> Callable[[Any], Any]:
    """The least a tracing transport can do: one SDK CLIENT span with the attributes the HTTP
    semantic conventions require (method, URL, server address and port; the status at the
    end) and the ``traceparent`` header. A yardstick, as `SpanFloorMiddleware` is. With
    `histogram`, also one duration point per request, as the OpenTelemetry instrumentation
    records (``http.client.request.duration``)."""
    httpx = peer("httpx")
    durations = (
        peer("opentelemetry.metrics").get_meter("benchmarks").create_histogram("http.client.request.duration", "s")
        if histogram
        else None
    )
    trace, context, propagate = (
        peer("opentelemetry.trace"),
        peer("opentelemetry.context"),
        peer("opentelemetry.propagate"),
    )
    tracer = sdk_tracer()

    def start(request: Any) -> tuple[Any, Any]:
        url = request.url
        attributes = {
            "http.request.method": request.method,
            "url.full": str(url),
            "server.address": url.host,
            "server.port": url.port or 80,
        }
        span = tracer.start_span(request.method, kind=trace.SpanKind.CLIENT, attributes=attributes)
        current = trace.set_span_in_context(span)
        propagate.inject(request.headers, context=current)
        return span, context.attach(current)

    def end(span: Any, token: Any, request: Any, response: Any) -> Any:
        context.detach(token)
        span.set_attribute("http.response.status_code", response.status_code)
        span.end()
        if durations is not None:
            started, ended = span.start_time, span.end_time  # the span's own clock readings
            durations.record((ended - started) / 1e9, {"http.request.method": request.method})
        return response

    class Floor(httpx.BaseTransport):  # type: ignore[misc,name-defined]
        def __init__(self, inner: Any) -> None:
            self.inner = inner

        def handle_request(self, request: Any) -> Any:
            span, token = start(request)
            return end(span, token, request, self.inner.handle_request(request))

    class AsyncFloor(httpx.AsyncBaseTransport):  # type: ignore[misc,name-defined]
        def __init__(self, inner: Any) -> None:
            self.inner = inner

        async def handle_async_request(self, request: Any) -> Any:
            span, token = start(request)
            return end(span, token, request, await self.inner.handle_async_request(request))

    return AsyncFloor if is_async else Floor


HTTPX_COMBO = "httpx-retries + OTel instrument_client"
#: The yardstick rows of section 10 with an SDK: (name, transport wrapper).
HTTPX_FLOORS: tuple[tuple[str, Callable[[bool], Callable[[Any], Any]]], ...] = (
    ("floor: bare SDK CLIENT span, by hand", span_floor_transport),
    ("floor + a duration histogram, by hand", functools.partial(span_floor_transport, histogram=True)),
)


def httpx_cases() -> list[Case]:
    variants: list[tuple[str, str, Callable[[bool], Callable[[Any], Any]], bool, tuple[str, ...]]] = [
        ("plain Client(MockTransport)", "plain", lambda _a: plain, False, ()),
        (
            "resilient.httpx transport",
            "",
            resilient_transport,
            False,
            (HTTPX_COMBO, "httpx-retries RetryTransport", "OTel instrument_client"),
        ),
        ("httpx-retries RetryTransport", "httpx-retries", lambda _a: retry_transport, False, ()),
        ("OTel instrument_client", "OTel", lambda _a: plain, True, ()),
        (HTTPX_COMBO, "retries+OTel", lambda _a: retry_transport, True, ()),
    ]
    cases: list[Case] = []
    for phase, suffix in PHASES:
        for mode in ("sync", "async"):
            section = f"10. httpx GET, MockTransport, {suffix} · {mode}"
            is_async = mode == "async"
            cases += [
                Case(
                    section=section,
                    name=name,
                    tag=tag,
                    baseline=tag == "plain",
                    peers=peers,
                    is_async=is_async,
                    phase=phase,
                    setup=httpx_setup(wrap, is_async=is_async, instrument=instrument),
                )
                for name, tag, wrap, instrument, peers in variants
            ]
            if phase == "sdk":
                cases += [
                    Case(
                        section=section,
                        name=name,
                        peers=(HTTPX_COMBO,),
                        is_async=is_async,
                        phase=phase,
                        setup=httpx_setup(wrap, is_async=is_async, instrument=False),
                    )
                    for name, wrap in HTTPX_FLOORS
                ]
    return cases


def cases() -> list[Case]:
    return [*asgi_cases(), *httpx_cases()]
