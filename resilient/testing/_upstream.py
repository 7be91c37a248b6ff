"""`FaultyUpstream`: a real HTTP/1.1 server on 127.0.0.1 that misbehaves on purpose.

Each request gets a `Fault` (answer, error status, reset, hang, slow body, delay), taken
from a script, a callable or a weighted random mix. The server runs its own asyncio loop
in a daemon thread so sync tests, async tests and demos use it alike; it binds a free
port, counts and records what it received, and stops by itself after `max_requests` or
`max_lifetime` seconds. Stopping closes every connection and wakes every hung handler.

    with FaultyUpstream([Fault.status(503, retry_after="1")], default=Fault.ok()) as up:
        httpx.get(up.url)   # 503, then 200 for every later request
        assert up.requests == 1
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import itertools
import math
import random
import socket
import struct
import threading
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from typing import Literal, Self, TypeVar, cast

from resilient._kernel.aio import current_trio

__all__ = ["Fault", "FaultyUpstream", "ReceivedRequest"]

T = TypeVar("T")

DEFAULT_MAX_LIFETIME = 120.0
DEFAULT_MAX_RECORDED = 10_000
MAX_HANG = 3600.0  # a hang is bounded even when the caller forgets to stop the server
MAX_HEADER_BYTES = 65_536
MAX_RECORDED_BODY = 65_536
START_TIMEOUT = 10.0
# Pause between the partial response and the reset, so the client has read the head:
# the reset then lands in the body as it would when a server dies mid-response.
MID_RESPONSE_PAUSE = 0.05

FaultKind = Literal["ok", "status", "reset", "hang", "slow_body", "delay"]
RetryAfter = str | int | float | timedelta | datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class Fault:
    """What the upstream does with one request; build it with the class-method constructors."""

    kind: FaultKind
    code: int = 200
    body: bytes = b"ok"
    headers: tuple[tuple[str, str], ...] = ()
    retry_after: RetryAfter | None = None
    seconds: float | tuple[float, float] = 0.0
    chunks: tuple[bytes, ...] = ()
    mid_response: bool = False
    then: Fault | None = None

    def __post_init__(self) -> None:
        if not 100 <= self.code <= 599:
            raise ValueError(f"fault.code must be an HTTP status code (100-599), got {self.code!r}")
        low, high = self.seconds if isinstance(self.seconds, tuple) else (self.seconds, self.seconds)
        if not (0 <= low <= high <= MAX_HANG):
            raise ValueError(f"fault.seconds must be within [0, {MAX_HANG}] (low <= high), got {self.seconds!r}")

    @classmethod
    def ok(cls, body: bytes | str = b"ok", *, status: int = 200, headers: Mapping[str, str] | None = None) -> Fault:
        """Answer at once with `status` (200) and `body`."""
        return cls(kind="ok", code=status, body=_as_bytes(body), headers=_as_pairs(headers))

    @classmethod
    def status(
        cls,
        code: int,
        *,
        retry_after: RetryAfter | None = None,
        body: bytes | str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Fault:
        """Answer with an error status; `retry_after` as seconds, or a datetime/timedelta sent as an HTTP-date."""
        text = _as_bytes(body) if body is not None else _phrase(code).encode()
        return cls(kind="status", code=code, body=text, headers=_as_pairs(headers), retry_after=retry_after)

    @classmethod
    def reset(cls, *, mid_response: bool = False) -> Fault:
        """Reset the connection (TCP RST) before answering, or after half of a 200 response."""
        return cls(kind="reset", mid_response=mid_response, body=b"x" * 1024)

    @classmethod
    def hang(cls, seconds: float) -> Fault:
        """Say nothing for `seconds` (or until the server stops), then close the connection."""
        return cls(kind="hang", seconds=seconds)

    @classmethod
    def slow_body(cls, chunks: Iterable[bytes | str] | int, delay: float, *, status: int = 200) -> Fault:
        """Send the head at once, then each chunk (or `chunks` 1-byte chunks) `delay` seconds apart."""
        parts = tuple(b"x" for _ in range(chunks)) if isinstance(chunks, int) else tuple(map(_as_bytes, chunks))
        return cls(kind="slow_body", code=status, chunks=parts, seconds=delay)

    @classmethod
    def delay(cls, seconds: float | tuple[float, float], then: Fault | None = None) -> Fault:
        """Wait `seconds` (or uniformly between two bounds) before doing `then` (default: `ok()`)."""
        return cls(kind="delay", seconds=seconds, then=then or cls.ok())


Fault.__module__ = "resilient.testing"


@dataclass(frozen=True, slots=True)
class ReceivedRequest:
    """One request as the upstream saw it; header names are lower-case."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    fault: Fault


