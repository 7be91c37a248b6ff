"""Fuzz every parser of outside input directly: arbitrary bytes in, a bounded answer out, never an exception."""

from __future__ import annotations

import ipaddress
import math

from hypothesis import given
from hypothesis import strategies as st
from opentelemetry import trace

from resilient import deadline
from resilient._edge.core import REQUEST_ID_RE, ClientResolver, _parse_ip, accept_request_id, content_length_verdict
from resilient._edge.telemetry import ASGI_HEADERS, WSGI_HEADERS, extract_parent
from resilient.httpx._rules import parse_retry_after
from tests.fuzz._strategies import budget, header_texts, header_values

ONE_DAY = 86_400.0
RETRY_AFTER_CAP = float(2**31)
TRUSTED = ["10.0.0.0/8", "::1/128", "2001:db8::/32"]


@budget(200)
@given(header_values() | header_texts())
def test_deadline_header(value: bytes | str) -> None:
    """`deadline.parse_header`: None or a finite budget between 0 and one day, read from ASCII digits only."""
    seconds = deadline.parse_header(value)
    if seconds is None:
        return
    assert math.isfinite(seconds)
    assert 0.0 <= seconds <= ONE_DAY
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    assert text.strip(" \t").isascii()
    assert int(text.strip(" \t")) == round(seconds * 1000)


@budget(200)
@given(header_values() | header_texts())
def test_request_id(value: bytes | str) -> None:
    """`accept_request_id`: always an id from the safe charset; the caller's own only when it is safe."""
    request_id = accept_request_id(value)
    assert REQUEST_ID_RE.fullmatch(request_id.encode("ascii"))
    raw = value.encode("latin-1", "replace") if isinstance(value, str) else value
    if REQUEST_ID_RE.fullmatch(raw):
        assert request_id == raw.decode("ascii")


@budget(200)
@given(header_values() | header_texts() | st.integers(1, 6000).map(lambda digits: "9" * digits), st.integers(0, 10**12))
def test_content_length(value: bytes | str, limit: int) -> None:
    """`content_length_verdict`: None, 400 or 413; None only for ASCII digits not above the limit."""
    verdict = content_length_verdict(value, limit)
    assert verdict in {None, 400, 413}
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    digits = text.strip(" \t")
    if verdict is None:
        assert digits.isascii()
        assert digits.isdigit()
        assert int(digits.lstrip("0") or "0") <= limit
    elif verdict == 413:
        assert digits.isascii()
        assert digits.isdigit()


@budget(200)
@given(header_texts())
def test_forwarded_hop(value: str) -> None:
    """`_parse_ip`: None or an address without a zone id, printable, round-tripping through `ipaddress`."""
    address = _parse_ip(value)
    if address is None:
        return
    text = str(address)
    assert text.isprintable()
    assert "%" not in text
    assert ipaddress.ip_address(text) == address


@budget(200)
@given(
    st.sampled_from(["10.1.2.3", "::1", "203.0.113.9"]),
    st.none() | header_texts(200),
    st.none() | header_texts(200),
)
def test_client_resolution(peer: str, forwarded: str | None, x_forwarded_for: str | None) -> None:
    """`ClientResolver.resolve`: the peer or an IP address from the chain, nothing else a client wrote."""
    client = ClientResolver(TRUSTED).resolve(peer, forwarded, x_forwarded_for)
    assert client.isprintable()
    if client != peer:
        assert str(ipaddress.ip_address(client)) == client


@budget(200)
@given(header_texts(), st.floats(0, 4e9))
def test_retry_after(value: str, now: float) -> None:
    """`parse_retry_after`: never raises; None or a finite wait in [0, 2**31] never shorter than a delta asked."""
    seconds = parse_retry_after(value, now=now)
    if seconds is None:
        return
    assert math.isfinite(seconds)
    assert 0.0 <= seconds <= RETRY_AFTER_CAP
    text = value.strip()
    if text.isascii() and text.replace(".", "", 1).isdigit():
        assert seconds >= min(float(text), RETRY_AFTER_CAP)


@budget(150)
@given(header_values(120), header_values(120), header_values(120))
def test_trace_context(traceparent: bytes, tracestate: bytes, baggage: bytes) -> None:
    """Propagation headers of any bytes give a parent context (valid or not), never an exception."""
    asgi = {b"traceparent": traceparent, b"tracestate": tracestate, b"baggage": baggage}
    wsgi = {f"HTTP_{name.decode().upper()}": value.decode("latin-1") for name, value in asgi.items()}
    for carrier, getter in ((asgi, ASGI_HEADERS), (wsgi, WSGI_HEADERS)):
        parent = extract_parent(carrier, getter)
        span_context = trace.get_current_span(parent).get_span_context()
        if span_context.is_valid:
            assert 0 < span_context.trace_id < 2**128
            assert 0 < span_context.span_id < 2**64
