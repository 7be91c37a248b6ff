"""Fallback: turn a final failure into a value, for the failures it is configured for."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from resilient._kernel.layer import Layer
from resilient.instrumentation._hub import HUB

__all__ = ["EVENT_USED", "LAYER", "Fallback", "FallbackPolicy", "FallbackRuntime"]

EVENT_USED = "fallback.used"

FailureFilter = type[Exception] | tuple[type[Exception], ...] | Callable[[BaseException], bool]


@dataclass(frozen=True, slots=True)
class Fallback:
    """Return `handler(exc)` (sync or async callable) or the plain value `handler` on failure.

    `on` limits it to some failures: exception types or a predicate (default: every
    `Exception`, rejections included). Cancellation and interpreter exits are never
    turned into a value. To return a callable as the value, wrap it: ``lambda exc: fn``.
    """

    handler: Any
    on: FailureFilter = Exception

    def __post_init__(self) -> None:
        on = self.on
        types = on if isinstance(on, tuple) else (on,)
        if all(isinstance(t, type) for t in types):
            if not all(issubclass(t, Exception) for t in types):  # type: ignore[arg-type]
                raise ValueError(f"fallback.on must name Exception subclasses only, got {on!r}")
        elif not callable(on):
            raise TypeError(f"fallback.on must be exception types or a predicate, got {on!r}")

    @property
    def is_async(self) -> bool:
        """Whether the handler must be awaited (only allowed on async functions)."""
        handler = self.handler
        if inspect.iscoroutinefunction(handler):
            return True
        # An instance whose __call__ is a coroutine function is an async handler too.
        call = type(handler).__dict__.get("__call__") or getattr(type(handler), "__call__", None)  # noqa: B004
        return not inspect.isroutine(handler) and not isinstance(handler, type) and inspect.iscoroutinefunction(call)


Fallback.__module__ = "resilient"


class FallbackRuntime:
    """The compiled fallback of one policy."""

    __slots__ = ("_call", "_handler", "_predicate", "_types", "is_async")

    def __init__(self, config: Fallback) -> None:
        self._handler = config.handler
        self._call = callable(config.handler)
        self.is_async = config.is_async
        on = config.on
        self._types: tuple[type[BaseException], ...] | None = None
        self._predicate: Callable[[BaseException], bool] | None = None
        if isinstance(on, type | tuple):
            self._types = on if isinstance(on, tuple) else (on,)
        else:
            self._predicate = on

    def handles(self, error: Exception) -> bool:
        """Is this failure one the fallback should answer?"""
        if self._types is not None:
            return isinstance(error, self._types)
        return bool(self._predicate(error)) if self._predicate is not None else False

    def value(self, error: Exception, label: str) -> Any:
        """The fallback value (for an async handler: the awaitable to await)."""
        HUB.emit(EVENT_USED, label, logging.INFO, error)
        return self._handler(error) if self._call else self._handler


class FallbackPolicy(Protocol):
    """What the fallback compiles into the policy (the wrapper, outermost, runs it)."""

    fallback: FallbackRuntime | None


def _compile(cp: FallbackPolicy, options: Mapping[str, Any]) -> None:
    config: Fallback | None = options.get("fallback")
    cp.fallback = FallbackRuntime(config) if config else None


#: No step of its own: the wrapper (the telemetry-and-fallback layer) reads `cp.fallback`.
LAYER = Layer("fallback", None, _compile)
