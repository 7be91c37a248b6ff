"""Mounting the middleware changes nothing a host does, except that a 500 never leaks.

One table of hosts and modes (Starlette and FastAPI `TestClient` with and without
``raise_server_exceptions``; Flask with TESTING, DEBUG and PROPAGATE_EXCEPTIONS on and off;
a bare ASGI app under uvicorn, a bare WSGI app under waitress) and one table of scenarios
(a plain answer, a stream, an unhandled exception carrying a secret). Each cell runs the
same scenario with and without the middleware, every feature on and limits set high, and
compares what the test or the client sees: the same exception, or the same status and
body. The one allowed difference: a 500's body is the middleware's bare JSON, and no 500
body ever holds exception text, a traceback or the secret.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import socket
import threading
import warnings
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, MutableMapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from flask import Flask, Response, copy_current_request_context, g, request, stream_with_context
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, StreamingResponse
from starlette.routing import Route
from waitress import wasyncore
from waitress.server import create_server

from resilient.asgi import ResilientMiddleware
from resilient.wsgi import ResilientWSGIMiddleware

with warnings.catch_warnings():
    # Starlette 1.x asks for `httpx2` behind its test client; `httpx` still drives it.
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from starlette.testclient import TestClient

SECRET = "sk_live_0123456789abcdefghijkl"  # noqa: S105 - a fake, to be searched for
#: Every feature on, every limit out of reach: only transparency is under test.
ALL_ON: dict[str, Any] = {
    "rate_limit": "1000000000/second",
    "max_in_flight": 1000,
    "timeout": 30.0,
    "max_body_size": 1_000_000,
    "ratelimit_headers_on_success": True,
}
LEAKS = (SECRET, "Traceback", "SecretError", 'File "', "sk_live")
SCENARIOS = ("ok", "stream", "boom")


class SecretError(RuntimeError):
    """What a driver raises: a secret in its message."""


def fail() -> None:
    raise SecretError(f"connect failed with token={SECRET}")


@dataclass(frozen=True)
class Seen:
    """What a test or a client sees: an exception (its type and message), or a status and a body."""

    raised: str | None = None
    status: int | None = None
    body: bytes | None = None

    @classmethod
    def answer(cls, status: int, body: bytes) -> Seen:
        """A response; a 500's body is checked for leaks, then left out of the comparison."""
        assert [word for word in LEAKS if word.encode() in body] == [], body
        return cls(status=status, body=None if status == 500 else body)

    @classmethod
    def error(cls, exc: BaseException) -> Seen:
        return cls(raised=f"{type(exc).__name__}: {exc}")


# --- ASGI hosts ------------------------------------------------------------------------------


