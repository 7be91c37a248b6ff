"""The breaker registry: one `BreakerRuntime` per name, shared by every policy that names it.

Split from `breaker` (what one breaker does): this module decides which runtime a name
refers to and which class it is (`new_breaker`: in process, or kept in Redis by
`_storage.shared_breaker`), and lists them for the state gauge and for tests.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

from resilient._storage.shared_breaker import SharedBreakerRuntime
from resilient._strategies.breaker import BreakerRuntime, CircuitBreaker, is_shared
from resilient.instrumentation._hub import HUB

__all__ = ["breaker_for", "breaker_states", "forget_breaker", "forget_breakers", "new_breaker", "reset_breakers"]

_REGISTRY: dict[str, BreakerRuntime] = {}
_REGISTRY_LOCK = threading.Lock()


def new_breaker(config: CircuitBreaker) -> BreakerRuntime:
    """A new runtime for `config`, unregistered: shared through Redis when its storage says so."""
    return SharedBreakerRuntime(config) if is_shared(config) else BreakerRuntime(config)


def breaker_for(config: CircuitBreaker | str) -> BreakerRuntime:
    """The one runtime for this name: joined by a bare name, created on first definition.

    Two different definitions under one name are an error (they would silently fight).
    """
    name = config if isinstance(config, str) else config.name
    with _REGISTRY_LOCK:
        existing = _REGISTRY.get(name)
        if existing is None:
            runtime = new_breaker(config if isinstance(config, CircuitBreaker) else CircuitBreaker(name=name))
            _REGISTRY[name] = runtime
            return runtime
    # Dataclass equality covers every setting, the wrapped pybreaker object by identity.
    if isinstance(config, CircuitBreaker) and existing.config != config:
        raise ValueError(
            f"breaker.name {name!r} is already defined with different settings "
            f"({existing.config!r}); reuse that CircuitBreaker or refer to it by name"
        )
    return existing


def forget_breaker(runtime: BreakerRuntime) -> None:
    """Drop one breaker from the registry if it is still the one registered under its name.

    For owners of many short-lived breakers (the httpx transports' per-host breakers) so the
    registry stays bounded.
    """
    with _REGISTRY_LOCK:
        if _REGISTRY.get(runtime.name) is runtime:
            del _REGISTRY[runtime.name]


def breaker_states() -> Iterator[tuple[str, str]]:
    """(name, state) of every named breaker, for the state gauge."""
    for name, runtime in list(_REGISTRY.items()):
        yield name, runtime.state


def reset_breakers() -> None:
    """Close every named breaker and clear its counts (tests call this between cases)."""
    for runtime in list(_REGISTRY.values()):
        runtime.reset()


def forget_breakers() -> None:
    """Drop every named breaker, so a name can be defined anew (test isolation)."""
    with _REGISTRY_LOCK:
        _REGISTRY.clear()


HUB.breaker_states = breaker_states
