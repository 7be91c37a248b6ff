"""The httpx transports' options: validated once, compiled into the policies a request runs under.

`build_options` turns `TransportOptions` (a policy or the shorthands) into `Options`: the
retrying and the send-once compiled policies, the per-host breaker template and the HTTP
retry rules, so that no request builds configuration.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypedDict, cast

import httpx
import tenacity

from resilient._engine.policy import (
    BulkheadOption,
    Policy,
    RateLimitOption,
    RetryOption,
    TimeoutOption,
    _as_bulkhead,
    _as_rate_limit,
    _as_retry,
    _as_timeout,
)
from resilient._kernel.validate import check_int, check_name, check_seconds
from resilient._strategies.breaker import CircuitBreaker
from resilient._strategies.breaker_registry import _REGISTRY
from resilient._strategies.retry import Retry
from resilient.httpx._rules import (
    IDEMPOTENT_METHODS,
    RETRY_STATUSES,
    TRANSIENT_ERRORS,
    StatusFailure,
    normalise_methods,
    normalise_statuses,
)

if TYPE_CHECKING:
    from resilient._engine.compiled import CompiledPolicy
    from resilient._strategies.ratelimit import RateLimit
    from resilient.httpx._hosts import Host

__all__ = [
    "DEFAULT_MAX_HOSTS",
    "DEFAULT_MAX_RETRY_AFTER",
    "OPTION_NAMES",
    "Options",
    "TransportOptions",
    "build_options",
]

DEFAULT_NAME = "httpx"
DEFAULT_MAX_RETRY_AFTER = 60.0
DEFAULT_MAX_HOSTS = 1024

RateLimitScope = Literal["host", "client"]
BreakerTemplate = CircuitBreaker | bool | None
ResponsePredicate = Callable[[httpx.Response], bool]


class TransportOptions(TypedDict, total=False):
    """Options of the transports and of `client()` / `async_client()`; defaults in docs/httpx.md.

    Either `policy` (its timeout, retry, rate limit and bulkhead apply, its breaker is the
    per-host template) or the shorthands `timeout`, `retry`, `breaker`, `rate_limit`,
    `bulkhead`, which take what `Policy` takes, except `breaker`: True (default), False or
    a `CircuitBreaker` template. `breaker_scope` names the sharing of the per-host breakers
    (across clients, and across processes with a Redis `storage`); without it each transport
    keeps its own.
    """

    policy: Policy | None
    name: str
    timeout: TimeoutOption
    retry: RetryOption
    breaker: BreakerTemplate
    rate_limit: RateLimitOption
    bulkhead: BulkheadOption
    rate_limit_scope: RateLimitScope
    retry_statuses: Iterable[int]
    retry_methods: Iterable[str]
    retry_non_idempotent: bool
    max_retry_after: float
    max_hosts: int
    breaker_scope: str | None


OPTION_NAMES = frozenset(TransportOptions.__annotations__)
_SHORTHANDS = ("timeout", "retry", "breaker", "rate_limit", "bulkhead")


@dataclasses.dataclass(frozen=True, slots=True)
class Options:
    """Everything a transport decided at construction; shared by the sync and async twins."""

    label: str
    retrying: CompiledPolicy
    once: CompiledPolicy
    template: CircuitBreaker | None
    breaker_scope: str | None
    per_host_limit: bool
    retry_statuses: frozenset[int]
    retry_methods: frozenset[str]
    retry_non_idempotent: bool
    retry_response: ResponsePredicate | None
    max_retry_after: float
    max_hosts: int


def build_options(options: TransportOptions) -> Options:
    """Validate the options (errors name the field and what is allowed) and compile the policy."""
    unknown = sorted(set(options) - OPTION_NAMES)
    if unknown:
        raise TypeError(f"unknown option(s) {', '.join(unknown)}; allowed: {', '.join(sorted(OPTION_NAMES))}")
    name = check_name("name", options.get("name", DEFAULT_NAME))
    scope = options.get("rate_limit_scope", "host")
    if scope not in ("host", "client"):
        raise ValueError(f"rate_limit_scope must be 'host' or 'client', got {scope!r}")
    max_hosts = check_int("max_hosts", options.get("max_hosts", DEFAULT_MAX_HOSTS), minimum=1)
    max_retry_after = check_seconds(
        "max_retry_after", options.get("max_retry_after", DEFAULT_MAX_RETRY_AFTER), allow_zero=True
    )
    non_idempotent = options.get("retry_non_idempotent", False)
    if not isinstance(non_idempotent, bool):
        raise TypeError(f"retry_non_idempotent must be True or False, got {non_idempotent!r}")
    label, timeout, retry, template, limit, bulkhead = _layers(name, options)
    breaker_scope = _breaker_scope(options.get("breaker_scope"), template)
    per_host = limit is not None and scope == "host"
    if limit is not None:
        limit = _scoped_rate_limit(limit, per_host=per_host, max_hosts=max_hosts)
    http_retry, response_predicate = _http_retry(retry) if retry is not None else (None, None)
    compiled = Policy(name=label, timeout=timeout, retry=http_retry, rate_limit=limit, bulkhead=bulkhead)._compiled
    return Options(
        label=label,
        retrying=compiled,
        once=compiled.without_retry(),
        template=template,
        breaker_scope=breaker_scope,
        per_host_limit=per_host,
        retry_statuses=normalise_statuses("retry_statuses", options.get("retry_statuses", RETRY_STATUSES)),
        retry_methods=normalise_methods("retry_methods", options.get("retry_methods", IDEMPOTENT_METHODS)),
        retry_non_idempotent=non_idempotent,
        retry_response=response_predicate,
        max_retry_after=max_retry_after,
        max_hosts=max_hosts,
    )


def _layers(
    name: str, options: TransportOptions
) -> tuple[str, Any, Retry | None, CircuitBreaker | None, RateLimit | None, Any]:
    """(label, timeout, retry, breaker template, rate limit, bulkhead) from a policy or the shorthands."""
    policy = options.get("policy")
    if policy is None:
        return (
            name,
            _as_timeout(options.get("timeout")),
            _as_retry(options.get("retry", True)),
            _as_template(options.get("breaker", True), name),
            _as_rate_limit(options.get("rate_limit")),
            _as_bulkhead(options.get("bulkhead")),
        )
    if not isinstance(policy, Policy):
        raise TypeError(f"policy must be a resilient.Policy or None, got {policy!r}")
    given = [key for key in _SHORTHANDS if key in options]
    if given:
        raise ValueError(f"pass either policy= or the shorthands, not both (got policy= and {', '.join(given)}=)")
    if policy.fallback is not None:
        raise ValueError(
            "policy.fallback is not supported by the httpx transport (a transport returns a response or "
            "raises); catch the error around the client call instead"
        )
    label = policy.name or name
    return label, policy.timeout, policy.retry, _as_template(policy.breaker, label), policy.rate_limit, policy.bulkhead


def _as_template(value: object, name: str) -> CircuitBreaker | None:
    """The breaker every host's own breaker is copied from (named ``{template}:{origin}``)."""
    if value is None or value is False:
        return None
    if value is True:
        return CircuitBreaker(name=name)
    if not isinstance(value, CircuitBreaker):
        raise TypeError(f"breaker must be True, False, None or a CircuitBreaker template, got {value!r}")
    if value.pybreaker is not None:
        raise ValueError(
            "breaker must not wrap a pybreaker.CircuitBreaker: each host gets its own breaker copied from "
            f"the template, and one pybreaker object cannot be shared (got {value!r})"
        )
    return value


