"""Policy construction: shorthands, validation at construction, frozen configs, describe, repr."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pybreaker
import pytest

from resilient import (
    Bulkhead,
    CircuitBreaker,
    Fallback,
    Policy,
    RateLimit,
    Retry,
    RetryBudget,
    Timeout,
    resilient,
    testing,
)


def build(config_type: Callable[..., object], *args: Any, **kwargs: Any) -> Callable[[], object]:
    """Defer constructing `config_type(*args, **kwargs)` (arguments deliberately untyped: they are bad)."""
    return lambda: config_type(*args, **kwargs)


# id, the construction, the error type, and the texts the message must contain: the field,
# the rule and the bad value.
BAD_OPTIONS = [
    pytest.param(
        build(Timeout), ValueError, ("timeout.total", "timeout.attempt", "> 0", "got neither"), id="timeout-neither"
    ),
    pytest.param(build(Timeout, total=0), ValueError, ("timeout.total", "> 0", "got 0"), id="timeout-total-zero"),
    pytest.param(
        build(Timeout, total=timedelta(seconds=-1)), ValueError, ("timeout.total", "> 0"), id="timeout-total-negative"
    ),
    pytest.param(
        build(Timeout, attempt=float("nan")), ValueError, ("timeout.attempt", "finite", "nan"), id="timeout-attempt-nan"
    ),
    pytest.param(build(Timeout, total="2s"), TypeError, ("timeout.total", "seconds", "'2s'"), id="timeout-total-str"),
    pytest.param(
        build(Timeout, total=1, sync_mode="process"),
        ValueError,
        ("timeout.sync_mode", "'thread'", "'process'"),
        id="timeout-mode",
    ),
    pytest.param(
        build(Timeout, total=1, max_threads=0),
        ValueError,
        ("timeout.max_threads", ">= 1", "got 0"),
        id="timeout-max-threads",
    ),
    pytest.param(build(Retry, attempts=0), ValueError, ("retry.attempts", ">= 1", "got 0"), id="retry-attempts-zero"),
    pytest.param(build(Retry, attempts=True), TypeError, ("retry.attempts", "int", "True"), id="retry-attempts-bool"),
    pytest.param(build(Retry, attempts=2.5), TypeError, ("retry.attempts", "int", "2.5"), id="retry-attempts-float"),
    pytest.param(
        build(Retry, initial_delay=-1), ValueError, ("retry.initial_delay", ">= 0", "-1"), id="retry-initial-negative"
    ),
    pytest.param(
        build(Retry, initial_delay=5, max_delay=1),
        ValueError,
        ("retry.max_delay", ">= retry.initial_delay", "1"),
        id="retry-max-below-initial",
    ),
    pytest.param(build(Retry, exp_base=0.5), ValueError, ("retry.exp_base", ">= 1", "0.5"), id="retry-exp-base"),
    pytest.param(
        build(Retry, on=KeyboardInterrupt),
        ValueError,
        ("retry.on", "cancellation", "KeyboardInterrupt"),
        id="retry-on-interrupt",
    ),
    pytest.param(build(Retry, on=42), TypeError, ("retry.on", "predicate", "42"), id="retry-on-number"),
    pytest.param(
        build(Retry, on_result="empty"), TypeError, ("retry.on_result", "callable", "'empty'"), id="retry-on-result"
    ),
    pytest.param(build(Retry, budget=0.2), TypeError, ("retry.budget", "RetryBudget", "0.2"), id="retry-budget-type"),
    pytest.param(build(RetryBudget, ratio=1.5), ValueError, ("retry.budget.ratio", "[0, 1]", "1.5"), id="budget-ratio"),
    pytest.param(
        build(RetryBudget, window=0.5), ValueError, ("retry.budget.window", ">= 1", "0.5"), id="budget-window"
    ),
    pytest.param(
        build(RetryBudget, min_per_second=-1),
        ValueError,
        ("retry.budget.min_per_second", ">= 0", "-1"),
        id="budget-floor",
    ),
    pytest.param(build(CircuitBreaker, name=""), ValueError, ("breaker.name", "non-empty", "''"), id="breaker-name"),
    pytest.param(
        build(CircuitBreaker, name="b", failure_threshold=0),
        ValueError,
        ("breaker.failure_threshold", ">= 1", "0"),
        id="breaker-threshold",
    ),
    pytest.param(
        build(CircuitBreaker, name="b", failure_threshold=True),
        TypeError,
        ("breaker.failure_threshold", "int", "True"),
        id="breaker-threshold-bool",
    ),
    pytest.param(
        build(CircuitBreaker, name="b", failure_rate=0),
        ValueError,
        ("breaker.failure_rate", "(0, 1]", "0"),
        id="breaker-rate",
    ),
    pytest.param(
        build(CircuitBreaker, name="b", failure_rate=0.5, window=5, minimum_calls=10),
        ValueError,
        ("breaker.window", ">= breaker.minimum_calls (10)", "5"),
        id="breaker-window-below-minimum-calls",
    ),
    pytest.param(
        build(CircuitBreaker, name="b", reset_timeout=-5),
        ValueError,
        ("breaker.reset_timeout", "> 0", "-5"),
        id="breaker-reset",
    ),
    pytest.param(
        build(CircuitBreaker, name="b", half_open_max_calls=0),
        ValueError,
        ("breaker.half_open_max_calls", ">= 1", "0"),
        id="breaker-half-open",
    ),
    pytest.param(
        build(CircuitBreaker, name="b", slow_call_duration=0),
        ValueError,
        ("breaker.slow_call_duration", "> 0", "0"),
        id="breaker-slow",
    ),
    pytest.param(
        build(CircuitBreaker, name="b", exclude=(42,)),
        TypeError,
        ("breaker.exclude", "predicates", "42"),
        id="breaker-exclude",
    ),
    pytest.param(
        build(CircuitBreaker, name="b", storage="mongo://x"),
        ValueError,
        ("breaker.storage", "'memory://'", "'mongo://x'"),
        id="breaker-storage",
    ),
    pytest.param(
        build(RateLimit, "lots"), ValueError, ("rate_limit.limit", "'100/second'", "'lots'"), id="ratelimit-notation"
    ),
    pytest.param(build(RateLimit, 100), TypeError, ("rate_limit.limit", "'100/second'", "100"), id="ratelimit-type"),
    pytest.param(
        build(RateLimit, "1/second", algorithm="token-bucket"),
        ValueError,
        ("rate_limit.algorithm", "moving-window", "'token-bucket'"),
        id="ratelimit-algorithm",
    ),
    pytest.param(
        build(RateLimit, "1/second", key="ip"), TypeError, ("rate_limit.key", "callable", "'ip'"), id="ratelimit-key"
    ),
    pytest.param(
        build(RateLimit, "1/second", max_wait=-1),
        ValueError,
        ("rate_limit.max_wait", ">= 0", "-1"),
        id="ratelimit-max-wait",
    ),
    pytest.param(
        build(RateLimit, "1/second", max_keys=0),
        ValueError,
        ("rate_limit.max_keys", ">= 1", "0"),
        id="ratelimit-max-keys",
    ),
    pytest.param(
        build(RateLimit, "1/second", storage="mongo://"),
        ValueError,
        ("rate_limit.storage", "'memory://'", "'mongo://'"),
        id="ratelimit-storage",
    ),
    pytest.param(
        build(Bulkhead, max_concurrent=0), ValueError, ("bulkhead.max_concurrent", ">= 1", "0"), id="bulkhead-zero"
    ),
    pytest.param(
        build(Bulkhead, max_concurrent=True), TypeError, ("bulkhead.max_concurrent", "int", "True"), id="bulkhead-bool"
    ),
    pytest.param(
        build(Bulkhead, max_concurrent=1, max_wait=float("inf")),
        ValueError,
        ("bulkhead.max_wait", "finite", "inf"),
        id="bulkhead-wait",
    ),
    pytest.param(
        build(Fallback, None, on=KeyboardInterrupt),
        ValueError,
        ("fallback.on", "Exception subclasses", "KeyboardInterrupt"),
        id="fallback-on-base",
    ),
    pytest.param(build(Fallback, None, on=42), TypeError, ("fallback.on", "predicate", "42"), id="fallback-on-number"),
    pytest.param(build(Policy, name=""), ValueError, ("name", "non-empty", "''"), id="policy-name"),
    pytest.param(build(Policy, timeout=True), TypeError, ("timeout", "seconds", "True"), id="policy-timeout-bool"),
    pytest.param(build(Policy, timeout="2s"), TypeError, ("timeout.total", "seconds", "'2s'"), id="policy-timeout-str"),
    pytest.param(build(Policy, timeout=0), ValueError, ("timeout.total", "> 0", "0"), id="policy-timeout-zero"),
    pytest.param(build(Policy, retry="3"), TypeError, ("retry", "attempts", "'3'"), id="policy-retry-str"),
    pytest.param(build(Policy, retry=0), ValueError, ("retry.attempts", ">= 1", "got 0"), id="policy-retry-zero"),
    pytest.param(build(Policy, breaker=5), TypeError, ("breaker", "name", "5"), id="policy-breaker-int"),
    pytest.param(build(Policy, breaker=""), ValueError, ("breaker.name", "non-empty", "''"), id="policy-breaker-empty"),
    pytest.param(
        build(Policy, rate_limit=100), TypeError, ("rate_limit", "'100/second'", "100"), id="policy-rate-limit-int"
    ),
    pytest.param(
        build(Policy, rate_limit="100 a second"),
        ValueError,
        ("rate_limit.limit", "notation", "'100 a second'"),
        id="policy-rate-limit-bad",
    ),
    pytest.param(
        build(Policy, bulkhead=True), TypeError, ("bulkhead", "concurrent", "True"), id="policy-bulkhead-bool"
    ),
    pytest.param(
        build(Policy, bulkhead=0), ValueError, ("bulkhead.max_concurrent", ">= 1", "0"), id="policy-bulkhead-zero"
    ),
    pytest.param(
        build(Policy, bulkhead=2.5), TypeError, ("bulkhead.max_concurrent", "int", "2.5"), id="policy-bulkhead-float"
    ),
]


@pytest.mark.parametrize(("construct", "error_type", "fragments"), BAD_OPTIONS)
def test_bad_option_fails_at_construction_naming_field_rule_and_value(
    construct: Callable[[], object], error_type: type[Exception], fragments: tuple[str, ...]
) -> None:
    """Each bad option raises at construction, and the message names the field, the rule and the value."""
    with pytest.raises(error_type) as caught:
        construct()
    message = str(caught.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} missing from {message!r}"


def test_bad_option_in_the_decorator_fails_at_decoration() -> None:
    """`@resilient(...)` with a bad option raises when the decorator is built, before any call."""
    with pytest.raises(ValueError, match=re.escape("retry.attempts must be >= 1, got 0")):
        resilient(retry=0)


CONFIGS: list[tuple[object, str, object]] = [
    (Timeout(total=1.0), "total", 2.0),
    (Retry(), "attempts", 5),
    (RetryBudget(), "ratio", 0.5),
    (CircuitBreaker(name="frozen"), "failure_threshold", 1),
    (RateLimit("1/second"), "limit", "2/second"),
    (Bulkhead(max_concurrent=1), "max_concurrent", 2),
    (Fallback(None), "handler", 1),
]


@pytest.mark.parametrize(("config", "field", "value"), CONFIGS, ids=lambda c: type(c).__name__)
def test_configs_are_frozen(config: object, field: str, value: object) -> None:
    """Assigning to a config's field raises FrozenInstanceError."""
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(config, field, value)


