"""The options both middlewares share: defaults, rules, `RouteOptions`, `EdgeOptions`.

Checked once, when a middleware is built: every option is validated (errors name the field,
the value and what is allowed) and normalised into a frozen `EdgeOptions`, which `_edge`
then compiles into request-id headers, client resolution and per-route plans.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Final, Literal

import limits

from resilient._kernel.validate import check_int, check_seconds
from resilient._storage.config import check_storage
from resilient._strategies.ratelimit import DEFAULT_ALGORITHM as RATE_LIMIT_DEFAULT_ALGORITHM

__all__ = [
    "UNSET",
    "EdgeOptions",
    "RequestInfo",
    "RouteOptions",
    "build_options",
]

# --- defaults and rules ------------------------------------------------------------------

DEFAULT_REQUEST_ID_HEADER: Final = "X-Request-ID"
DEFAULT_ALGORITHM: Final = RATE_LIMIT_DEFAULT_ALGORITHM  # one default: the decorator's (RateLimit's)
DEFAULT_STORAGE: Final = "memory://"

Algorithm = Literal["fixed-window", "sliding-window", "moving-window"]
ALGORITHMS: Final[tuple[Algorithm, ...]] = ("fixed-window", "sliding-window", "moving-window")

# RFC 9110 token characters: what a header name may contain.
_HEADER_NAME_RE: Final = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")
# A route prefix: a path starting with "/", printable ASCII, no quote or backslash (it names a
# rate-limit policy inside a structured header string).
_ROUTE_PREFIX_RE: Final = re.compile(r"/[\x21\x23-\x5b\x5d-\x7e]*")


class _Unset(enum.Enum):
    """Marks a route option that inherits the middleware-wide value."""

    UNSET = "UNSET"

    def __repr__(self) -> str:
        return "UNSET"


UNSET: Final = _Unset.UNSET


# --- options -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class RouteOptions:
    """Overrides for requests whose path starts with a prefix (see `routes`).

    A field left `UNSET` inherits the middleware-wide value; ``None`` switches the feature off
    for the route. An override replaces the global setting, it does not stack: a route with
    its own ``rate_limit`` counts in its own buckets, one with its own ``max_in_flight`` has
    its own slots, and its requests no longer count against the global ones.
    """

    rate_limit: str | Literal[_Unset.UNSET] | None = UNSET
    max_in_flight: int | Literal[_Unset.UNSET] | None = UNSET
    max_in_flight_wait: float | Literal[_Unset.UNSET] = UNSET
    timeout: float | Literal[_Unset.UNSET] | None = UNSET
    max_body_size: int | Literal[_Unset.UNSET] | None = UNSET

    def __post_init__(self) -> None:
        if self.rate_limit is not UNSET:
            _check_rate_limit("RouteOptions.rate_limit", self.rate_limit)
        if self.max_in_flight is not UNSET:
            _check_optional_int("RouteOptions.max_in_flight", self.max_in_flight, minimum=1)
        if self.max_in_flight_wait is not UNSET:
            _set(self, "max_in_flight_wait", _check_wait("RouteOptions.max_in_flight_wait", self.max_in_flight_wait))
        if self.timeout is not UNSET:
            _set(self, "timeout", _check_optional_seconds("RouteOptions.timeout", self.timeout))
        if self.max_body_size is not UNSET:
            _check_optional_int("RouteOptions.max_body_size", self.max_body_size, minimum=0)


@dataclass(frozen=True, slots=True)
class RequestInfo:
    """What a custom `rate_limit_key` function sees of a request (header names lower-case)."""

    method: str
    path: str
    client: str
    headers: Mapping[str, str]


KeyFunction = Callable[[RequestInfo], "str | None"]


@dataclass(frozen=True, slots=True, kw_only=True)
class EdgeOptions:
    """Every option of `ResilientMiddleware` and `ResilientWSGIMiddleware`, validated."""

    request_id: bool = True
    request_id_header: str = DEFAULT_REQUEST_ID_HEADER
    tracing: bool = True
    access_log: bool = True
    rate_limit: str | None = None
    rate_limit_key: KeyFunction | None = None
    rate_limit_algorithm: Algorithm = DEFAULT_ALGORITHM
    routes: Mapping[str, RouteOptions] = field(default_factory=dict)
    legacy_ratelimit_headers: bool = True
    ratelimit_headers_on_success: bool = False
    max_in_flight: int | None = None
    max_in_flight_wait: float = 0.0
    timeout: float | None = None
    honour_deadline_header: bool = True
    max_body_size: int | None = None
    error_shield: bool = True
    trusted_proxies: Sequence[str] = ()
    storage: str = DEFAULT_STORAGE

    def __post_init__(self) -> None:
        for flag in _BOOL_FIELDS:
            _check_bool(flag, getattr(self, flag))
        _check_header_name("request_id_header", self.request_id_header)
        _check_rate_limit("rate_limit", self.rate_limit)
        if self.rate_limit_key is not None and not callable(self.rate_limit_key):
            raise TypeError(f"rate_limit_key must be a callable or None, got {self.rate_limit_key!r}")
        if self.rate_limit_algorithm not in ALGORITHMS:
            raise ValueError(f"rate_limit_algorithm must be one of {ALGORITHMS}, got {self.rate_limit_algorithm!r}")
        _check_routes(self.routes)
        _check_optional_int("max_in_flight", self.max_in_flight, minimum=1)
        _set(self, "max_in_flight_wait", _check_wait("max_in_flight_wait", self.max_in_flight_wait))
        _set(self, "timeout", _check_optional_seconds("timeout", self.timeout))
        _check_optional_int("max_body_size", self.max_body_size, minimum=0)
        _set(self, "trusted_proxies", tuple(str(net) for net in _parse_networks(self.trusted_proxies)))
        _check_storage(self.storage)


_BOOL_FIELDS: Final = (
    "request_id",
    "tracing",
    "access_log",
    "legacy_ratelimit_headers",
    "ratelimit_headers_on_success",
    "honour_deadline_header",
    "error_shield",
)
_OPTION_NAMES: Final = tuple(sorted(f.name for f in fields(EdgeOptions)))


def build_options(options: Mapping[str, Any]) -> EdgeOptions:
    """Validate middleware keyword options; an unknown name is an error listing the known ones."""
    unknown = sorted(set(options) - set(_OPTION_NAMES))
    if unknown:
        raise TypeError(f"unknown middleware option {unknown[0]!r}; allowed: {', '.join(_OPTION_NAMES)}")
    return EdgeOptions(**options)


def _set(obj: object, name: str, value: object) -> None:
    """Store a normalised value on a frozen dataclass during `__post_init__`."""
    object.__setattr__(obj, name, value)


def _check_bool(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")


def _check_header_name(name: str, value: object) -> None:
    if not isinstance(value, str) or not _HEADER_NAME_RE.fullmatch(value):
        raise ValueError(f"{name} must be an HTTP header name (letters, digits, !#$%&'*+.^_`|~-), got {value!r}")


def _check_rate_limit(name: str, value: object) -> None:
    if value is None:
        return
    if not isinstance(value, str):
        raise TypeError(f"{name} must be limits notation such as '100/minute', or None, got {value!r}")
    try:
        items = limits.parse_many(value)
    except ValueError:
        items = []
    if not items:
        raise ValueError(f"{name} must be limits notation such as '100/minute' or '10/second;1000/hour', got {value!r}")


def _check_optional_int(name: str, value: object, *, minimum: int) -> None:
    if value is not None:
        check_int(name, value, minimum=minimum)


def _check_optional_seconds(name: str, value: object) -> float | None:
    return None if value is None else check_seconds(name, value)


def _check_wait(name: str, value: object) -> float:
    return check_seconds(name, value, allow_zero=True)


def _check_routes(routes: object) -> None:
    if not isinstance(routes, Mapping):
        raise TypeError(f"routes must be a mapping of path prefix to RouteOptions, got {routes!r}")
    for prefix, route in routes.items():
        if not isinstance(prefix, str) or not _ROUTE_PREFIX_RE.fullmatch(prefix):
            raise ValueError(
                f"routes keys must be path prefixes starting with '/' (printable ASCII, no quote or backslash), "
                f"got {prefix!r}"
            )
        if not isinstance(route, RouteOptions):
            raise TypeError(f"routes[{prefix!r}] must be a RouteOptions, got {route!r}")


def _parse_networks(values: object) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    if isinstance(values, str) or not isinstance(values, Sequence):
        raise TypeError(f"trusted_proxies must be a sequence of CIDR strings such as ['10.0.0.0/8'], got {values!r}")
    networks = []
    for value in values:
        try:
            networks.append(ipaddress.ip_network(value, strict=False))
        except (TypeError, ValueError):
            raise ValueError(
                f"trusted_proxies entries must be IP addresses or CIDR networks such as '10.0.0.0/8', got {value!r}"
            ) from None
    return networks


def _check_storage(value: object) -> None:
    check_storage("storage", value)
