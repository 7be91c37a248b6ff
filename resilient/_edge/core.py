"""What the ASGI and WSGI middleware share: request ids, client keys, rate limits, routes, bodies, errors.

Everything here is decided once, when a middleware is built, from the options validated in
`_edge.options`: header names are encoded, per-route plans are compiled. The per-request
helpers below allocate only what the request needs.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final, Generic, TypeVar

import limits

from resilient._edge.options import UNSET, Algorithm, EdgeOptions, RouteOptions
from resilient._strategies.ratelimit import LimiterRuntime, RateLimit

__all__ = [
    "Edge",
    "Limiter",
    "RateDecision",
    "RoutePlan",
]

# --- defaults and rules ------------------------------------------------------------------

#: Retry-After sent with a 503 when the in-flight limit sheds a request: the middleware cannot
#: know when a slot frees up, and one second spreads retries without stalling clients.
SHED_RETRY_AFTER: Final = 1

#: An accepted request id: 1 to 128 characters from a set that is safe in a header, a log
#: line, a JSON string and a URL (no quote, backslash, space, CR or LF can ever pass).
REQUEST_ID_RE: Final = re.compile(rb"[A-Za-z0-9._:-]{1,128}")


# --- request ids -------------------------------------------------------------------------


def accept_request_id(raw: bytes | str | None) -> str:
    """The caller's request id when well-formed, else a fresh one (uuid4, 32 hex digits).

    ASGI passes header bytes, WSGI latin-1 text; both are checked as bytes against
    `REQUEST_ID_RE`, so CR, LF or any other byte outside the safe set can never be echoed.
    """
    if isinstance(raw, str):
        raw = raw.encode("latin-1", "replace")  # "?" is outside the safe set: rejected below
    if raw is not None and REQUEST_ID_RE.fullmatch(raw):
        return raw.decode("ascii")
    return new_request_id()


def new_request_id() -> str:
    """A random (version 4) UUID as 32 hex digits, built without `uuid.UUID` (4x cheaper)."""
    global _fresh_ids  # noqa: PLW0603 - the batch is replaced whole, never mutated
    try:
        return next(_fresh_ids)
    except StopIteration:
        _fresh_ids = _id_batch()
        return next(_fresh_ids)


# Ids come in batches: one `os.urandom` call (a system call, about 0.4 µs) serves 256
# requests. `next()` on a list iterator is one C call, so two threads (WSGI) never get the
# same id; two threads that both find the batch empty each make their own.
_ID_BATCH: Final = 256


# Byte maps setting a UUID's version and variant bits, applied to a whole batch in one
# `bytes.translate` each (a generator over the bytes cost more than the random draw).
_VERSION_4: Final = bytes((byte & 0x0F) | 0x40 for byte in range(256))
_RFC_4122_VARIANT: Final = bytes((byte & 0x3F) | 0x80 for byte in range(256))


def _id_batch() -> Iterator[str]:
    raw = bytearray(os.urandom(16 * _ID_BATCH))
    raw[6::16] = raw[6::16].translate(_VERSION_4)
    raw[8::16] = raw[8::16].translate(_RFC_4122_VARIANT)
    text = raw.hex()
    return iter([text[start : start + 32] for start in range(0, len(text), 32)])


def _forget_ids() -> None:
    """In a forked child: never hand out ids the parent's batch may also hand out."""
    global _fresh_ids  # noqa: PLW0603 - see new_request_id
    _fresh_ids = iter(())


_fresh_ids: Iterator[str] = iter(())
os.register_at_fork(after_in_child=_forget_ids)


# --- client address behind trusted proxies ------------------------------------------------

_Address = ipaddress.IPv4Address | ipaddress.IPv6Address
_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _parse_ip(text: str) -> _Address | None:
    """An IP address from a forwarded hop (``1.2.3.4``, ``1.2.3.4:80``, ``[::1]:80``), or None."""
    text = text.strip().strip('"')
    if "%" in text:
        return None  # a zone id ("fe80::1%eth0") is free text: never part of a client key
    if text.startswith("["):
        text = text[1 : text.find("]")] if "]" in text else ""
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    # A dual-stack listener reports IPv4 peers as ::ffff:a.b.c.d; compare them as IPv4.
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _forwarded_for(value: str) -> list[_Address | None]:
    """The ``for=`` hops of an RFC 7239 ``Forwarded`` header, left to right (None: not an IP)."""
    hops: list[_Address | None] = []
    for element in value.split(","):
        hop: _Address | None = None
        for pair in element.split(";"):
            name, _, token = pair.partition("=")
            if name.strip().lower() == "for":
                hop = _parse_ip(token)
        hops.append(hop)
    return hops


