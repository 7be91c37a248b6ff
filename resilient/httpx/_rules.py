"""HTTP facts the httpx transports decide by: what is idempotent, transient, retryable.

Plain constants and functions over httpx objects, shared by the options (validation) and
the per-request engine (`resilient.httpx._engine`); cheap enough for every request.
"""

from __future__ import annotations

import email.utils
import math
import re
import time
from collections.abc import Iterable
from datetime import UTC

import httpx
from httpx._multipart import MultipartStream

__all__ = [
    "DEFAULT_PORTS",
    "IDEMPOTENCY_KEY",
    "IDEMPOTENT_METHODS",
    "KNOWN_METHODS",
    "NOT_THE_HOSTS_FAULT",
    "REPLAYABLE_STREAMS",
    "RETRY_STATUSES",
    "TRANSIENT_ERRORS",
    "StatusFailure",
    "body_is_replayable",
    "counts_as_failure",
    "normalise_methods",
    "normalise_statuses",
    "parse_retry_after",
]

#: Methods that may be repeated without changing the outcome (RFC 9110 section 9.2.2).
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
#: Statuses that say "try again later" rather than "this request is wrong".
RETRY_STATUSES = frozenset({429, 502, 503, 504})
#: The header that makes a non-idempotent request safe to repeat (draft-ietf-httpapi-idempotency-key-header).
IDEMPOTENCY_KEY = "idempotency-key"
#: Methods the HTTP semantic conventions name; others are reported as ``_OTHER``.
KNOWN_METHODS = frozenset({"CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE"})
DEFAULT_PORTS = {"http": 80, "https": 443}

#: Transport failures worth another attempt of an idempotent request: the connection could
#: not be made or broke, or a connect/read/write/pool timeout fired. Protocol violations by
#: our side (`LocalProtocolError`, `UnsupportedProtocol`) and decoding errors are bugs, not weather.
TRANSIENT_ERRORS: tuple[type[Exception], ...] = (
    httpx.TimeoutException,
    httpx.NetworkError,
    httpx.RemoteProtocolError,
)

#: Errors httpx raises about the request itself, never about the host's health: they pass
#: through unchanged and never count against the host's breaker (an unsupported scheme or a
#: URL without a host must not open a breaker and then come out as `CircuitOpenError`).
NOT_THE_HOSTS_FAULT: tuple[type[Exception], ...] = (
    httpx.UnsupportedProtocol,
    httpx.LocalProtocolError,
    httpx.InvalidURL,
    httpx.StreamError,
)

_MAX_RETRY_AFTER_TEXT = 64  # longer values are not a delay or a date: ignore them
#: The longest wait a ``Retry-After`` can ask for. RFC 9110 section 1.2.2: a delta-seconds
#: too large to represent is taken as 2**31 (68 years); the caller then gives up waiting
#: (``max_retry_after``) or caps the wait by its deadline.
_MAX_RETRY_AFTER_SECONDS = float(2**31)
# Delta-seconds in ASCII digits (`float` also reads other scripts' digits and "1_000"),
# leniently with a fraction or an exponent ("1.5", "1e3").
_DELTA_SECONDS_RE = re.compile(r"[0-9]+(?:\.[0-9]*)?(?:[eE][+-]?[0-9]+)?")


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds a ``Retry-After`` value asks to wait, rounded up to the millisecond.

    Accepts delta-seconds (``"120"``, leniently ``"1.5"`` or ``"1e3"``) and an HTTP-date
    (waited until, measured against `now`, a `time.time()` value). Absent, malformed or
    negative values give None; a date in the past gives 0.0. Never raises: a delay too large
    to represent (``"1e306"``, a date in the year 9999) is capped at 2**31 seconds, never
    shortened below that, so the caller never waits less than the server asked.
    """
    if value is None:
        return None
    text = value.strip()
    if not text or len(text) > _MAX_RETRY_AFTER_TEXT or not text.isascii():
        return None
    seconds = _delta_seconds(text)
    if seconds is None:
        seconds = _seconds_until_date(text, time.time() if now is None else now)
    if seconds is None:
        return None
    # Round up so that we never wait less than the server asked (dotnet/extensions#7001).
    return math.ceil(min(seconds, _MAX_RETRY_AFTER_SECONDS) * 1000) / 1000


def _delta_seconds(text: str) -> float | None:
    if _DELTA_SECONDS_RE.fullmatch(text) is None:
        return None
    return float(text)  # finite or inf (capped by the caller); the pattern is what float reads


def _seconds_until_date(text: str, now: float) -> float | None:
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # "-0000" parses zone-less; HTTP-dates are always GMT
        when = when.replace(tzinfo=UTC)
    try:
        return max(when.timestamp() - now, 0.0)
    except (OverflowError, ValueError):  # an instant out of the platform's range
        return None


def counts_as_failure(status: int) -> bool:
    """Does this status count against the host's circuit breaker? 5xx and 429 do; other 4xx do not."""
    return status >= 500 or status == 429