async def asgi_ok(_request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


async def asgi_stream(_request: Request) -> StreamingResponse:
    async def body() -> AsyncIterator[bytes]:
        yield b"one;"
        yield b"two"

    return StreamingResponse(body())


async def asgi_boom(_request: Request) -> PlainTextResponse:
    fail()
    return PlainTextResponse("unreachable")


ASGI_ROUTES = [Route("/ok", asgi_ok), Route("/stream", asgi_stream), Route("/boom", asgi_boom)]


def starlette_app(*, mounted: bool) -> Starlette:
    return Starlette(routes=ASGI_ROUTES, middleware=[Middleware(ResilientMiddleware, **ALL_ON)] if mounted else [])


def fastapi_app(*, mounted: bool) -> FastAPI:
    app = FastAPI()
    app.router.routes.extend(ASGI_ROUTES)
    if mounted:
        app.add_middleware(ResilientMiddleware, **ALL_ON)
    return app


def through_test_client(app: Any, scenario: str, *, raise_server_exceptions: bool) -> Seen:
    with TestClient(app, raise_server_exceptions=raise_server_exceptions) as client:
        try:
            response = client.get(f"/{scenario}")
        except Exception as exc:
            return Seen.error(exc)
    return Seen.answer(response.status_code, response.content)


async def bare_asgi(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
    """An ASGI app with no framework: three paths, no error handling of its own."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    if scope["path"] == "/boom":
        fail()
    chunks = [b"one;", b"two"] if scope["path"] == "/stream" else [b"ok"]
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    for index, chunk in enumerate(chunks):
        await send({"type": "http.response.body", "body": chunk, "more_body": index < len(chunks) - 1})


@contextmanager
def uvicorn_serving(app: Any) -> Iterator[str]:
    """`app` under a real uvicorn on 127.0.0.1 and a free port; stopped on the way out."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()  # connections queue from here: no wait for readiness
    server = uvicorn.Server(uvicorn.Config(app, lifespan="off", log_level="critical"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@contextmanager
def waitress_serving(app: Any) -> Iterator[str]:
    """`app` under a real waitress on 127.0.0.1 and a free port; stopped on the way out."""
    server: Any = create_server(app, host="127.0.0.1", port=0, threads=2, expose_tracebacks=False)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.effective_port}"
    finally:
        server.task_dispatcher.shutdown()
        # Closed from the loop's own thread (through its trigger): the loop ends with its map.
        server.trigger.pull_trigger(lambda: wasyncore.close_all(server._map))
        thread.join(timeout=10)


def through_real_server(serving: Callable[[Any], Any], app: Any, scenario: str) -> Seen:
    with serving(app) as url, httpx.Client(base_url=url, timeout=10) as client:
        response = client.get(f"/{scenario}")
    return Seen.answer(response.status_code, response.content)


# --- WSGI hosts ------------------------------------------------------------------------------


def flask_app(config: dict[str, bool], *, mounted: bool) -> Flask:
    app = Flask(__name__)
    app.config.update(config)
    app.logger.disabled = True  # Flask logs the traceback in production mode; not what is compared

    @app.get("/ok")
    def ok() -> str:
        return "ok"

    @app.get("/stream")
    def stream() -> Response:
        def body() -> Iterator[str]:
            yield "one;"
            yield request.path  # needs the request context while streaming

        return Response(stream_with_context(body()))

    @app.get("/boom")
    def boom() -> str:
        fail()
        return "unreachable"

    if mounted:
        app.wsgi_app = ResilientWSGIMiddleware(app.wsgi_app, **ALL_ON)  # type: ignore[method-assign]
    return app


def through_flask_client(app: Flask, scenario: str) -> Seen:
    try:
        response = app.test_client().get(f"/{scenario}")
    except Exception as exc:
        return Seen.error(exc)
    return Seen.answer(response.status_code, response.data)


def bare_wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """A WSGI app with no framework: three paths, no error handling of its own."""
    if environ["PATH_INFO"] == "/boom":
        fail()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"one;", b"two"] if environ["PATH_INFO"] == "/stream" else [b"ok"]


def flask_host(config: dict[str, bool], scenario: str, mounted: bool) -> Seen:
    return through_flask_client(flask_app(config, mounted=mounted), scenario)


FLASK_MODES: dict[str, dict[str, bool]] = {
    "production": {},
    "TESTING": {"TESTING": True},
    "DEBUG": {"DEBUG": True},
    "PROPAGATE_EXCEPTIONS": {"PROPAGATE_EXCEPTIONS": True},
    "PROPAGATE_EXCEPTIONS off under TESTING": {"TESTING": True, "PROPAGATE_EXCEPTIONS": False},
}

#: host and mode -> a function running one scenario, with or without the middleware.
HOSTS: dict[str, Callable[[str, bool], Seen]] = {
    "starlette raise_server_exceptions": lambda s, m: through_test_client(
        starlette_app(mounted=m), s, raise_server_exceptions=True
    ),
    "starlette raise_server_exceptions=False": lambda s, m: through_test_client(
        starlette_app(mounted=m), s, raise_server_exceptions=False
    ),
    "fastapi raise_server_exceptions": lambda s, m: through_test_client(
        fastapi_app(mounted=m), s, raise_server_exceptions=True
    ),
    "fastapi raise_server_exceptions=False": lambda s, m: through_test_client(
        fastapi_app(mounted=m), s, raise_server_exceptions=False
    ),
    **{f"flask {mode}": functools.partial(flask_host, config) for mode, config in FLASK_MODES.items()},
    "bare ASGI under uvicorn": lambda s, m: through_real_server(
        uvicorn_serving, ResilientMiddleware(bare_asgi, **ALL_ON) if m else bare_asgi, s
    ),
    "bare WSGI under waitress": lambda s, m: through_real_server(
        waitress_serving, ResilientWSGIMiddleware(bare_wsgi, **ALL_ON) if m else bare_wsgi, s
    ),
}

#: What each host lets out of an unhandled exception, without the middleware: the table's point.
PROPAGATES = {
    "starlette raise_server_exceptions",
    "fastapi raise_server_exceptions",
    "flask TESTING",
    "flask DEBUG",
    "flask PROPAGATE_EXCEPTIONS",
}


@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest.mark.parametrize("host", list(HOSTS))
def test_the_host_sees_what_it_sees_without_the_middleware(host: str, scenario: str) -> None:
    """Same exception, or same status and body, with and without the middleware (a 500 body aside)."""
    run = HOSTS[host]
    without, mounted = run(scenario, False), run(scenario, True)
    assert mounted == without
    if scenario == "boom":
        assert (without.raised is not None) is (host in PROPAGATES)


def test_a_bare_wsgi_500_under_waitress_is_the_bare_json() -> None:
    """Under a real server the client of a failing bare WSGI app gets our JSON 500 and its request id."""
    app = ResilientWSGIMiddleware(bare_wsgi, **ALL_ON)
    with waitress_serving(app) as url, httpx.Client(base_url=url, timeout=10) as client:
        response = client.get("/boom", headers={"X-Request-ID": "w-1"})
    assert (response.status_code, response.json()) == (500, {"error": "internal_error", "request_id": "w-1"})


def test_a_bare_asgi_500_under_uvicorn_is_the_bare_json() -> None:
    """Under a real server the client of a failing bare ASGI app gets our JSON 500 and its request id."""
    app = ResilientMiddleware(bare_asgi, **ALL_ON)
    with uvicorn_serving(app) as url, httpx.Client(base_url=url, timeout=10) as client:
        response = client.get("/boom", headers={"X-Request-ID": "a-1"})
    assert (response.status_code, response.json()) == (500, {"error": "internal_error", "request_id": "a-1"})


# --- contexts ----------------------------------------------------------------------------------

APP_VARIABLE: contextvars.ContextVar[str | None] = contextvars.ContextVar("app_variable", default=None)


def context_app(*, mounted: bool) -> Flask:
    """A Flask app whose views use `g`, stream with their context, copy it, and set a contextvar."""
    app = Flask(__name__)
    app.config["TESTING"] = True

    @app.get("/g")
    def uses_g() -> str:
        g.user = "alice"
        APP_VARIABLE.set("set by the app")
        return "ok"

    @app.get("/stream")
    def streamed() -> Response:
        def body() -> Iterator[str]:
            yield "path="
            yield request.path

        return Response(stream_with_context(body()))

    @app.get("/async-stream")
    async def async_streamed() -> Response:
        def body() -> Iterator[str]:
            yield request.path

        return Response(stream_with_context(body()))

    @app.get("/copied")
    def copied() -> str:
        @copy_current_request_context
        def later() -> str:
            return f"{request.path}|{request.args.get('name')}"

        g.user = "bob"
        results: list[str] = []
        worker = threading.Thread(target=lambda: results.append(later()))
        worker.start()
        worker.join(timeout=10)
        return results[0]

    if mounted:
        app.wsgi_app = ResilientWSGIMiddleware(app.wsgi_app, **ALL_ON)  # type: ignore[method-assign]
    return app


def preserved(app: Flask, path: str) -> tuple[Any, ...]:
    """A request inside ``with client:`` (contexts preserved), what it left behind, and a clean exit."""
    client = app.test_client()
    with client:
        response = client.get(path)
        seen = (response.status_code, response.data, request.path, g.get("user"), APP_VARIABLE.get())
    return seen  # noqa: RET504 - returned once the block was left: leaving it is under test


@pytest.mark.parametrize("path", ["/g", "/stream", "/async-stream", "/copied?name=carol"])
def test_flask_contexts_are_the_apps_own(path: str) -> None:
    """Preserved test contexts, g, stream_with_context (sync and async views), copied contexts: as without."""
    without = contextvars.copy_context().run(preserved, context_app(mounted=False), path)
    mounted = contextvars.copy_context().run(preserved, context_app(mounted=True), path)
    assert mounted == without


def test_a_contextvar_the_wsgi_app_sets_stays_set_for_its_caller() -> None:
    """The app runs in its caller's context, not a copy: what it sets is there after the call, as without."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        APP_VARIABLE.set("from the app")
        start_response("200 OK", [])
        return [b"ok"]

    def call(wsgi: Any) -> str | None:
        response = wsgi({"REQUEST_METHOD": "GET", "PATH_INFO": "/", "wsgi.input": None}, lambda *_: None)
        b"".join(response)
        response.close() if hasattr(response, "close") else None
        return APP_VARIABLE.get()

    without = contextvars.copy_context().run(call, app)
    mounted = contextvars.copy_context().run(call, ResilientWSGIMiddleware(app, **ALL_ON))
    assert mounted == without == "from the app"


async def test_a_contextvar_the_asgi_app_sets_stays_set_for_its_caller() -> None:
    """An outer layer sees what the app set, as without the middleware; ours are reset."""

    async def app(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        APP_VARIABLE.set("from the app")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def call(asgi: Any) -> str | None:
        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b""}

        async def send(_message: Any) -> None:
            pass

        scope = {"type": "http", "method": "GET", "path": "/", "headers": [], "query_string": b""}
        await asgi(scope, receive, send)
        return APP_VARIABLE.get()

    without = await asyncio.create_task(call(app))
    mounted = await asyncio.create_task(call(ResilientMiddleware(app, **ALL_ON)))
    assert mounted == without == "from the app"


def test_starlette_debug_still_raises_but_its_traceback_page_never_reaches_the_client() -> None:
    """Under debug=True the exception still reaches the test; the client gets our 500, not the traceback page."""
    app = Starlette(debug=True, routes=ASGI_ROUTES, middleware=[Middleware(ResilientMiddleware, **ALL_ON)])
    assert through_test_client(app, "boom", raise_server_exceptions=True).raised is not None
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get("/boom")
    assert (response.status_code, response.json()["error"]) == (500, "internal_error")
    assert [word for word in LEAKS if word in response.text] == []


# --- found by running Starlette's own suite with the middleware mounted (scripts/host_suites.py) --


def test_the_apps_own_500_handler_answers() -> None:
    """A Starlette app's exception_handlers[500] answers as without the middleware; the error still propagates."""

    async def handler(_request: Request, _exc: Exception) -> PlainTextResponse:
        return PlainTextResponse("our own page", status_code=500)

    def app(*, mounted: bool) -> Starlette:
        built = starlette_app(mounted=mounted)
        built.add_exception_handler(500, handler)
        return built

    for raise_server_exceptions in (True, False):
        without = through_test_client(app(mounted=False), "boom", raise_server_exceptions=raise_server_exceptions)
        mounted = through_test_client(app(mounted=True), "boom", raise_server_exceptions=raise_server_exceptions)
        assert mounted == without
    with TestClient(app(mounted=True), raise_server_exceptions=False) as client:
        assert client.get("/boom").text == "our own page"


async def test_an_outer_layers_http_exception_is_left_to_it() -> None:
    """An HTTP answer raised through `receive` by an outer layer (Starlette's body limit) reaches it unanswered."""

    class ReadBody:
        """User middleware reading the body itself, outside Starlette's own exception handling."""

        def __init__(self, app: Any) -> None:
            self.app = app

        async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
            await receive()
            await self.app(scope, receive, send)

    for mounted in (False, True):
        middleware = [Middleware(ResilientMiddleware, **ALL_ON)] if mounted else []
        app = Starlette(routes=ASGI_ROUTES, middleware=[*middleware, Middleware(ReadBody)], max_body_size=5)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            response = await client.post("/ok", content=b"123456")
        assert response.status_code == 413


async def test_a_scope_without_headers_is_served() -> None:
    """A scope missing its optional-in-practice `headers` key is served, as the host serves it."""
    sent: list[Any] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: Any) -> None:
        sent.append(message)

    app = starlette_app(mounted=True)
    await app({"type": "http", "method": "GET", "path": "/ok"}, receive, send)
    assert [message.get("body") for message in sent if message["type"] == "http.response.body"] == [b"ok"]
