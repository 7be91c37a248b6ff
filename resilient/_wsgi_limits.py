"""The WSGI middleware's per-request limits: the in-flight gate and the body-size limit on ``wsgi.input``.

A WSGI server runs its requests in several threads at once, so the gate is a semaphore (the
ASGI twin in `_asgi_limits` is a counter on one event loop). A body of unknown length is
counted as the app reads it: the read that passes the limit raises `BodyTooLargeError` inside
the app, and the middleware answers 413.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any, Protocol

__all__ = ["BodyTooLargeError", "LimitedInput", "SyncGate"]


class _ExchangeView(Protocol):
    """What `LimitedInput` sees of the WSGI middleware's per-request exchange: one flag."""

    body_too_large: bool


class BodyTooLargeError(Exception):
    """Raised inside the app by the wrapped ``wsgi.input`` once the body passes the limit."""


class SyncGate:
    """The in-flight limit of one plan: a semaphore, waited on for at most `wait` seconds."""

    __slots__ = ("_semaphore", "_wait")

    def __init__(self, size: int, wait: float) -> None:
        self._semaphore = threading.BoundedSemaphore(size)
        self._wait = wait

    def acquire(self) -> bool:
        """Take a slot: True when admitted, False when the wait ran out (or was zero)."""
        if self._wait <= 0:
            return self._semaphore.acquire(blocking=False)
        return self._semaphore.acquire(timeout=self._wait)

    def release(self) -> None:
        """Give the slot back."""
        self._semaphore.release()


class LimitedInput:
    """``wsgi.input`` for a body of unknown length: counts bytes, raises past the limit.

    Every read asks the server for at most one byte more than the limit allows, so a huge
    or endless chunked body is never buffered before it is found too large.
    """

    def __init__(self, stream: Any, limit: int, ex: _ExchangeView) -> None:
        self._stream = stream
        self._left = limit
        self._ex = ex

    def _bounded(self, size: int | None) -> int:
        allowed = self._left + 1
        return allowed if size is None or size < 0 else min(size, allowed)

    def _account(self, data: bytes) -> bytes:
        self._left -= len(data)
        if self._left < 0:
            self._ex.body_too_large = True
            raise BodyTooLargeError
        return data

    def read(self, size: int | None = -1) -> bytes:
        """Read up to `size` bytes (all when negative), raising once past the limit."""
        if size is None or size < 0:
            return self._account(self._read_to_end())
        return self._account(self._stream.read(self._bounded(size)))

    def _read_to_end(self) -> bytes:
        """Read until the end of the body, or until one byte past the limit."""
        chunks: list[bytes] = []
        total = 0
        while total <= self._left:
            chunk = self._stream.read(self._left + 1 - total)
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        return b"".join(chunks)

    def readline(self, size: int | None = -1) -> bytes:
        """Read one line (at most `size` bytes), raising once past the limit."""
        return self._account(self._stream.readline(self._bounded(size)))

    def readlines(self, _hint: int = -1) -> list[bytes]:
        """Read the remaining lines, raising once past the limit."""
        return list(self)

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        line = self.readline()
        if not line:
            raise StopIteration
        return line
