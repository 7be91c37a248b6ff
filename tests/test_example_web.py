"""The FastAPI and Flask examples run, and each safeguard they mount does what they say."""

from __future__ import annotations

import httpx

from examples import fastapi_app, flask_app
from tests._wsgi_server import serve_once


def assert_limited_at_60(statuses: list[int]) -> None:
    """After 21 requests, about 39 more are admitted, then 429s (the sliding window may admit
    one more when the test straddles the window's edge)."""
    assert statuses.count(200) in {39, 40}
    assert statuses[-5:] == [429] * 5


async def test_fastapi_example() -> None:
    """Quotes succeed through retries, crashes are bare 500s, the 61st request is rate limited."""
    transport = httpx.ASGITransport(app=fastapi_app.app, raise_app_exceptions=False)  # as a server: it logs the crash
    async with httpx.AsyncClient(transport=transport, base_url="http://example") as client:
        quotes = [await client.get("/quotes/ACME") for _ in range(20)]
        crash = await client.get("/crash")
        rest = [(await client.get("/quotes/ACME")).status_code for _ in range(45)]
    assert [response.status_code for response in quotes] == [200] * 20
    assert quotes[0].json() == {"symbol": "ACME", "price": 106.0}
    assert all(response.headers["x-request-id"] for response in quotes)
    assert crash.status_code == 500
    assert "hunter2" not in crash.text
    assert_limited_at_60(rest)


def test_flask_example() -> None:
    """Quotes succeed through retries, crashes are bare 500s, the 61st request is rate limited."""
    client = flask_app.app.test_client()
    # buffered: the test client then reads and closes each response, as a WSGI server does.
    # Unread and unclosed, a response would hold its in-flight slot (max_in_flight=32) until
    # the garbage collector freed it, and later requests could get 503.
    quotes = [client.get("/quotes/ACME", buffered=True) for _ in range(20)]
    crash = serve_once(flask_app.app, "/crash")  # as a server: the 500 goes out, the server logs the crash
    rest = [client.get("/quotes/ACME", buffered=True).status_code for _ in range(45)]
    assert [response.status_code for response in quotes] == [200] * 20
    assert quotes[0].json == {"symbol": "ACME", "price": 106.0}
    assert all(response.headers["X-Request-ID"] for response in quotes)
    assert crash.status == 500
    assert b"hunter2" not in crash.body
    assert_limited_at_60(rest)
