"""Per-request context shared by the middleware, the httpx transports and the log events."""

from __future__ import annotations

import contextvars

__all__ = ["REQUEST_ID", "current_request_id"]

#: The id of the request being handled (set by the middleware, forwarded by httpx transports).
REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("resilient_request_id", default=None)


def current_request_id() -> str | None:
    """The id of the request being handled, or None outside a request.

    Set by the ASGI and WSGI middleware for the whole request (the caller's well-formed
    ``X-Request-ID`` or a generated one) and for a websocket connection; the same id is on
    every log line of the request and is forwarded by the httpx transports.
    """
    return REQUEST_ID.get()


current_request_id.__module__ = "resilient"  # re-exported there
