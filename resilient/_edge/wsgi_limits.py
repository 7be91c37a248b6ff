"""The WSGI middleware's per-request limits: the in-flight gate and the body-size limit on ``wsgi.input``.

A WSGI server runs its requests in several threads at once, so the gate is the core's
thread-safe bulkhead (the ASGI twin in `_edge.asgi_limits` is a counter on one event loop). A
body of unknown length is counted as the app reads it: the read that passes the limit
raises `BodyTooLargeError` inside the app, and the middleware answers 413.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from resilient._strategies.bulkhead import Bulkhead, BulkheadRuntime

__all__ = ["BodyTooLargeError", "LimitedInput", "SyncGate"]


class BodyTooLargeError(Exception):
    """Raised inside the app by the wrapped ``wsgi.input`` once the body passes the limit."""


class SyncGate:
    """The in-flight limit of one plan: `size` slots, waited for at most `wait` seconds.

    The core bulkhead's slots (`BulkheadRuntime`), not a `threading.BoundedSemaphore`: a
    slot is taken and given back without a lock while nobody waits (the semaphore takes
    its condition's lock on both, about 14k instructions a request), and waiters are
    served in arrival order, which a semaphore does not promise.
    """

    __slots__ = ("_slots", "release")

    def __init__(self, size: int, wait: float) -> None:
        self._slots = BulkheadRuntime(Bulkhead(max_concurrent=size, max_wait=wait))
        #: Give the slot back (to the oldest waiter, if any).
        self.release = self._slots.release

    def acquire(self) -> bool:
        """Take a slot: True when admitted, False when the wait ran out (or was zero)."""
        slots = self._slots
        return slots.try_acquire() or slots.wait_for_slot(slots.max_wait)


class LimitedInput:
    """``wsgi.input`` for a body of unknown length: counts bytes, raises past the limit.

    Every read asks the server for at most one byte more than the limit allows, so a huge
    or endless chunked body is never buffered before it is found too large.
    """

    #: Set by the read that passed the limit. The exchange reads it here (it holds this
    #: stream); a reference back to the exchange would make the request's objects a cycle,
    #: left for the garbage collector instead of freed when the request ends.
    too_large = False

    def __init__(self, stream: Any, limit: int) -> None:
        self._stream = stream
        self._left = limit

    def _bounded(self, size: int | None) -> int:
        allowed = self._left + 1
        return allowed if size is None or size < 0 else min(size, allowed)

    def _account(self, data: bytes) -> bytes:
        self._left -= len(data)
        if self._left < 0:
            self.too_large = True
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