@pytest.mark.parametrize(("config", "field", "value"), CONFIGS, ids=lambda c: type(c).__name__)
def test_configs_compare_by_value(config: object, field: str, value: object) -> None:
    """A config equals a copy of itself and differs once a field differs."""
    assert dataclasses.replace(config) == config  # type: ignore[type-var]
    assert dataclasses.replace(config, **{field: value}) != config  # type: ignore[type-var]


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (2.0, Timeout(total=2.0)),
        (3, Timeout(total=3.0)),
        (timedelta(milliseconds=1500), Timeout(total=1.5)),
        (Timeout(attempt=0.5), Timeout(attempt=0.5)),
        (None, None),
    ],
)
def test_timeout_shorthands(given: Any, expected: Timeout | None) -> None:
    """`timeout=` takes total seconds, a timedelta, a Timeout or None."""
    assert Policy(timeout=given).timeout == expected


def test_durations_are_normalised_to_float_seconds() -> None:
    """A timedelta or int given for a duration is stored as float seconds."""
    timeout = Timeout(total=timedelta(seconds=2), attempt=1)
    assert (timeout.total, timeout.attempt) == (2.0, 1.0)
    assert isinstance(timeout.attempt, float)
    wait = timedelta(milliseconds=50)
    assert Bulkhead(max_concurrent=1, max_wait=wait).max_wait == 0.05  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("given", "expected"),
    [(3, Retry(attempts=3)), (True, Retry()), (False, None), (None, None), (Retry(attempts=7), Retry(attempts=7))],
)
def test_retry_shorthands(given: Any, expected: Retry | None) -> None:
    """`retry=` takes a number of attempts, True (defaults), False or None (off), or a Retry."""
    assert Policy(retry=given).retry == expected