ReceivedRequest.__module__ = "resilient.testing"

FaultSource = Iterable[Fault] | Callable[[ReceivedRequest], Fault]


def _as_bytes(value: bytes | str) -> bytes:
    return value.encode() if isinstance(value, str) else value


def _as_pairs(headers: Mapping[str, str] | None) -> tuple[tuple[str, str], ...]:
    return tuple(headers.items()) if headers else ()


class _StoppedError(Exception):
    """The connection ended (client closed it, the fault closed it, or the server stops)."""


class FaultyUpstream:
    """A fault-injecting HTTP/1.1 server on 127.0.0.1; use it as a (sync or async) context manager.

    `script` is a sequence of faults used one per request in order (then `default`), or a
    callable choosing a fault from the `ReceivedRequest` (its `fault` is a placeholder).
    `FaultyUpstream.mix({...}, seed=...)` draws faults at random by weight instead.
    """

    def __init__(
        self,
        script: FaultSource = (),
        *,
        default: Fault | None = None,
        max_requests: int | None = None,
        max_lifetime: float = DEFAULT_MAX_LIFETIME,
        max_recorded: int = DEFAULT_MAX_RECORDED,
        seed: int | None = None,
    ) -> None:
        if max_requests is not None and max_requests < 1:
            raise ValueError(f"max_requests must be >= 1 or None, got {max_requests!r}")
        if not (max_lifetime > 0 and math.isfinite(max_lifetime)):
            raise ValueError(f"max_lifetime must be a finite number of seconds > 0, got {max_lifetime!r}")
        self._choose = _chooser(script, default or Fault.ok())
        self.max_requests = max_requests
        self.max_lifetime = max_lifetime
        self._random = random.Random(seed)  # noqa: S311 - fault timing, not security
        self.requests = 0
        self.connections = 0
        self.by_path: Counter[str] = Counter()
        self.by_method: Counter[str] = Counter()
        self.received: deque[ReceivedRequest] = deque(maxlen=max_recorded)
        self.port = 0
        self._thread: threading.Thread | None = None
        self._counted = threading.Condition()
        self._ready = threading.Event()
        self._done = threading.Event()
        self._startup_error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    @classmethod
    def mix(
        cls,
        weights: Mapping[Fault, float],
        *,
        seed: int | None = None,
        max_requests: int | None = None,
        max_lifetime: float = DEFAULT_MAX_LIFETIME,
        max_recorded: int = DEFAULT_MAX_RECORDED,
    ) -> FaultyUpstream:
        """Draw each request's fault at random: ``mix({Fault.ok(): 0.7, Fault.status(503): 0.3}, seed=1)``."""
        faults, shares = list(weights), list(weights.values())
        if not faults or any(share < 0 for share in shares) or sum(shares) <= 0:
            raise ValueError(f"weights must map faults to non-negative shares with a positive sum, got {weights!r}")
        rng = random.Random(seed)  # noqa: S311 - fault choice, not security
        return cls(
            lambda _request: rng.choices(faults, shares)[0],
            seed=seed,
            max_requests=max_requests,
            max_lifetime=max_lifetime,
            max_recorded=max_recorded,
        )

    # ------------------------------------------------------------------ lifecycle

    @property
    def url(self) -> str:
        """The base URL, ``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        """True between a successful start and the end of the shutdown."""
        return self._ready.is_set() and not self._done.is_set()

    def start(self) -> Self:
        """Start serving in a daemon thread; return once the port is bound."""
        if self._thread is not None:
            raise RuntimeError("FaultyUpstream can be started only once")
        self._thread = threading.Thread(target=self._run, name="faulty-upstream", daemon=True)
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT):
            raise RuntimeError("FaultyUpstream did not start in time")
        if self._startup_error is not None:
            raise RuntimeError("FaultyUpstream failed to start") from self._startup_error
        return self

    def stop(self) -> None:
        """Close every connection, wake hung handlers and wait for the thread (idempotent)."""
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None and not self._done.is_set():
            with contextlib.suppress(RuntimeError):  # the loop closed between the check and the call
                loop.call_soon_threadsafe(stopping.set)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()

    def wait_requests(self, count: int, timeout: float | None = None) -> bool:
        """Block until at least `count` requests arrived (e.g. one is now hanging); False on timeout."""
        with self._counted:
            return self._counted.wait_for(lambda: self.requests >= count, timeout)

    def wait_stopped(self, timeout: float | None = None) -> bool:
        """Block until the server stopped by itself (or was stopped); False on timeout."""
        return self._done.wait(timeout)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        return await _in_thread(self.start)

    async def __aexit__(self, *_exc: object) -> None:
        await _in_thread(self.stop)

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        except BaseException as error:  # reported to start(); the thread must not die silently
            self._startup_error = error
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
            self._ready.set()
            self._done.set()

    async def _serve(self) -> None:
        self._stopping = asyncio.Event()
        server = await asyncio.start_server(self._accept, "127.0.0.1", 0, limit=MAX_HEADER_BYTES)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.max_lifetime)
        finally:
            self._stopping.set()
            server.close()
            await self._close_connections()
            await server.wait_closed()

    async def _close_connections(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()
        handlers = list(self._handlers)
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)

    # ------------------------------------------------------------------ one connection

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None  # noqa: S101 - always inside a task here
        self._handlers.add(task)
        self._writers.add(writer)
        self.connections += 1
        try:
            while not self._stopping_now():
                request = await _read_request(reader)
                if request is None:
                    break
                if not await self._answer(request, writer):
                    break
        except (_StoppedError, ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        except asyncio.CancelledError:
            # Only the shutdown cancels handlers. End normally: on Python 3.11 asyncio's
            # done-callback calls task.exception() and logs a cancelled handler as an error.
            if not self._stopping_now():
                raise
        finally:
            self._handlers.discard(task)
            self._writers.discard(writer)
            writer.transport.abort()

    def _stopping_now(self) -> bool:
        return self._stopping is None or self._stopping.is_set()

    async def _answer(self, request: ReceivedRequest, writer: asyncio.StreamWriter) -> bool:
        """Apply the fault; True when the connection may serve another request."""
        if self._limit_reached():
            return False  # a request racing the shutdown on another connection: not served
        fault = self._choose(request)
        self._count(request, fault)
        keep_alive = await self._apply(fault, request, writer)
        if self._limit_reached():
            self._stopping.set()  # type: ignore[union-attr]
            return False
        return keep_alive and request.headers.get("connection", "").lower() != "close"

    def _limit_reached(self) -> bool:
        return self.max_requests is not None and self.requests >= self.max_requests

    def _count(self, request: ReceivedRequest, fault: Fault) -> None:
        self.by_path[request.path] += 1
        self.by_method[request.method] += 1
        self.received.append(
            ReceivedRequest(request.method, request.path, request.headers, request.body[:MAX_RECORDED_BODY], fault)
        )
        with self._counted:  # last, so a waiter woken here sees the recorded request
            self.requests += 1
            self._counted.notify_all()

    async def _apply(self, fault: Fault, request: ReceivedRequest, writer: asyncio.StreamWriter) -> bool:
        kind = fault.kind
        if kind == "delay":
            await self._pause(self._seconds(fault.seconds))
            return await self._apply(fault.then or Fault.ok(), request, writer)
        if kind == "hang":
            await self._pause(self._seconds(fault.seconds))
            return False
        if kind == "reset":
            await self._reset(fault, writer)
            return False
        if kind == "slow_body":
            await self._send_slowly(fault, writer)
            return True
        writer.write(_head(fault.code, _headers_of(fault), len(fault.body)) + fault.body)
        await writer.drain()
        return True

    def _seconds(self, seconds: float | tuple[float, float]) -> float:
        return self._random.uniform(*seconds) if isinstance(seconds, tuple) else seconds

    async def _pause(self, seconds: float) -> None:
        """Sleep, but wake at once when the server stops."""
        assert self._stopping is not None  # noqa: S101 - set before any connection
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)
        if self._stopping.is_set():
            raise _StoppedError

    async def _reset(self, fault: Fault, writer: asyncio.StreamWriter) -> None:
        if fault.mid_response:
            writer.write(_head(200, [], len(fault.body)) + fault.body[: len(fault.body) // 2])
            await writer.drain()
            await self._pause(MID_RESPONSE_PAUSE)
        _abort_with_rst(writer)

    async def _send_slowly(self, fault: Fault, writer: asyncio.StreamWriter) -> None:
        delay = self._seconds(fault.seconds)
        writer.write(_head(fault.code, [], sum(map(len, fault.chunks))))
        await writer.drain()
        for chunk in fault.chunks:
            await self._pause(delay)
            writer.write(chunk)
            await writer.drain()


# ---------------------------------------------------------------------- choosing faults


def _chooser(script: FaultSource, default: Fault) -> Callable[[ReceivedRequest], Fault]:
    if callable(script):
        return script
    faults: Iterator[Fault] = itertools.chain(script, itertools.repeat(default))
    return lambda _request: next(faults)


# ---------------------------------------------------------------------- HTTP/1.1 wire format


async def _in_thread(fn: Callable[[], T]) -> T:
    """Run a blocking `fn` off the event loop: asyncio's `to_thread`, or trio's under trio."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return cast("T", await current_trio().to_thread.run_sync(fn))
    return await asyncio.to_thread(fn)


