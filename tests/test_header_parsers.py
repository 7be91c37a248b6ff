"""Regression tests for the parsers of outside input: one hostile value each, no request fails.

Each test holds a value that raised (or was misread) before: a latin-1 superscript digit,
digits from another script, a 5,000-digit Content-Length, a zone id in a forwarded address,
a ``Retry-After`` too large for a float. The fuzz job (`tests/fuzz/`) searches for more.
"""

from __future__ import annotations

import httpx
import pytest

import resilient.httpx as rh
from resilient import deadline, instrumentation, testing
from resilient._edge.core import _parse_ip, content_length_verdict
from resilient.httpx._rules import parse_retry_after
from tests.fuzz._drivers import TRUSTED_PEER, Caller, asgi_app, call_asgi, call_wsgi, wsgi_app

RFC_9110_MAX_DELTA = float(2**31)


@pytest.fixture(params=["asgi", "wsgi"])
def send(request: pytest.FixtureRequest) -> Caller:
    """One request through the ASGI or the WSGI middleware, every feature on."""
    if request.param == "asgi":
        asgi = asgi_app()
        return lambda headers, **kw: call_asgi(asgi, headers, **kw)
    wsgi = wsgi_app()
    return lambda headers, **kw: call_wsgi(wsgi, headers, **kw)


# --- the deadline header ---------------------------------------------------------------------


@pytest.mark.parametrize("value", [b"\xb2", "\u00b2", b"1\xb2", b"\xb9\xb2\xb3"])
def test_deadline_header_with_a_superscript_digit_is_ignored(value: bytes | str) -> None:
    """A latin-1 superscript digit passes `str.isdigit` but is no deadline: the header is ignored."""
    assert deadline.parse_header(value) is None


@pytest.mark.parametrize("value", ["\u0661\u0662", "\uff11\uff12", "1\u00a0"])
def test_deadline_header_with_non_ascii_digits_is_ignored(value: str) -> None:
    """Digits of another script (Arabic-Indic, full-width) or a no-break space are not read as milliseconds."""
    assert deadline.parse_header(value) is None


def test_deadline_header_keeps_its_ascii_form() -> None:
    """Plain milliseconds, with spaces or tabs around, still parse."""
    assert deadline.parse_header(b" 1500\t") == 1.5
    assert deadline.parse_header("0") == 0.0


def test_superscript_deadline_header_does_not_fail_the_request(send: Caller) -> None:
    """`x-resilient-deadline-ms: \\xb2` on a route with a timeout is answered by the app, not with a 500."""
    reply = send([(b"x-resilient-deadline-ms", b"\xb2")])
    assert reply.status == 200


# --- Content-Length --------------------------------------------------------------------------


def test_content_length_longer_than_int_accepts_is_too_large() -> None:
    """A 5,000-digit Content-Length (more than `int` converts) is a 413, not a ValueError."""
    assert content_length_verdict(b"9" * 5000, 1000) == 413


def test_content_length_with_many_leading_zeros_is_its_value() -> None:
    """Leading zeros do not count: 5,000 zeros then 7 is a declared length of 7."""
    assert content_length_verdict(b"0" * 5000 + b"7", 1000) is None
    assert content_length_verdict(b"0" * 5000 + b"1001", 1000) == 413


@pytest.mark.parametrize("value", [b"\xb2", "\u0661\u0662", b"\xa012", b"1 2", b"", b"-1", b"+1"])
def test_content_length_not_in_ascii_digits_is_a_bad_request(value: bytes | str) -> None:
    """Anything but ASCII digits (with spaces or tabs around) is a 400."""
    assert content_length_verdict(value, 1000) == 400


def test_huge_content_length_does_not_fail_the_request(send: Caller) -> None:
    """A 5,000-digit Content-Length is answered 413 by both middlewares, not 500."""
    reply = send([(b"content-length", b"9" * 5000)], body=b"x")
    assert reply.status == 413


# --- forwarded addresses ---------------------------------------------------------------------


@pytest.mark.parametrize("hop", ["fe80::1%eth0", "[fe80::1%25x]:80", "fe80::1%\nx-injected: yes"])
def test_forwarded_address_with_a_zone_id_is_not_an_address(hop: str) -> None:
    """An IPv6 zone id is free text (even CR/LF): such a hop is never taken as a client address."""
    assert _parse_ip(hop) is None


def test_zone_id_in_x_forwarded_for_never_reaches_the_client_key(
    send: Caller, access: list[instrumentation.Event]
) -> None:
    """A forwarded hop with a zone id stops the walk: the trusted peer is the client, no control character logged."""
    send([(b"x-forwarded-for", b"fe80::1%\nforged")])
    [line] = access
    assert line.fields["client"] == TRUSTED_PEER


# --- Retry-After -----------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["1e306", "1e999", "9" * 64, "Fri, 31 Dec 9999 23:59:59 -2359"])
def test_huge_retry_after_is_capped_not_raised(value: str) -> None:
    """A wait too large for a float (or a date in the year 9999) is capped at 2**31 s (RFC 9110 1.2.2)."""
    assert parse_retry_after(value, now=0.0) == RFC_9110_MAX_DELTA


@pytest.mark.parametrize("value", ["\u0661\u0662", "\u00b2", "1_000", "\uff13"])
def test_retry_after_in_non_ascii_or_python_only_digits_is_ignored(value: str) -> None:
    """Only ASCII delta-seconds count: `float` also reads "١٢" and "1_000", HTTP does not."""
    assert parse_retry_after(value) is None


def test_retry_after_keeps_its_lenient_forms() -> None:
    """Delta-seconds, a fraction (rounded up to the ms) and an exponent still parse."""
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after("0.0001") == 0.001
    assert parse_retry_after("1e3") == 1000.0


@pytest.mark.parametrize("transport", ["sync", "async"])
def test_huge_retry_after_returns_the_503(transport: str) -> None:
    """`Retry-After: 1e306` on a 503: both transports hand the 503 back (as plain httpx does), no OverflowError."""

    def respond(_request: httpx.Request) -> httpx.Response:
        return httpx.Response(503, headers={"retry-after": "1e306"})

    with testing.no_wait():
        if transport == "sync":
            with httpx.Client(transport=rh.ResilientTransport(httpx.MockTransport(respond))) as client:
                status = client.get("http://upstream.test/").status_code
        else:
            status = _async_get(respond)
    assert status == 503


def _async_get(respond: object) -> int:
    import asyncio  # noqa: PLC0415 - only the async case needs a loop

    async def run() -> int:
        inner = httpx.MockTransport(respond)  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=rh.AsyncResilientTransport(inner)) as client:
            return (await client.get("http://upstream.test/")).status_code

    return asyncio.run(run())