def test_other_shorthands() -> None:
    """`breaker=`, `rate_limit=`, `bulkhead=` and `fallback=` shorthands become their configs."""
    policy = Policy(breaker="shorthand", rate_limit="10/second", bulkhead=4, fallback="cached")
    assert policy.breaker == CircuitBreaker(name="shorthand")
    assert policy.rate_limit == RateLimit("10/second")
    assert policy.bulkhead == Bulkhead(max_concurrent=4)
    assert policy.fallback == Fallback("cached")


def test_pybreaker_instance_is_adopted() -> None:
    """`breaker=` an existing pybreaker.CircuitBreaker drives that object, keeping its thresholds."""
    existing = pybreaker.CircuitBreaker(fail_max=2, reset_timeout=7, name="legacy")
    policy = Policy(breaker=existing)
    assert policy.breaker is not None
    assert (policy.breaker.name, policy.breaker.failure_threshold, policy.breaker.reset_timeout) == ("legacy", 2, 7.0)
    assert policy.breaker.pybreaker is existing
    assert policy._compiled.breaker is not None
    assert policy._compiled.breaker.pybreaker is existing


def test_same_breaker_definition_joins_the_existing_one() -> None:
    """The same CircuitBreaker definition under one name is one shared breaker."""
    first = Policy(breaker=CircuitBreaker(name="payments", failure_threshold=2))
    second = Policy(breaker=CircuitBreaker(name="payments", failure_threshold=2))
    assert first._compiled.breaker is not None
    assert first._compiled.breaker is second._compiled.breaker