def _x_forwarded_for(value: str) -> list[_Address | None]:
    """The hops of an ``X-Forwarded-For`` header, left to right (None: not an IP)."""
    return [_parse_ip(hop) for hop in value.split(",")]


class ClientResolver:
    """Finds the client address: the socket peer, or a forwarded hop when proxies are trusted.

    Forwarded headers are read only when the socket peer is inside `trusted_proxies`. The
    chain (``Forwarded`` when present, else ``X-Forwarded-For``) is then walked from the
    right, skipping trusted proxies; the first untrusted hop is the client. An entry that is
    not an IP address (``unknown``, an obfuscated name, garbage) stops the walk and the last
    trusted hop is used: nothing a client wrote is ever taken as its key.
    """

    __slots__ = ("_networks", "enabled")

    def __init__(self, trusted: Sequence[str]) -> None:
        self._networks: tuple[_Network, ...] = tuple(ipaddress.ip_network(net, strict=False) for net in trusted)
        #: Whether any proxy is trusted (else the peer is always the client). An attribute,
        #: not a property: it is read on every request.
        self.enabled = bool(self._networks)

    def _trusted(self, address: _Address | None) -> bool:
        return address is not None and any(address in network for network in self._networks)

    def peer_is_trusted(self, peer: str) -> bool:
        """Whether forwarded headers from this socket peer may be believed."""
        return bool(self._networks) and self._trusted(_parse_ip(peer))

    def resolve(self, peer: str, forwarded: str | None, x_forwarded_for: str | None) -> str:
        """The client address for a request from a trusted `peer` carrying these headers."""
        if forwarded:
            hops = _forwarded_for(forwarded)
        elif x_forwarded_for:
            hops = _x_forwarded_for(x_forwarded_for)
        else:
            return peer
        nearest = peer
        for hop in reversed(hops):
            if hop is None:
                return nearest
            nearest = str(hop)
            if not self._trusted(hop):
                return nearest
        return nearest


# --- rate limiting -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RateDecision:
    """The state of the most constraining limit after a hit: what the headers report."""

    admitted: bool
    name: str
    limit: int
    remaining: int
    reset_after: float


class Limiter:
    """One route's rate limit: the core's limiter runtime plus the headers that report it.

    Admission is `resilient`'s own `LimiterRuntime`, the engine of ``@resilient(rate_limit=)``:
    O(1) per request in memory (a `limits` MemoryStorage hit costs 4-12 µs, more than a bare
    Starlette request), and `limits`' strategies on a Redis storage, degrading to local
    windows while Redis is unreachable. Several limits (``"10/second;1000/hour"``) are one
    policy each in the headers.
    """

    def __init__(self, limit: str, algorithm: Algorithm, storage: str, label: str) -> None:
        config = RateLimit(limit, algorithm=algorithm, storage=storage, name=f"http.{label}")
        self._runtime = LimiterRuntime(config, scope=f"http.{label}")
        self.asynchronous = self._runtime.shared
        items = limits.parse_many(limit)
        names = [label] if len(items) == 1 else [f"{label}-{item.multiples}{item.GRANULARITY.name}" for item in items]
        self._items = [(name, item.amount) for name, item in zip(names, items, strict=True)]
        self.policy_header = ", ".join(
            f'"{name}";q={item.amount};w={item.get_expiry()}' for name, item in zip(names, items, strict=True)
        ).encode("ascii")

    def hit(self, key: str, *, want_state: bool) -> RateDecision | None:
        """Count one request: None when admitted and no state was asked for."""
        wait = self._runtime.try_acquire(key)
        if not wait and not want_state:
            return None  # the common case, decided here: one call less per request
        return self._decision(key, wait, want_state=want_state)

    async def ahit(self, key: str, *, want_state: bool) -> RateDecision | None:
        """`hit` for a shared storage on the async side (``redis.asyncio``: the loop never blocks)."""
        return self._decision(key, await self._runtime.atry_acquire(key), want_state=want_state)

    def _decision(self, key: str, wait: float, *, want_state: bool) -> RateDecision | None:
        if not wait and not want_state:
            return None
        states = self._states(key)
        if wait:
            index = next((i for i, (remaining, _) in enumerate(states) if remaining == 0), 0)
            name, amount = self._items[index]
            return RateDecision(admitted=False, name=name, limit=amount, remaining=0, reset_after=wait)
        if not states:
            return None  # a shared storage does not report its windows yet: no success headers
        index = min(range(len(states)), key=lambda i: states[i][0])
        name, amount = self._items[index]
        remaining, reset_after = states[index]
        return RateDecision(admitted=True, name=name, limit=amount, remaining=remaining, reset_after=reset_after)

    def _states(self, key: str) -> list[tuple[int, float]]:
        """(remaining, seconds to reset) per limit item, from the in-process windows."""
        return [] if self._runtime.shared else self._runtime.state(key)