REPLAYABLE_STREAMS = (httpx.ByteStream, MultipartStream)  # a tuple: `A | B` would build a union per call


def body_is_replayable(request: httpx.Request) -> bool:
    """Can the request body be sent again? Bytes and multipart (files are re-read from 0) can.

    A body given as an iterator or generator is consumed by the first attempt, so such a
    request is sent at most once.
    """
    return isinstance(request.stream, REPLAYABLE_STREAMS)


def normalise_statuses(field: str, statuses: object) -> frozenset[int]:
    """Validate a set of HTTP status codes (100-599)."""
    if isinstance(statuses, str | bytes) or not isinstance(statuses, Iterable):
        raise TypeError(f"{field} must be a set of HTTP status codes, got {statuses!r}")
    values = frozenset(statuses)
    bad = sorted(repr(code) for code in values if isinstance(code, bool) or not isinstance(code, int))
    if bad:
        raise TypeError(f"{field} must contain ints (HTTP status codes), got {', '.join(bad)}")
    out_of_range = sorted(code for code in values if not 100 <= code <= 599)
    if out_of_range:
        raise ValueError(f"{field} must contain HTTP status codes between 100 and 599, got {out_of_range}")
    return values


def normalise_methods(field: str, methods: object) -> frozenset[str]:
    """Validate a set of HTTP method names; returns them upper-cased."""
    if isinstance(methods, str | bytes) or not isinstance(methods, Iterable):
        raise TypeError(f"{field} must be a set of HTTP method names such as {{'GET', 'PUT'}}, got {methods!r}")
    values = list(methods)
    bad = [repr(m) for m in values if not isinstance(m, str) or not m.strip() or not m.strip().isalpha()]
    if bad:
        raise ValueError(f"{field} must contain HTTP method names such as 'GET', got {', '.join(bad)}")
    return frozenset(m.strip().upper() for m in values)


class StatusFailure(Exception):  # noqa: N818 - it carries a response, it is not an error the caller sees
    """A response whose status counts as a failure (5xx, 429, or one the retry predicate flags).

    Used inside the policy only: it feeds the host's breaker and drives the retry loop, and
    is turned back into the response before the transport returns. Retry and breaker events
    name it as their error; telemetry names it by the status the user sees (``error_type``
    / ``error.type`` ``"503"``, as the HTTP semantic conventions do), not by this class.
    """

    def __init__(self, response: httpx.Response, retry_after: float | None) -> None:
        status = response.status_code
        super().__init__(f"HTTP {status}")
        self.response = response
        self.retry_after = retry_after
        #: Read by `resilient.instrumentation` for `error.type`: the status code, as a string.
        self._resilient_error_type = str(status)


StatusFailure.__module__ = "resilient.httpx"  # where users meet it (re-exported there)