def _breaker_scope(scope: object, template: CircuitBreaker | None) -> str | None:
    """The named scope the per-host breakers are shared in, or None: they are the transport's own."""
    if scope is None:
        if template is not None and template.storage not in {None, "memory://"}:
            raise ValueError(
                "breaker.storage shares breaker state across processes, so the sharing needs a name: pass "
                f"breaker_scope='...' (breakers are then named '<scope>:<origin>'), got storage for {template.name!r} "
                "without a breaker_scope"
            )
        return None
    name = check_name("breaker_scope", scope)
    if template is None:
        raise ValueError(f"breaker_scope names how per-host breakers are shared, but breaker is off; got {name!r}")
    _check_scope_is_consistent(name, template)
    return name


def _check_scope_is_consistent(scope: str, template: CircuitBreaker) -> None:
    """Two transports sharing one scope with different breaker settings would fight over each host."""
    prefix = f"{scope}:"
    for breaker_name, runtime in list(_REGISTRY.items()):
        if breaker_name.startswith(prefix) and dataclasses.replace(runtime.config, name=template.name) != template:
            raise ValueError(
                f"breaker_scope {scope!r} is already used by another transport with different breaker settings "
                f"({runtime.config!r}); use the same template or another scope"
            )


def _scoped_rate_limit(limit: RateLimit, *, per_host: bool, max_hosts: int) -> RateLimit:
    if not per_host:
        return dataclasses.replace(limit, key=None)
    return dataclasses.replace(limit, key=_origin_of_exchange, max_keys=max(max_hosts, 1))


class _HasHost(Protocol):
    """What the rate-limit key needs of the engine's `Exchange` (a Protocol: `_engine` imports this module)."""

    @property
    def host(self) -> Host: ...


def _origin_of_exchange(_transport: object, exchange: _HasHost) -> str:
    """The rate-limit key of an attempt, given the transport's arguments to the policy's call."""
    return exchange.host.origin


def _http_retry(retry: Retry) -> tuple[Retry, ResponsePredicate | None]:
    """The retry the drivers run: the user's settings, HTTP's idea of what is transient.

    `on` (types or a predicate) keeps deciding which transport errors are retried; a
    `StatusFailure` is always retried (the transport raises it only for retryable
    responses). `on_result` becomes a predicate on responses, evaluated in the attempt
    so the happy path allocates no retry state. `Retry-After` feeds the backoff.
    """
    user_on = retry.on
    if isinstance(user_on, tenacity.retry_base):
        raise TypeError(
            "retry.on for the httpx transport must be exception types or a predicate (exc) -> bool, "
            f"not a tenacity strategy, got {user_on!r}"
        )
    return (
        dataclasses.replace(
            retry, on=_retry_filter(user_on), on_result=None, retry_after=_retry_after_hint(retry.retry_after)
        ),
        retry.on_result,
    )


def _retry_filter(user_on: Any) -> Callable[[BaseException], bool]:
    if user_on is None:
        errors: tuple[type[BaseException], ...] = TRANSIENT_ERRORS
    elif isinstance(user_on, type | tuple):
        errors = user_on if isinstance(user_on, tuple) else (user_on,)
    else:
        predicate: Callable[[BaseException], bool] = user_on
        return lambda error: isinstance(error, StatusFailure) or bool(predicate(error))
    retried = cast("tuple[type[BaseException], ...]", (StatusFailure, *errors))
    return lambda error: isinstance(error, retried)


def _retry_after_hint(
    user_hint: Callable[[BaseException | None, Any], float | None] | None,
) -> Callable[[BaseException | None, Any], float | None]:
    def hint(error: BaseException | None, result: Any) -> float | None:
        ours = error.retry_after if isinstance(error, StatusFailure) else None
        theirs = user_hint(error, result) if user_hint is not None else None
        if ours is None or theirs is None:
            return ours if theirs is None else theirs
        return max(ours, theirs)

    return hint