def rate_limit_headers(decision: RateDecision, policy_header: bytes, *, legacy: bool) -> list[tuple[bytes, bytes]]:
    """The IETF draft-11 ``RateLimit-Policy``/``RateLimit`` pair, the draft-06 trio, Retry-After.

    ``t`` and ``RateLimit-Reset`` are whole seconds rounded up (a client waiting that long is
    never early); ``Retry-After`` is sent on rejections only and is at least one second.
    """
    reset = math.ceil(decision.reset_after)
    headers = [
        (b"ratelimit-policy", policy_header),
        (b"ratelimit", b'"%s";r=%d;t=%d' % (decision.name.encode("ascii"), decision.remaining, reset)),
    ]
    if legacy:
        headers += [
            (b"ratelimit-limit", b"%d" % decision.limit),
            (b"ratelimit-remaining", b"%d" % decision.remaining),
            (b"ratelimit-reset", b"%d" % reset),
        ]
    if not decision.admitted:
        headers.append((b"retry-after", b"%d" % max(reset, 1)))
    return headers


# --- per-route plans ---------------------------------------------------------------------

G = TypeVar("G")


@dataclass(frozen=True, slots=True)
class RoutePlan(Generic[G]):
    """The effective protections for the requests of one route prefix (or the default)."""

    label: str
    limiter: Limiter | None
    gate: G | None
    timeout: float | None
    max_body_size: int | None


GateFactory = Callable[[int, float], G]


def _route_value(route: RouteOptions, name: str, default: Any) -> Any:
    value = getattr(route, name)
    return default if value is UNSET else value


class Router(Generic[G]):
    """Picks the plan for a path: the longest matching route prefix, at a segment boundary.

    ``"/api"`` matches ``/api`` and ``/api/users`` but not ``/apix``. Prefixes, not route
    templates, because every protection here acts before the framework has routed the
    request. Without routes, every request gets the default plan at no cost.
    """

    def __init__(self, options: EdgeOptions, make_gate: GateFactory[G]) -> None:
        default_limiter = self._limiter(options, options.rate_limit, "default")
        default_gate = make_gate(options.max_in_flight, options.max_in_flight_wait) if options.max_in_flight else None
        self.default: RoutePlan[G] = RoutePlan(
            "default", default_limiter, default_gate, options.timeout, options.max_body_size
        )
        prefixes = sorted(options.routes, key=len, reverse=True)
        self._routes: tuple[tuple[str, str, RoutePlan[G]], ...] = tuple(
            (prefix.rstrip("/"), prefix.rstrip("/") + "/", self._plan(prefix, options, make_gate))
            for prefix in prefixes
        )

    def _limiter(self, options: EdgeOptions, limit: str | None, label: str) -> Limiter | None:
        return None if limit is None else Limiter(limit, options.rate_limit_algorithm, options.storage, label)

    def _plan(self, prefix: str, options: EdgeOptions, make_gate: GateFactory[G]) -> RoutePlan[G]:
        route = options.routes[prefix]
        limiter = self.default.limiter
        if route.rate_limit is not UNSET:
            limiter = self._limiter(options, route.rate_limit, prefix)
        gate = self.default.gate
        if route.max_in_flight is not UNSET or route.max_in_flight_wait is not UNSET:
            size = _route_value(route, "max_in_flight", options.max_in_flight)
            wait = _route_value(route, "max_in_flight_wait", options.max_in_flight_wait)
            gate = make_gate(size, wait) if size else None
        return RoutePlan(
            prefix,
            limiter,
            gate,
            _route_value(route, "timeout", options.timeout),
            _route_value(route, "max_body_size", options.max_body_size),
        )

    def plan_for(self, path: str) -> RoutePlan[G]:
        """The plan of the longest route prefix matching `path`, else the default plan."""
        for exact, below, plan in self._routes:
            if path == exact or path.startswith(below):
                return plan
        return self.default