def test_bare_name_joins_the_existing_definition() -> None:
    """`breaker="name"` joins the breaker already defined under that name, with its settings."""
    defined = Policy(breaker=CircuitBreaker(name="search", failure_threshold=9, reset_timeout=3.0))
    joined = Policy(breaker="search")
    assert joined.breaker == defined.breaker
    assert joined._compiled.breaker is defined._compiled.breaker


def test_different_definitions_under_one_name_are_an_error() -> None:
    """Two different CircuitBreaker definitions under one name raise ValueError naming it."""
    Policy(breaker=CircuitBreaker(name="inventory", failure_threshold=2))
    with pytest.raises(ValueError, match=r"breaker\.name 'inventory' is already defined with different settings"):
        Policy(breaker=CircuitBreaker(name="inventory", failure_threshold=3))


def test_bare_name_first_then_a_definition_configures_that_breaker() -> None:
    """A bare name is a reference: a later full definition configures the breaker it joined."""
    referring = Policy(breaker="orders")
    defined = Policy(breaker=CircuitBreaker(name="orders", failure_threshold=1, reset_timeout=7.0))
    assert referring._compiled.breaker is defined._compiled.breaker
    assert referring.breaker == defined.breaker
    assert referring.describe()["breaker"].failure_threshold == 1

    @referring
    def call() -> None:
        raise ConnectionError

    with pytest.raises(ConnectionError):
        call()
    assert testing.breaker_state("orders") == "open"  # one failure: the definition's threshold


def test_a_placeholder_keeps_its_state_when_the_definition_arrives() -> None:
    """Failures counted through a bare name before the definition still count after it."""
    referring = Policy(breaker="ledger")

    @referring
    def call() -> None:
        raise ConnectionError

    for _ in range(2):
        with pytest.raises(ConnectionError):
            call()
    Policy(breaker=CircuitBreaker(name="ledger", failure_threshold=3))
    with pytest.raises(ConnectionError):
        call()
    assert testing.breaker_state("ledger") == "open"


def test_definition_first_then_a_bare_name_joins_it() -> None:
    """A bare name after the definition joins it with the definition's settings."""
    defined = Policy(breaker=CircuitBreaker(name="billing", failure_threshold=4))
    referring = Policy(breaker="billing")
    assert referring._compiled.breaker is defined._compiled.breaker
    assert referring.breaker == CircuitBreaker(name="billing", failure_threshold=4)


def test_two_different_full_definitions_conflict_whatever_the_references() -> None:
    """After a bare name and one definition, a second different definition raises naming both."""
    Policy(breaker="stock")
    Policy(breaker=CircuitBreaker(name="stock", failure_threshold=2))
    with pytest.raises(ValueError, match=r"'stock'.*failure_threshold=2.*failure_threshold=5") as raised:
        Policy(breaker=CircuitBreaker(name="stock", failure_threshold=5))
    assert "reference" in str(raised.value)


