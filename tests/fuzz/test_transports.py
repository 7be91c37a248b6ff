"""Fuzz both httpx transports with hostile answers: any Retry-After, any Idempotency-Key, never an exception.

The upstream (an `httpx.MockTransport`) answers 200, 429 or 503 with a ``Retry-After`` of any
bytes; the request is a POST carrying an ``Idempotency-Key`` of any bytes (so it may be
retried). Waits are skipped (`resilient.testing.no_wait`), so a huge delay cannot stall the run.
The transport hands back the upstream's answer, whatever the header said.
"""

from __future__ import annotations

import asyncio

import httpx
from hypothesis import given
from hypothesis import strategies as st

import resilient.httpx as rh
from resilient import testing
from tests.fuzz._strategies import budget, header_values

STATUSES = st.sampled_from([200, 429, 503])
# A client only sends what httpx will encode: an Idempotency-Key without CR, LF or NUL.
KEYS = header_values(40).filter(lambda raw: not set(raw) & {0, 10, 13})


def _upstream(status: int, retry_after: bytes) -> httpx.MockTransport:
    def respond(_request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, headers=[(b"retry-after", retry_after)])

    return httpx.MockTransport(respond)


@budget(100)
@given(status=STATUSES, retry_after=header_values(), key=KEYS)
def test_sync_transport_hands_back_any_answer(status: int, retry_after: bytes, key: bytes) -> None:
    """`ResilientTransport`: any Retry-After gives back the upstream's status, never an exception."""
    transport = rh.ResilientTransport(_upstream(status, retry_after), breaker=False)
    with testing.no_wait(), httpx.Client(transport=transport) as client:
        response = client.post("http://upstream.test/", content=b"x", headers=[(b"idempotency-key", key)])
    assert response.status_code == status


@budget(100)
@given(status=STATUSES, retry_after=header_values(), key=KEYS)
def test_async_transport_hands_back_any_answer(status: int, retry_after: bytes, key: bytes) -> None:
    """`AsyncResilientTransport`: any Retry-After gives back the upstream's status, never an exception."""

    async def run() -> int:
        inner = httpx.MockTransport(_upstream(status, retry_after).handler)
        transport = rh.AsyncResilientTransport(inner, breaker=False)
        async with httpx.AsyncClient(transport=transport) as client:
            response = await client.post("http://upstream.test/", content=b"x", headers=[(b"idempotency-key", key)])
        return response.status_code

    with testing.no_wait():
        assert asyncio.run(asyncio.wait_for(run(), 20)) == status