async def _read_request(reader: asyncio.StreamReader) -> ReceivedRequest | None:
    """Parse one request (None when the client closed an idle connection)."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as error:
        if error.partial.strip():
            raise
        return None
    request_line, *header_lines = head.decode("latin-1").split("\r\n")
    method, target, _version = request_line.split(" ", 2)
    headers: dict[str, str] = {}
    for line in header_lines:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    body = await _read_body(reader, headers)
    return ReceivedRequest(method, target, headers, body, Fault.ok())


async def _read_body(reader: asyncio.StreamReader, headers: Mapping[str, str]) -> bytes:
    if headers.get("transfer-encoding", "").lower() == "chunked":
        return await _read_chunked(reader)
    length = int(headers.get("content-length", "0") or "0")
    return await reader.readexactly(length) if length else b""


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts: list[bytes] = []
    while True:
        size_line = await reader.readuntil(b"\r\n")
        size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
        if size == 0:
            await reader.readuntil(b"\r\n")  # no trailers are sent by httpx: just the final CRLF
            return b"".join(parts)
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)


def _headers_of(fault: Fault) -> list[tuple[str, str]]:
    headers = list(fault.headers)
    if fault.retry_after is not None:
        headers.append(("Retry-After", _format_retry_after(fault.retry_after)))
    return headers


def _format_retry_after(value: RetryAfter) -> str:
    """Seconds as given, or an HTTP-date (a timedelta counts from now)."""
    if isinstance(value, timedelta):
        value = datetime.now(UTC) + value
    if isinstance(value, datetime):
        return email.utils.format_datetime(value.astimezone(UTC), usegmt=True)
    return str(value)


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def _head(status: int, headers: list[tuple[str, str]], length: int) -> bytes:
    lines = [f"HTTP/1.1 {status} {_phrase(status)}", f"Content-Length: {length}"]
    if not any(name.lower() == "content-type" for name, _ in headers):
        lines.append("Content-Type: text/plain")
    lines.extend(f"{name}: {value}" for name, value in headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _abort_with_rst(writer: asyncio.StreamWriter) -> None:
    """Close with SO_LINGER 0, so the peer gets a TCP RST rather than an orderly FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
