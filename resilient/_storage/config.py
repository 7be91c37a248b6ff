"""Which storage shared state uses: storage URIs, their validation, and the global default.

``memory://`` keeps state in the process (the default). A Redis URI (``redis://``,
``rediss://``, ``redis+sentinel://``, ``redis+cluster://``) shares rate limits and
breakers across processes and hosts. Three query parameters belong to us and are removed
before redis-py sees the URI: ``key_prefix`` (namespace of every key, default
``resilient``), ``timeout`` (seconds allowed for every Redis command, default 0.1) and
``connect_timeout`` (seconds allowed to open a connection, default 0.5: a burst of
concurrent callers opens many connections at once, and a busy host needs more than a
command's budget for that; calls wait this long only until the store degrades).

Validation happens when a config is built; a bad URI is a `ValueError` naming the field,
with any password masked. The clients and health of each Redis are in `_storage`.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

if TYPE_CHECKING:
    from types import ModuleType

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_KEY_PREFIX",
    "DEFAULT_TIMEOUT",
    "ENV_STORAGE",
    "MEMORY",
    "StorageSpec",
    "check_storage",
    "configure_storage",
    "default_storage",
    "parse_storage",
    "redact_uri",
    "redis_module",
    "resolve_storage",
]


MEMORY = "memory://"
REDIS_SCHEMES = ("redis", "rediss", "redis+sentinel", "redis+cluster")
DEFAULT_KEY_PREFIX = "resilient"
DEFAULT_TIMEOUT = 0.1
DEFAULT_CONNECT_TIMEOUT = 0.5
ENV_STORAGE = "RESILIENT_STORAGE"
_ALLOWED = "'memory://' or a Redis URI (redis://, rediss://, redis+sentinel://, redis+cluster://)"
_OUR_PARAMETERS = frozenset({"key_prefix", "timeout", "connect_timeout"})
_PREFIX_PATTERN = re.compile(r"[A-Za-z0-9_.:\-]+")
_PASSWORD = re.compile(r"(//[^/@]*?:)[^/@]*@")


@dataclass(frozen=True, slots=True)
class StorageSpec:
    """A validated Redis storage: the URI redis-py sees, our key prefix and call timeout."""

    uri: str
    scheme: str
    key_prefix: str = DEFAULT_KEY_PREFIX
    timeout: float = DEFAULT_TIMEOUT
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT

    @property
    def shown(self) -> str:
        """The URI with any password masked, for logs and errors."""
        return redact_uri(self.uri)


def redact_uri(uri: str) -> str:
    """`uri` with the password part of its credentials replaced by ``***``."""
    return _PASSWORD.sub(r"\1***@", uri)


def check_storage(field_name: str, value: object) -> str | None:
    """Validate a config's ``storage`` at construction; None means "the global default"."""
    if value is None:
        return None
    parse_storage(field_name, value)
    return str(value)


def parse_storage(field_name: str, value: object) -> StorageSpec | None:
    """None for in-process memory, else the Redis storage the URI names (validated)."""
    if not isinstance(value, str):
        raise TypeError(f"{field_name} must be a URI string such as {MEMORY!r}, got {value!r}")
    if value == MEMORY:
        return None
    parts = urlsplit(value)
    if parts.scheme not in REDIS_SCHEMES or not (parts.netloc or parts.path):
        raise ValueError(f"{field_name} must be {_ALLOWED}, got {redact_uri(value)!r}")
    ours, theirs = _split_query(parts.query)
    key_prefix = ours.get("key_prefix", DEFAULT_KEY_PREFIX)
    if not _PREFIX_PATTERN.fullmatch(key_prefix):
        raise ValueError(
            f"{field_name} key_prefix must be letters, digits and '_.:-', got {key_prefix!r} in {redact_uri(value)!r}"
        )
    timeout = _parse_timeout(field_name, "timeout", ours.get("timeout"), value, DEFAULT_TIMEOUT)
    connect = _parse_timeout(field_name, "connect_timeout", ours.get("connect_timeout"), value, DEFAULT_CONNECT_TIMEOUT)
    redis_module(field_name, value)
    uri = urlunsplit(parts._replace(query=urlencode(theirs)))
    return StorageSpec(uri=uri, scheme=parts.scheme, key_prefix=key_prefix, timeout=timeout, connect_timeout=connect)


def _split_query(query: str) -> tuple[dict[str, str], list[tuple[str, str]]]:
    pairs = parse_qsl(query, keep_blank_values=True)
    ours = {key: item for key, item in pairs if key in _OUR_PARAMETERS}
    return ours, [(key, item) for key, item in pairs if key not in ours]


def _parse_timeout(field_name: str, name: str, raw: str | None, value: str, default: float) -> float:
    if raw is None:
        return default
    try:
        timeout = float(raw)
    except ValueError:
        timeout = math.nan
    if not math.isfinite(timeout) or timeout <= 0:
        raise ValueError(
            f"{field_name} {name} must be a finite number of seconds > 0, got {raw!r} in {redact_uri(value)!r}"
        )
    return timeout


def redis_module(field_name: str, value: str) -> ModuleType:
    """redis-py, imported on first need; a clear error when the extra is not installed."""
    try:
        import redis  # noqa: PLC0415 - optional dependency, imported only for Redis storages
    except ImportError:
        raise ImportError(
            f"{field_name}={redact_uri(value)!r} needs the redis package: pip install 'resilient[redis]'"
        ) from None
    return redis


# ---------------------------------------------------------------- the global default

_default: list[str | None] = [None]  # None: not configured, read $RESILIENT_STORAGE


def configure_storage(uri: str | None = None) -> None:
    """Set the storage of every rate limit and breaker that names none (None: back to env/memory).

    Takes effect for policies built afterwards, so call it before defining them, or set
    ``RESILIENT_STORAGE`` in the environment. The URI is validated here.
    """
    if uri is not None:
        parse_storage("storage", uri)
    _default[0] = uri


configure_storage.__module__ = "resilient"


def default_storage() -> str:
    """The configured default, else ``$RESILIENT_STORAGE``, else ``memory://``."""
    configured = _default[0]
    if configured is not None:
        return configured
    return os.environ.get(ENV_STORAGE) or MEMORY


def resolve_storage(field_name: str, value: str | None) -> StorageSpec | None:
    """The storage a runtime uses: its own, else the default; None for memory."""
    if value is not None:
        return parse_storage(field_name, value)
    return parse_storage(ENV_STORAGE if _default[0] is None else "storage", default_storage())
