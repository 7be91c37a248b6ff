"""Section 13: the WSGI middleware on a Flask app, in process, no sockets.

As section 9 does for ASGI, a request is one call of the WSGI app with a prebuilt environ
and a ``start_response`` that keeps nothing; the response iterable is read and closed as
a server would. The peers a Flask service would assemble instead are Flask-Limiter (rate
limit) and OpenTelemetry's WSGI middleware (span and metrics); no request-id package is
as common for Flask as asgi-correlation-id is for ASGI, so the combination has two.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from benchmarks._harness import Case, SyncBench
from benchmarks._support import EDGE_ALL_ON, HUGE_RATE, PHASES, peer, resilient_api

if TYPE_CHECKING:
    from contextlib import ExitStack

StartResponse = Callable[..., Callable[[bytes], object]]

#: What a WSGI server puts in the environ of ``GET /`` (the same request as section 9's).
ENVIRON: dict[str, Any] = {
    "REQUEST_METHOD": "GET",
    "SCRIPT_NAME": "",
    "PATH_INFO": "/",
    "QUERY_STRING": "",
    "SERVER_NAME": "127.0.0.1",
    "SERVER_PORT": "8000",
    "SERVER_PROTOCOL": "HTTP/1.1",
    "REMOTE_ADDR": "127.0.0.1",
    "REMOTE_PORT": "50000",
    "HTTP_HOST": "bench.test",
    "HTTP_USER_AGENT": "benchmarks",
    "HTTP_ACCEPT": "*/*",
    "wsgi.version": (1, 0),
    "wsgi.url_scheme": "http",
    "wsgi.errors": io.StringIO(),
    "wsgi.multithread": True,
    "wsgi.multiprocess": False,
    "wsgi.run_once": False,
}


def start_response(_status: str, _headers: list[tuple[str, str]], _exc_info: Any = None) -> Callable[[bytes], None]:
    return _write


def _write(_data: bytes) -> None:
    return None


def drive(app: Callable[..., Iterable[bytes]], start: StartResponse = start_response) -> bytes:
    """One request: a fresh environ (a server builds one per request), the body read, closed."""
    response = app({**ENVIRON, "wsgi.input": io.BytesIO(b"")}, start)
    try:
        return b"".join(response)
    finally:
        close = getattr(response, "close", None)
        if close is not None:
            close()


Wrap = Callable[[Any], None]  # mounts one middleware or extension on the Flask app


def flask_app(wraps: tuple[Wrap, ...]) -> Any:
    flask = peer("flask")
    app = flask.Flask("benchmarks")

    def home() -> str:
        return "ok"

    app.add_url_rule("/", view_func=home, methods=["GET"])

    for wrap in wraps:
        wrap(app)
    return app


def with_resilient(**options: Any) -> Wrap:
    def wrap(app: Any) -> None:
        middleware = resilient_api("ResilientWSGIMiddleware", "resilient.wsgi")
        app.wsgi_app = middleware(app.wsgi_app, **options)

    return wrap


def with_flask_limiter(app: Any) -> None:
    flask_limiter, util = peer("flask_limiter"), peer("flask_limiter.util")
    flask_limiter.Limiter(util.get_remote_address, app=app, default_limits=[HUGE_RATE], storage_uri="memory://")


def with_otel(app: Any) -> None:
    app.wsgi_app = peer("opentelemetry.instrumentation.wsgi").OpenTelemetryMiddleware(app.wsgi_app)


WSGI_COMBO = "Flask-Limiter + OTel WSGI"
WSGI_PEERS = (WSGI_COMBO, "+ Flask-Limiter", "+ OTel OpenTelemetryMiddleware (WSGI)")


def wsgi_setup(wraps: tuple[Wrap, ...]) -> Callable[[ExitStack], SyncBench]:
    def setup(_stack: ExitStack) -> SyncBench:
        return functools.partial(drive, flask_app(wraps))

    return setup


def cases() -> list[Case]:
    variants: list[tuple[str, str, tuple[Wrap, ...], tuple[str, ...]]] = [
        ("bare Flask app", "bare", (), ()),
        (
            "+ resilient.wsgi.ResilientWSGIMiddleware (all on)",
            "",
            (with_resilient(**EDGE_ALL_ON),),
            WSGI_PEERS,
        ),
        (
            "+ ResilientWSGIMiddleware (all on but access_log)",
            "",
            (with_resilient(**EDGE_ALL_ON, access_log=False),),
            WSGI_PEERS,
        ),
        ("+ Flask-Limiter", "Flask-Limiter", (with_flask_limiter,), ()),
        ("+ OTel OpenTelemetryMiddleware (WSGI)", "OTel", (with_otel,), ()),
        (WSGI_COMBO, "combo", (with_flask_limiter, with_otel), ()),
    ]
    return [
        Case(
            section=f"13. WSGI request (Flask), in process, {suffix}",
            name=name,
            tag=tag,
            baseline=not wraps,
            peers=peers,
            phase=phase,
            setup=wsgi_setup(wraps),
        )
        for phase, suffix in PHASES
        for name, tag, wraps, peers in variants
    ]