# --- what both middlewares compile -------------------------------------------------------


class Edge(Generic[G]):
    """Options compiled for one middleware instance (immutable after construction)."""

    def __init__(self, options: EdgeOptions, make_gate: GateFactory[G]) -> None:
        self.options = options
        header = options.request_id_header.lower()
        self.request_id_header = header.encode("latin-1") if options.request_id else None
        self.request_id_environ = "HTTP_" + header.upper().replace("-", "_") if options.request_id else None
        self.request_id_response_name = header.encode("latin-1")
        self.clients = ClientResolver(options.trusted_proxies)
        self.router: Router[G] = Router(options, make_gate)
        self.key_function = options.rate_limit_key


def effective_timeout(local: float | None, header_seconds: float | None) -> float | None:
    """The request's budget: the local timeout, shortened (never lengthened) by the caller's."""
    if header_seconds is None:
        return local
    return header_seconds if local is None else min(local, header_seconds)


# ASCII digits (``str.isdigit`` also accepts "²"), optional spaces or tabs around (RFC 9110 OWS).
_CONTENT_LENGTH_RE: Final = re.compile(r"[ \t]*0*([0-9]+)[ \t]*")


def content_length_verdict(value: bytes | str | None, limit: int) -> int | None:
    """The status to answer before reading a body: 413 when declared too big, 400 when invalid.

    The digits are compared by count before they are converted: `int` refuses strings of more
    than 4,300 digits, and a number longer than the limit is larger than it whatever it says.
    """
    if value is None:
        return None
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    match = _CONTENT_LENGTH_RE.fullmatch(text)
    if match is None:
        return 400
    digits = match[1]
    if len(digits) > len(str(limit)):
        return 413
    return 413 if int(digits) > limit else None


# --- error responses ---------------------------------------------------------------------

#: Status -> (error code in the JSON body, reason phrase for a WSGI status line).
ERRORS: Final[dict[int, tuple[str, str]]] = {
    400: ("bad_request", "Bad Request"),
    413: ("payload_too_large", "Content Too Large"),
    429: ("rate_limited", "Too Many Requests"),
    500: ("internal_error", "Internal Server Error"),
    503: ("overloaded", "Service Unavailable"),
    504: ("deadline_exceeded", "Gateway Timeout"),
}
#: Why the middleware answered itself, as the access log's ``rejection`` field.
REJECTIONS: Final[dict[int, str]] = {status: code for status, (code, _) in ERRORS.items()}


def error_body(status: int, request_id: str | None) -> bytes:
    """A small JSON body: the error code and the request id, nothing about the failure itself.

    The request id was validated against a charset without quotes or backslashes (or
    generated), so it is placed in the JSON string as is.
    """
    code = ERRORS[status][0]
    if request_id is None:
        return b'{"error":"%s"}' % code.encode("ascii")
    return b'{"error":"%s","request_id":"%s"}' % (code.encode("ascii"), request_id.encode("ascii"))


def error_headers(body: bytes) -> list[tuple[bytes, bytes]]:
    """The content headers of an error response."""
    return [
        (b"content-type", b"application/json"),
        (b"content-length", b"%d" % len(body)),
        (b"cache-control", b"no-store"),
    ]
