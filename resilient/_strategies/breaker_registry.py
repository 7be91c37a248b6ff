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

__all__ = [
    "breaker_for",
    "breaker_reference",
    "breaker_states",
    "forget_breaker",
    "forget_breakers",
    "new_breaker",
    "reset_breakers",
]

_REGISTRY: dict[str, BreakerRuntime] = {}
#: Names referred to only by a bare name so far: their runtime runs on the defaults until a
#: full definition (a `CircuitBreaker`) configures it.
_PLACEHOLDERS: set[str] = set()
_REGISTRY_LOCK = threading.Lock()


def new_breaker(config: CircuitBreaker) -> BreakerRuntime:
    """A new runtime for `config`, unregistered: shared through Redis when its storage says so."""
    return SharedBreakerRuntime(config) if is_shared(config) else BreakerRuntime(config)


def breaker_reference(name: str) -> CircuitBreaker:
    """What a bare name refers to: the breaker defined under it, else a placeholder with defaults.

    A bare name is a reference, never a definition: whatever order a bare name and a
    `CircuitBreaker(name=...)` come in, both end up on one runtime with the definition's settings.
    """
    with _REGISTRY_LOCK:
        existing = _REGISTRY.get(name)
        if existing is None:
            existing = new_breaker(CircuitBreaker(name=name))
            _REGISTRY[name] = existing
            _PLACEHOLDERS.add(name)
        return existing.config


def breaker_for(config: CircuitBreaker | str) -> BreakerRuntime:
    """The one runtime for this name: joined by a reference, created or configured by a definition.

    The rule: a bare name (or the config `breaker_reference` returned for it) refers to the
    breaker of that name; a `CircuitBreaker` defines it. The first definition configures a
    placeholder made by earlier references in place (its state carried over); a later
    definition must equal it. Two different definitions under one name are an error (they
    would silently fight), naming both.
    """
    if isinstance(config, str):
        config = breaker_reference(config)
    name = config.name
    with _REGISTRY_LOCK:
        existing = _REGISTRY.get(name)
        if existing is None:
            runtime = new_breaker(config)
            _REGISTRY[name] = runtime
            return runtime
        if config is existing.config:  # a reference (or the very object that defined it)
            return existing
        if name in _PLACEHOLDERS:
            _PLACEHOLDERS.discard(name)
            existing.adopt(new_breaker(config))
            return existing
    # Dataclass equality covers every setting, the wrapped pybreaker object by identity.
    if existing.config != config:
        raise ValueError(
            f"breaker.name {name!r} is already defined with different settings: {existing.config!r} "
            f"conflicts with {config!r}; define it once and reuse that CircuitBreaker, or refer to it "
            f'by name (a bare breaker="{name}" is a reference, never a definition)'
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
            _PLACEHOLDERS.discard(runtime.name)


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
        _PLACEHOLDERS.clear()


HUB.breaker_states = breaker_states
