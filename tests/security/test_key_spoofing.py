"""Rate-limit keys cannot be spoofed: forwarded headers count only when a trusted proxy sent them.

The limit is 2 requests a minute per client, proxies in 10.0.0.0/8 are trusted. The key is
observed twice: through the 429s (which bucket a request counted in) and through the
``client`` field of the access log.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, MutableMapping
from typing import Any

import httpx
import pytest
from werkzeug.test import Client

from resilient.asgi import ResilientMiddleware
from resilient.instrumentation import Event
from resilient.wsgi import ResilientWSGIMiddleware

OPTIONS: dict[str, Any] = {"rate_limit": "2/minute", "trusted_proxies": ["10.0.0.0/8"]}
UNTRUSTED = "203.0.113.5"
PROXY = "10.1.2.3"

Send = Callable[[str, dict[str, str]], int]


async def asgi_app(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"ok"})


def wsgi_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


@pytest.fixture(params=["asgi", "wsgi"])
def send(request: pytest.FixtureRequest) -> Iterator[Send]:
    """`send(peer, headers) -> status` through one middleware instance (per test) of each kind."""
    if request.param == "wsgi":
        wsgi = ResilientWSGIMiddleware(wsgi_app, **OPTIONS)

        def send_wsgi(peer: str, headers: dict[str, str]) -> int:
            return Client(wsgi).get("/", headers=headers, environ_base={"REMOTE_ADDR": peer}).status_code

        yield send_wsgi
        return
    asgi = ResilientMiddleware(asgi_app, **OPTIONS)

    def send_asgi(peer: str, headers: dict[str, str]) -> int:
        async def once() -> int:
            transport = httpx.ASGITransport(app=asgi, client=(peer, 51000))
            async with httpx.AsyncClient(transport=transport, base_url="http://service") as http:
                return (await http.get("/", headers=headers)).status_code

        return asyncio.run(once())

    yield send_asgi


def clients(events: list[Event]) -> list[str]:
    """The client each access-log line names, in order."""
    return [str(event.fields["client"]) for event in events if event.name == "http.access"]


def test_forwarded_headers_from_an_untrusted_peer_do_not_change_the_key(send: Send, events: list[Event]) -> None:
    """A client rotating X-Forwarded-For / Forwarded values stays in its own bucket (the socket peer)."""
    statuses = [
        send(UNTRUSTED, {"X-Forwarded-For": "198.51.100.1"}),
        send(UNTRUSTED, {"X-Forwarded-For": "198.51.100.2, 10.0.0.9"}),
        send(UNTRUSTED, {"Forwarded": "for=198.51.100.3"}),
        send(UNTRUSTED, {"X-Forwarded-For": "198.51.100.4"}),
    ]
    assert statuses == [200, 200, 429, 429]
    assert clients(events) == [UNTRUSTED] * 4


def test_a_trusted_proxy_reveals_each_client(send: Send, events: list[Event]) -> None:
    """Behind a trusted proxy each forwarded client gets its own bucket."""
    statuses = [send(PROXY, {"X-Forwarded-For": client}) for client in ["198.51.100.1"] * 3 + ["198.51.100.2"] * 2]
    assert statuses == [200, 200, 429, 200, 200]
    assert clients(events) == ["198.51.100.1"] * 3 + ["198.51.100.2"] * 2


def test_spoofed_hops_before_the_proxy_are_ignored(send: Send, events: list[Event]) -> None:
    """What a client writes into X-Forwarded-For before the proxy appends its address is never its key."""
    statuses = [
        send(PROXY, {"X-Forwarded-For": f"{spoof}, 198.51.100.7"}) for spoof in ("1.1.1.1", "2.2.2.2", "3.3.3.3")
    ]
    assert statuses == [200, 200, 429]
    assert clients(events) == ["198.51.100.7"] * 3


def test_chain_of_trusted_proxies_and_garbage_hops(send: Send, events: list[Event]) -> None:
    """Trusted hops are skipped from the right; a garbage hop stops the walk at the last trusted one."""
    assert send(PROXY, {"X-Forwarded-For": "198.51.100.8, 10.0.0.5"}) == 200
    assert send(PROXY, {"X-Forwarded-For": "not-an-ip, 10.0.0.5"}) == 200
    assert clients(events) == ["198.51.100.8", "10.0.0.5"]


def test_a_trusted_proxy_seen_through_a_dual_stack_socket(send: Send, events: list[Event]) -> None:
    """A trusted proxy whose address arrives IPv4-mapped (::ffff:10.1.2.3) still reveals each client."""
    mapped = f"::ffff:{PROXY}"
    statuses = [send(mapped, {"X-Forwarded-For": client}) for client in ["198.51.100.1"] * 2 + ["198.51.100.2"] * 2]
    assert statuses == [200, 200, 200, 200]
    assert clients(events) == ["198.51.100.1"] * 2 + ["198.51.100.2"] * 2
