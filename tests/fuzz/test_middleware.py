"""Fuzz both middlewares end to end, every feature on: hostile headers never fail a request.

Each example sends one request whose propagation, deadline, request-id, Content-Length,
forwarding and idempotency headers (and one header of any name) hold arbitrary bytes, with a
body around the size limit, through the raw ASGI and WSGI drivers. The app itself never fails,
so the answer is the app's 200 or one of the middleware's own refusals, never a 500; it comes
within the drivers' bound, with clean headers and a safe request id.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from resilient import deadline, instrumentation
from tests.fuzz._drivers import MAX_BODY, TRUSTED_PEER, Caller, Reply, asgi_app, call_asgi, call_wsgi, wsgi_app
from tests.fuzz._strategies import budget, header_values

SAFE_ID = re.compile(rb"[A-Za-z0-9._:-]{1,128}")
PARSED = [
    b"x-request-id",
    b"traceparent",
    b"tracestate",
    b"baggage",
    b"x-resilient-deadline-ms",
    b"content-length",
    b"x-forwarded-for",
    b"forwarded",
    b"idempotency-key",
]
# Header names as an ASGI server hands them over: lower-case bytes, any of them.
ANY_NAME = st.binary(min_size=1, max_size=20).map(bytes.lower)
# Each parsed header present about half the time (so several hostile values meet in one
# request), then a few more of any name, repeated names included.
HEADERS = st.builds(
    lambda parsed, extra: [(name, value) for name, value in parsed if value is not None] + extra,
    st.tuples(*(st.tuples(st.just(name), st.none() | header_values()) for name in PARSED)),
    st.lists(st.tuples(st.sampled_from(PARSED) | ANY_NAME, header_values()), max_size=3),
)
PATHS = st.sampled_from(["/api/x", "/api", "/apix", "/", "/other"]) | st.text(max_size=40).map(lambda tail: "/" + tail)
PEERS = st.sampled_from([TRUSTED_PEER, "203.0.113.9", "::1", "unknown"])
BODIES = st.binary(max_size=MAX_BODY // 4) | st.binary(min_size=MAX_BODY - 8, max_size=MAX_BODY + 8)


@pytest.fixture(params=["asgi", "wsgi"], scope="module")
def send(request: pytest.FixtureRequest) -> Caller:
    """One request through the ASGI or the WSGI middleware (one app for all examples, as in production)."""
    if request.param == "asgi":
        asgi = asgi_app()
        return lambda headers, **kw: call_asgi(asgi, headers, **kw)
    wsgi = wsgi_app()
    return lambda headers, **kw: call_wsgi(wsgi, headers, **kw)


@pytest.fixture
def unhandled() -> Iterator[list[instrumentation.Event]]:
    """The middleware's unhandled-error events (there must be none: the app never fails)."""
    seen: list[instrumentation.Event] = []

    def keep(event: instrumentation.Event) -> None:
        if event.name == "http.unhandled_error":
            seen.append(event)

    instrumentation.add_listener(keep)
    yield seen
    instrumentation.remove_listener(keep)


def _deadline_values(headers: list[tuple[bytes, bytes]]) -> list[float | None]:
    return [deadline.parse_header(value) for name, value in headers if name == b"x-resilient-deadline-ms"]


def _check_reply(reply: Reply, headers: list[tuple[bytes, bytes]]) -> None:
    """A well-formed answer: the app's or a refusal, clean headers, the request id safe and consistent."""
    budgets = _deadline_values(headers)
    if reply.status == 504:
        # Only a caller's budget can run out here (the route timeouts are 10 and 30 s).
        assert any(value is not None and value < 5 for value in budgets)
    else:
        assert reply.status in {200, 400, 404, 413}
    for name, value in reply.headers:
        assert not re.search(rb"[\r\n\x00]", name + value)
    [request_id] = [value for name, value in reply.headers if name == b"x-request-id"]
    assert SAFE_ID.fullmatch(request_id)
    given_ids = [value for name, value in headers if name == b"x-request-id"]
    if len(given_ids) == 1 and SAFE_ID.fullmatch(given_ids[0]):
        assert request_id == given_ids[0]
    if reply.status == 200:
        seen = json.loads(reply.body)
        assert seen["id"] == request_id.decode("ascii")
        assert seen["read"] <= MAX_BODY


@budget(150)
@given(headers=HEADERS, path=PATHS, peer=PEERS, body=BODIES)
def test_hostile_headers_never_fail_a_request(
    send: Caller,
    spans: InMemorySpanExporter,
    unhandled: list[instrumentation.Event],
    headers: list[tuple[bytes, bytes]],
    path: str,
    peer: str,
    body: bytes,
) -> None:
    """Arbitrary bytes in every parsed header: a bounded, well-formed answer, no unhandled error, one span."""
    spans.clear()
    unhandled.clear()
    reply = send(headers, body=body, path=path, peer=peer)
    _check_reply(reply, headers)
    assert unhandled == []
    assert len(spans.get_finished_spans()) == 1
