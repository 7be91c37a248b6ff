"""`Policy` and `@resilient`: normalise shorthands, validate, compile once, decorate.

Everything that can be decided before the first call is decided here: the options are
checked (errors name the field, the value and what is allowed), the strategies are
compiled into a `CompiledPolicy`, and sync or async dispatch is chosen per function.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import FrozenInstanceError
from datetime import timedelta
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, cast, overload

import pybreaker

from resilient._engine.compiled import CompiledPolicy
from resilient._engine.wrapper import wrap_async, wrap_sync
from resilient._kernel.validate import check_name
from resilient._strategies.breaker import CircuitBreaker
from resilient._strategies.bulkhead import Bulkhead
from resilient._strategies.fallback import Fallback
from resilient._strategies.ratelimit import RateLimit
from resilient._strategies.retry import Retry
from resilient._strategies.timeout import Timeout

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Coroutine

__all__ = ["Policy", "resilient"]

P = ParamSpec("P")
T = TypeVar("T")

TimeoutOption = Timeout | float | timedelta | None
RetryOption = Retry | int | bool | None
BreakerOption = CircuitBreaker | str | pybreaker.CircuitBreaker | None
RateLimitOption = RateLimit | str | None
BulkheadOption = Bulkhead | int | None


def _as_timeout(value: TimeoutOption) -> Timeout | None:
    if value is None or isinstance(value, Timeout):
        return value
    if not isinstance(value, bool):  # a bool is an int to Python, never a duration
        return Timeout(total=value)
    raise TypeError(f"timeout must be seconds (float), a timedelta, a Timeout or None, got {value!r}")


def _as_retry(value: RetryOption) -> Retry | None:
    if value is None or value is False:
        return None
    if value is True:
        return Retry()
    if isinstance(value, Retry):
        return value
    if isinstance(value, int):
        return Retry(attempts=value)
    raise TypeError(f"retry must be a number of attempts (int), a Retry or None, got {value!r}")


def _as_breaker(value: BreakerOption) -> CircuitBreaker | None:
    if value is None or isinstance(value, CircuitBreaker):
        return value
    if isinstance(value, str):
        return _named_breaker(value)
    if isinstance(value, pybreaker.CircuitBreaker):
        return CircuitBreaker.from_pybreaker(value)
    raise TypeError(
        f"breaker must be a breaker name (str), a CircuitBreaker, a pybreaker.CircuitBreaker or None, got {value!r}"
    )


def _named_breaker(name: str) -> CircuitBreaker:
    """A bare name refers to the breaker of that name (a placeholder until it is defined)."""
    from resilient._strategies.breaker_registry import breaker_reference  # noqa: PLC0415 - registry lookup, not an import cycle

    return breaker_reference(name)


def _as_rate_limit(value: RateLimitOption) -> RateLimit | None:
    if value is None or isinstance(value, RateLimit):
        return value
    if isinstance(value, str):
        return RateLimit(value)
    raise TypeError(f"rate_limit must be limits notation like '100/second', a RateLimit or None, got {value!r}")


def _as_bulkhead(value: BulkheadOption) -> Bulkhead | None:
    if value is None or isinstance(value, Bulkhead):
        return value
    if not isinstance(value, bool):  # a bool is an int to Python, never a capacity
        return Bulkhead(max_concurrent=value)
    raise TypeError(f"bulkhead must be a max number of concurrent calls (int), a Bulkhead or None, got {value!r}")


def _as_fallback(value: object) -> Fallback | None:
    if value is None or isinstance(value, Fallback):
        return value
    return Fallback(value)


class Policy:
    """A reusable set of safeguards; decorate functions with it or run callables through it.

    Options take the full config objects or shorthands: ``timeout=2.0`` (total seconds),
    ``retry=3`` (attempts), ``breaker="payments"`` (a shared breaker by name),
    ``rate_limit="100/second"``, ``bulkhead=10`` (max concurrent), ``fallback=value`` or a
    callable receiving the exception. Everything is validated and compiled here, once.
    """

    __slots__ = ("_compiled", "bulkhead", "fallback", "name", "rate_limit", "retry", "timeout")

    name: str | None
    timeout: Timeout | None
    retry: Retry | None
    rate_limit: RateLimit | None
    bulkhead: Bulkhead | None
    fallback: Fallback | None
    _compiled: CompiledPolicy

    def __init__(
        self,
        *,
        name: str | None = None,
        timeout: TimeoutOption = None,
        retry: RetryOption = None,
        breaker: BreakerOption = None,
        rate_limit: RateLimitOption = None,
        bulkhead: BulkheadOption = None,
        fallback: object = None,
    ) -> None:
        if name is not None:
            check_name("name", name)
        # A policy is compiled once and immutable: the layers are set here and never again.
        init = object.__setattr__
        init(self, "name", name)
        init(self, "timeout", _as_timeout(timeout))
        init(self, "retry", _as_retry(retry))
        init(self, "rate_limit", _as_rate_limit(rate_limit))
        init(self, "bulkhead", _as_bulkhead(bulkhead))
        init(self, "fallback", _as_fallback(fallback))
        init(
            self,
            "_compiled",
            CompiledPolicy(
                timeout=self.timeout,
                retry=self.retry,
                breaker=_as_breaker(breaker),
                rate_limit=self.rate_limit,
                bulkhead=self.bulkhead,
                fallback=self.fallback,
                name=name,
            ),
        )

    @property
    def breaker(self) -> CircuitBreaker | None:
        """The breaker in effect: for a bare name, the definition that configured it since."""
        runtime = self._compiled.breaker
        return None if runtime is None else runtime.config

    def __setattr__(self, name: str, value: object) -> None:
        raise _immutable(name)

    def __delattr__(self, name: str) -> None:
        raise _immutable(name)

    def __repr__(self) -> str:
        return "Policy(" + ", ".join(f"{name}={value!r}" for name, value in self.describe().items()) + ")"

    def describe(self) -> dict[str, Any]:
        """The configured layers, outer to inner (absent layers left out)."""
        layers = {
            "name": self.name,
            "fallback": self.fallback,
            "rate_limit": self.rate_limit,
            "bulkhead": self.bulkhead,
            "timeout": self.timeout,
            "retry": self.retry,
            "breaker": self.breaker,
        }
        return {key: value for key, value in layers.items() if value is not None or key == "name"}

    @overload
    def __call__(self, fn: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, Coroutine[Any, Any, T]]: ...
    @overload
    def __call__(self, fn: Callable[P, T]) -> Callable[P, T]: ...
    def __call__(self, fn: Callable[P, Any]) -> Callable[P, Any]:
        """Decorate a function, coroutine function, method, staticmethod or classmethod."""
        return cast("Callable[P, Any]", _decorate(self, fn))

    def call(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run a sync callable once under this policy."""
        if self.fallback is not None and self.fallback.is_async:
            raise TypeError(f"fallback handler {self.fallback.handler!r} is async: use `await policy.call_async(...)`")
        return wrap_sync(self._compiled, self.name or _label(fn), fn)(*args, **kwargs)  # type: ignore[no-any-return]

    async def call_async(self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Await an async callable once under this policy."""
        return await wrap_async(self._compiled, self.name or _label(fn), fn)(*args, **kwargs)  # type: ignore[no-any-return]

    @classmethod
    def named(cls, name: str, /, **options: Any) -> Policy:
        """The policy `name` of the configuration file (see `resilient.config`); `options` are overridden by it."""
        return _named_policy(name, options)


Policy.__module__ = "resilient"


def _immutable(name: str) -> FrozenInstanceError:
    """The error for changing a policy after construction (it was compiled with its layers)."""
    return FrozenInstanceError(
        f"Policy is immutable: {name!r} cannot be assigned or deleted (the policy was compiled when it "
        "was built, so a change would show in describe() and do nothing); build a new Policy instead, "
        "e.g. Policy(**{**policy.describe(), " + repr(name) + ": new_value})"
    )


def _label(fn: Callable[..., Any]) -> str:
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or type(fn).__name__


def _decorate(policy: Policy, fn: Any) -> Any:
    if isinstance(fn, staticmethod):
        return staticmethod(_decorate(policy, fn.__func__))
    if isinstance(fn, classmethod):
        return classmethod(_decorate(policy, fn.__func__))
    if not callable(fn):
        raise TypeError(f"@resilient decorates functions and methods, got {fn!r}")
    if inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn):
        raise TypeError(
            f"@resilient cannot wrap the generator function {_label(fn)!r}: it would protect only the "
            "creation of the generator; protect the function that consumes it, or return a list"
        )
    compiled = policy._compiled
    label = policy.name or _label(fn)
    if inspect.iscoroutinefunction(fn):
        wrapper = wrap_async(compiled, label, fn)
    elif policy.fallback is not None and policy.fallback.is_async:
        raise TypeError(f"fallback handler {policy.fallback.handler!r} is async but {label!r} is a sync function")
    else:
        wrapper = wrap_sync(compiled, label, fn)
    wrapper.__resilient_policy__ = policy  # type: ignore[attr-defined]
    return functools.wraps(fn)(wrapper)


@overload
def resilient(fn: Callable[P, Coroutine[Any, Any, T]], /) -> Callable[P, Coroutine[Any, Any, T]]: ...
@overload
def resilient(fn: Callable[P, T], /) -> Callable[P, T]: ...
@overload
def resilient(
    name: str,
    /,
    *,
    timeout: TimeoutOption = None,
    retry: RetryOption = None,
    breaker: BreakerOption = None,
    rate_limit: RateLimitOption = None,
    bulkhead: BulkheadOption = None,
    fallback: object = None,
) -> Policy: ...
@overload
def resilient(
    *,
    name: str | None = None,
    timeout: TimeoutOption = None,
    retry: RetryOption = None,
    breaker: BreakerOption = None,
    rate_limit: RateLimitOption = None,
    bulkhead: BulkheadOption = None,
    fallback: object = None,
) -> Policy: ...
def resilient(
    fn: Callable[..., Any] | str | None = None,
    /,
    *,
    name: str | None = None,
    timeout: TimeoutOption = None,
    retry: RetryOption = None,
    breaker: BreakerOption = None,
    rate_limit: RateLimitOption = None,
    bulkhead: BulkheadOption = None,
    fallback: object = None,
) -> Any:
    """Protect a function: ``@resilient(timeout=2.0, retry=3, breaker="payments")``.

    Bare ``@resilient`` adds telemetry only (a span, metrics, failure logs): no safeguard
    is switched on implicitly. Each decorated function gets its own policy (its own rate
    limiter, bulkhead and retry budget); breakers are shared by name.
    ``@resilient("payments")`` takes the policy named in the configuration file instead.
    """
    if isinstance(fn, str):
        return _resilient_named(fn, name, timeout, retry, breaker, rate_limit, bulkhead, fallback)
    policy = Policy(
        name=name,
        timeout=timeout,
        retry=retry,
        breaker=breaker,
        rate_limit=rate_limit,
        bulkhead=bulkhead,
        fallback=fallback,
    )
    return policy if fn is None else policy(fn)


#: Where a policy name is looked up: the config wing's lookup, handed in by the package's surface
#: (`resilient/__init__`), so the engine never imports the wing that sits above it.
_POLICY_SOURCE: list[Callable[..., Policy]] = []


def set_policy_source(source: Callable[..., Policy]) -> None:
    """Name the function that resolves ``resilient("name")``: ``source(name, **code_options)``."""
    _POLICY_SOURCE[:] = [source]


def _named_policy(name: str, options: dict[str, Any]) -> Policy:
    """Look a policy up in the configuration, through the source the package's surface set."""
    if not _POLICY_SOURCE:
        raise LookupError(f"policy {name!r}: no configuration source is set (import resilient first)")
    return _POLICY_SOURCE[0](name, **options)


def _resilient_named(policy_name: str, name: str | None, *layers: object) -> Policy:
    """``resilient("payments", ...)``: the named policy, the options given being the code's defaults."""
    if name is not None:
        raise TypeError(f"resilient({policy_name!r}) names the policy already; drop name={name!r}")
    keys = ("timeout", "retry", "breaker", "rate_limit", "bulkhead", "fallback")
    return _named_policy(
        policy_name, {key: value for key, value in zip(keys, layers, strict=True) if value is not None}
    )
