"""One ASGI request's state for `resilient.asgi.ResilientMiddleware`: its `send` and `receive`.

`Exchange` stands between the app and the server for one request: it adds the middleware's
headers to the response start, counts the body sent, notes when the response is complete
(lifting the deadline for background tasks), enforces the body limit on `receive`, and
answers for the app when the middleware refuses a request (`reject`).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

from resilient import deadline
from resilient._edge.core import REJECTIONS, error_body, error_headers

if TYPE_CHECKING:
    from opentelemetry.trace import Span

    from resilient._edge.asgi_limits import RequestTimer, TrioRequestTimer

__all__ = ["BodyTooLargeError", "Exchange", "Headers", "Message", "Receive", "Send"]

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]


class BodyTooLargeError(Exception):
    """Raised inside the app by `receive` once the body passes `max_body_size`."""


async def _nothing() -> None:
    """The awaitable `send` hands back for a message it drops."""


class Exchange:
    """One HTTP request's state: wraps `send` and `receive` and remembers what went out."""

    # Class-level defaults rather than `__slots__`: a request assigns only the fields it
    # uses (a slotted instance must assign all of them up front, about 1 µs a request).
    request_id: str | None = None
    response_headers: Headers = []  # noqa: RUF012 - replaced, never mutated
    status = 0
    started = complete = swallow = body_too_large = False
    sent_bytes = received = 0
    body_limit: int | None = None
    deadline: float | None = None
    timer: RequestTimer | TrioRequestTimer | None = None
    ended: float | None = None
    rejection: str | None = None
    client: str | None = None
    span: Span | None = None
    route_label = "default"

    def __init__(self, receive: Receive, send: Send) -> None:
        self.raw_receive = receive
        self._send = send

    def send(self, message: Message) -> Awaitable[None]:
        """The app's `send`: adds our headers to the start, counts the body, notes the end.

        A plain function handing back the server's awaitable: ASGI asks `send` for an
        awaitable, and a coroutine of our own around it would cost one more per message.
        """
        kind = message["type"]
        if kind == "http.response.start":
            if self.body_too_large:
                # The app answered a body it could not read in full (FastAPI turns our error
                # into a 400): the client must see the 413, and the rest is dropped.
                self.swallow = True
                return self.reject(413)
            self.status = message["status"]
            self.started = True
            if self.response_headers:
                message = {**message, "headers": [*message.get("headers", ()), *self.response_headers]}
        elif kind == "http.response.body":
            if self.swallow:
                return _nothing()
            self.sent_bytes += len(message.get("body", b""))
            if not message.get("more_body", False):
                # The response is complete: lift the deadline so background tasks (they run
                # after the response, in this task) do not inherit the response's budget.
                # `RequestTimer.close` restores the previous value when the app returns.
                self.complete = True
                self.ended = time.perf_counter()
                if self.timer is not None:
                    self.timer.stop()
                    deadline._DEADLINE.set(None)
        return self._send(message)

    async def receive(self) -> Message:
        """The app's `receive` under a body limit: raises once the body grows past it."""
        message = await self.raw_receive()
        if message["type"] == "http.request" and self.body_limit is not None:
            self.received += len(message.get("body", b""))
            if self.received > self.body_limit:
                self.body_too_large = True
                raise BodyTooLargeError
        return message

    async def reject(self, status: int, extra: list[tuple[bytes, bytes]] | None = None) -> None:
        """Answer for the app: a small JSON error body, our headers and `extra` ones."""
        body = error_body(status, self.request_id)
        headers = [*error_headers(body), *self.response_headers, *(extra or ())]
        self.rejection = self.rejection or REJECTIONS[status]
        self.status = status
        self.started = True
        await self._send({"type": "http.response.start", "status": status, "headers": headers})
        await self._send({"type": "http.response.body", "body": body, "more_body": False})
        self.sent_bytes = len(body)
        self.complete = True
        self.ended = time.perf_counter()

    def deadline_passed(self) -> bool:
        """Whether this request's deadline (if any) has fired."""
        if self.timer is not None and self.timer.expired:
            return True
        return self.deadline is not None and time.monotonic() >= self.deadline