def test_forgotten_breakers_can_be_defined_anew() -> None:
    """After `testing.forget_breakers()` a name may be defined with other settings."""
    Policy(breaker=CircuitBreaker(name="again", failure_threshold=2))
    testing.forget_breakers()
    assert Policy(breaker=CircuitBreaker(name="again", failure_threshold=3)).breaker is not None


def test_describe_lists_configured_layers_outer_to_inner() -> None:
    """`describe()` gives the name and each configured layer, outermost first."""
    policy = Policy(
        name="everything",
        breaker="described",
        retry=2,
        timeout=1.0,
        bulkhead=3,
        rate_limit="5/second",
        fallback=None,
    )
    described = policy.describe()
    assert list(described) == ["name", "rate_limit", "bulkhead", "timeout", "retry", "breaker"]
    assert described["name"] == "everything"
    assert described["retry"] == Retry(attempts=2)
    assert described["timeout"] == Timeout(total=1.0)
    assert testing.describe(policy) == described


def test_describe_of_an_empty_policy_has_only_the_name() -> None:
    """A policy without layers describes itself as its name only."""
    assert Policy().describe() == {"name": None}


def test_describe_full_order() -> None:
    """With every layer, the order is fallback, rate limit, bulkhead, timeout, retry, breaker."""
    policy = Policy(fallback=0, rate_limit="1/second", bulkhead=1, timeout=1.0, retry=2, breaker="order-of-layers")
    assert list(policy.describe())[1:] == ["fallback", "rate_limit", "bulkhead", "timeout", "retry", "breaker"]


def test_testing_describe_accepts_a_decorated_function() -> None:
    """`testing.describe` takes a function decorated by a policy, as its docstring says."""

    @Policy(retry=2)
    def fetch() -> None:
        return None

    assert testing.describe(fetch) == {"name": None, "retry": Retry(attempts=2)}


def test_repr_shows_name_and_layers() -> None:
    """`repr(policy)` shows the name and each configured layer's config."""
    text = repr(Policy(name="payments", timeout=2.0, retry=3))
    assert text == f"Policy(name='payments', timeout={Timeout(total=2.0)!r}, retry={Retry(attempts=3)!r})"


def test_repr_of_an_empty_policy() -> None:
    """`repr(Policy())` is a clean `Policy(name=None)`."""
    assert repr(Policy()) == "Policy(name=None)"


def test_config_reprs_name_the_public_class() -> None:
    """Config reprs read `Retry(...)`, not a private module path."""
    assert repr(Retry(attempts=2)).startswith("Retry(attempts=2")
    assert repr(Bulkhead(max_concurrent=2)) == "Bulkhead(max_concurrent=2, max_wait=0.0)"


def test_pybreaker_object_is_left_out_of_the_breaker_repr() -> None:
    """A CircuitBreaker's repr leaves out the pybreaker object it wraps."""
    config = CircuitBreaker.from_pybreaker(pybreaker.CircuitBreaker(name="quiet"))
    assert "pybreaker=" not in repr(config)


def test_decorator_without_a_function_returns_a_policy() -> None:
    """`resilient(...)` without a function is the Policy itself, reusable as a decorator."""
    policy = resilient(name="reusable", retry=2)
    assert isinstance(policy, Policy)
    assert policy.name == "reusable"


def test_policy_compiles_once_and_calls_build_no_configs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Calling a decorated function constructs no config object (everything compiled at decoration)."""
    built: list[str] = []
    for config_type in (Timeout, Retry, RateLimit, Bulkhead, Fallback):
        original = config_type.__post_init__

        def spy(self: Any, _original: Any = original) -> None:
            built.append(type(self).__name__)
            _original(self)

        monkeypatch.setattr(config_type, "__post_init__", spy)

    policy = Policy(retry=Retry(attempts=2), rate_limit=RateLimit("100/second"), bulkhead=Bulkhead(max_concurrent=2))
    fetch = policy(lambda: "ok")
    built.clear()
    for _ in range(5):
        assert fetch() == "ok"
    assert built == []


@pytest.mark.parametrize("attribute", ["rate_limit", "timeout", "retry", "breaker", "bulkhead", "fallback", "name"])
def test_a_policy_is_immutable(attribute: str) -> None:
    """Assigning or deleting a policy's layer raises instead of changing what describe() shows."""
    policy = Policy(name="frozen", rate_limit="5/second")
    before = policy.describe()
    with pytest.raises(AttributeError, match=r"Policy is immutable.*new Policy"):
        setattr(policy, attribute, RateLimit("100/minute"))
    with pytest.raises(AttributeError, match=r"Policy is immutable"):
        delattr(policy, attribute)
    assert policy.describe() == before
