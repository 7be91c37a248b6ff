"""Per-host state of an httpx transport: each origin's breaker and rate-limit key, LRU-bounded.

A host's breaker belongs to the transport (in memory, outside the process registry, so one
client's failures never fail another client), unless the user named a `breaker_scope`: then
it is the registry's breaker ``{scope}:{origin}``, shared by every transport naming that scope
in the process, and through a Redis `storage` by every process.
"""

from __future__ import annotations

import dataclasses
import threading
from collections import OrderedDict
from typing import Any

import httpx

from resilient._strategies.breaker import BreakerRuntime, CircuitBreaker
from resilient._strategies.breaker_registry import breaker_for, forget_breaker
from resilient.httpx._rules import DEFAULT_PORTS

__all__ = ["NO_HOST", "Host", "Hosts"]

#: Transports holding each scoped breaker: a shared breaker leaves the registry only when the
#: last transport using it evicted it (or closed), so no transport is left on a stale copy.
_SCOPED_USERS: dict[str, int] = {}
_SCOPED_LOCK = threading.Lock()


class Host:
    """One origin (scheme, host, port): its rate-limit key and its own breaker."""

    __slots__ = ("breaker", "origin")

    def __init__(self, origin: str, breaker: BreakerRuntime | None) -> None:
        self.origin = origin
        self.breaker = breaker


#: The host of a transport that keeps no per-host state (no breaker, one rate limit for all).
NO_HOST = Host("", None)


class Hosts:
    """Hosts seen recently, least recently used evicted beyond `max_hosts` (with their breakers)."""

    def __init__(self, template: CircuitBreaker | None, max_hosts: int, scope: str | None = None) -> None:
        self._template = template
        self._scope = scope
        self._max = max_hosts
        self._hosts: OrderedDict[tuple[str, str, int | None], Host] = OrderedDict()
        self._lock = threading.Lock()
        #: (key, host) of the most recently used host, always the last in `_hosts`: a client
        #: mostly calls one host, and a request's key strings are new objects, so finding the
        #: host again in the dict would hash them (twice, with `move_to_end`).
        self._newest: tuple[tuple[Any, ...], Host] = ((), NO_HOST)  # () equals no key

    def __len__(self) -> int:
        return len(self._hosts)

    def get(self, url: httpx.URL) -> Host:
        # httpx's parsed URL, read directly: its `scheme`/`host`/`port` properties are three
        # Python calls per request. Its host is the IDNA-encoded one, so the key is as unique.
        # It is private: should an httpx release drop it, the public properties serve.
        parsed: Any
        try:
            parsed = url._uri_reference
        except AttributeError:
            parsed = url
        key = (parsed.scheme, parsed.host, parsed.port)
        newest = self._newest
        if newest[0] == key:
            return newest[1]
        host = self._hosts.get(key)
        if host is None:
            return self._add(key, _origin(url.scheme, url.host, url.port))
        try:
            self._hosts.move_to_end(key)
        except KeyError:  # evicted by another thread in between: this request keeps its object
            return host
        self._newest = (key, host)
        return host

    def _add(self, key: tuple[str, str, int | None], origin: str) -> Host:
        with self._lock:
            host = self._hosts.get(key)
            if host is not None:
                return host
            host = Host(origin, self._breaker(origin))
            self._hosts[key] = host
            self._newest = (key, host)
            evicted = self._hosts.popitem(last=False)[1] if len(self._hosts) > self._max else None
        if evicted is not None:
            self._release(evicted)
        return host

    def _breaker(self, origin: str) -> BreakerRuntime | None:
        template = self._template
        if template is None:
            return None
        if self._scope is None:  # the transport's own, always in memory
            return BreakerRuntime(dataclasses.replace(template, name=f"{template.name}:{origin}", storage="memory://"))
        runtime = breaker_for(dataclasses.replace(template, name=f"{self._scope}:{origin}"))
        with _SCOPED_LOCK:
            _SCOPED_USERS[runtime.name] = _SCOPED_USERS.get(runtime.name, 0) + 1
        return runtime

    def _release(self, host: Host) -> None:
        """Give a dropped host's scoped breaker back: the registry forgets it with its last user."""
        runtime = host.breaker
        if runtime is None or self._scope is None:
            return
        with _SCOPED_LOCK:
            users = _SCOPED_USERS.get(runtime.name, 1) - 1
            if users > 0:
                _SCOPED_USERS[runtime.name] = users
                return
            _SCOPED_USERS.pop(runtime.name, None)
        forget_breaker(runtime)

    def clear(self) -> None:
        """Drop every host (the transport closed), giving scoped breakers back."""
        with self._lock:
            dropped = list(self._hosts.values())
            self._hosts.clear()
            self._newest = ((), NO_HOST)
        for host in dropped:
            self._release(host)

    def breakers(self) -> dict[str, BreakerRuntime]:
        return {host.origin: host.breaker for host in list(self._hosts.values()) if host.breaker is not None}


def _origin(scheme: str, host: str, port: int | None) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"{scheme}://{shown}:{port or DEFAULT_PORTS.get(scheme, 0)}"
