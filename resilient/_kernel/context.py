"""Per-request context shared by the middleware, the httpx transports and the log events."""

from __future__ import annotations

import contextvars

__all__ = ["REQUEST_ID", "current_request_id"]

#: The id of the request being handled (set by the middleware, forwarded by httpx transports).
REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("resilient_request_id", default=None)


def current_request_id() -> str | None:
    """The request id bound by the middleware for the current request, or None."""
    return REQUEST_ID.get()
