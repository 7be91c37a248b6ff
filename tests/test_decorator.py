"""`@resilient` and `Policy` as decorators: what they wrap, what they keep, what they refuse."""

from __future__ import annotations

import asyncio
import inspect
import typing
from collections.abc import AsyncIterator, Iterator

import pytest

from resilient import Policy, RateLimitedError, Retry, instrumentation, resilient
from resilient.testing import fake_clock, no_wait


class Flaky:
    """Fails with ConnectionError `failures` times, then returns `value`."""

    def __init__(self, failures: int, value: str = "ok") -> None:
        self.failures = failures
        self.value = value
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise ConnectionError(f"failure {self.calls}")
        return self.value


def test_bare_decorator_keeps_behaviour() -> None:
    """Bare `@resilient` (telemetry only) returns the function's value and raises its errors."""

    @resilient
    def double(x: int) -> int:
        if x < 0:
            raise ValueError(x)
        return 2 * x

    assert double(21) == 42
    with pytest.raises(ValueError, match="-1"):
        double(-1)


async def test_bare_decorator_on_async_function() -> None:
    """Bare `@resilient` on a coroutine function keeps it a coroutine function."""

    @resilient
    async def double(x: int) -> int:
        return 2 * x

    assert inspect.iscoroutinefunction(double)
    assert await double(21) == 42


def test_sync_function_is_retried() -> None:
    """A decorated sync function gets the policy: here, retries of a transient failure."""
    flaky = Flaky(failures=2)

    @resilient(retry=Retry(attempts=3, budget=None))
    def fetch() -> str:
        return flaky()

    with no_wait():
        assert fetch() == "ok"
    assert flaky.calls == 3


async def test_async_function_is_retried() -> None:
    """A decorated async function gets the same policy behaviour."""
    flaky = Flaky(failures=2)

    @resilient(retry=Retry(attempts=3, budget=None))
    async def fetch() -> str:
        return flaky()

    with no_wait():
        assert await fetch() == "ok"
    assert flaky.calls == 3


def test_arguments_are_passed_through() -> None:
    """Positional and keyword arguments reach the function unchanged."""

    @resilient(retry=2)
    def join(*parts: str, sep: str = "-") -> str:
        return sep.join(parts)

    assert join("a", "b", sep="+") == "a+b"


class Service:
    """A class whose methods of every kind are protected."""

    policy = Policy(retry=Retry(attempts=2, budget=None))

    def __init__(self) -> None:
        self.flaky = Flaky(failures=1, value="instance")

    @policy
    def method(self, suffix: str) -> str:
        return self.flaky() + suffix

    @policy
    async def amethod(self, suffix: str) -> str:
        return self.flaky() + suffix

    @policy
    @staticmethod
    def static(x: int) -> int:
        return x + 1

    @staticmethod
    @policy
    def static_inner(x: int) -> int:
        return x + 2

    @policy
    @classmethod
    def klass(cls, x: int) -> str:
        return f"{cls.__name__}:{x}"

    @policy
    @staticmethod
    async def astatic(x: int) -> int:
        return x + 3

    @policy
    @classmethod
    async def aklass(cls, x: int) -> str:
        return f"{cls.__name__}:{x}"


class SubService(Service):
    """Inherits the protected methods."""


def test_method_receives_self_and_is_protected() -> None:
    """A decorated method is bound to its instance and gets the policy (one retry here)."""
    service = Service()
    with no_wait():
        assert service.method("!") == "instance!"
    assert service.flaky.calls == 2


async def test_async_method_receives_self_and_is_protected() -> None:
    """A decorated async method is bound to its instance and gets the policy."""
    service = Service()
    with no_wait():
        assert await service.amethod("?") == "instance?"
    assert service.flaky.calls == 2


def test_staticmethod_in_either_order() -> None:
    """`@policy` above or below `@staticmethod` gives a static method, on the class and instances."""
    assert Service.static(1) == 2
    assert Service().static(1) == 2
    assert Service.static_inner(1) == 3
    assert isinstance(inspect.getattr_static(Service, "static"), staticmethod)


def test_classmethod_receives_the_class() -> None:
    """`@policy` above `@classmethod` gives a class method bound to the (sub)class."""
    assert Service.klass(1) == "Service:1"
    assert Service().klass(2) == "Service:2"
    assert SubService.klass(3) == "SubService:3"
    assert isinstance(inspect.getattr_static(Service, "klass"), classmethod)


async def test_async_staticmethod_and_classmethod() -> None:
    """Async static and class methods are decorated as coroutine functions."""
    assert await Service.astatic(1) == 4
    assert await SubService.aklass(5) == "SubService:5"
    assert inspect.iscoroutinefunction(Service.astatic)


def original(order_id: int, *, amount: float = 0.0) -> str:
    """Charge an order."""
    return f"{order_id}:{amount}"


async def aoriginal(order_id: int, *, amount: float = 0.0) -> str:
    """Charge an order, asynchronously."""
    return f"{order_id}:{amount}"


@pytest.mark.parametrize("function", [original, aoriginal], ids=["sync", "async"])
def test_metadata_is_preserved(function: typing.Callable[..., object]) -> None:
    """The wrapper keeps __wrapped__, name, qualname, docstring, signature and type hints."""
    wrapped = resilient(timeout=1.0)(function)
    assert wrapped is not function
    assert wrapped.__wrapped__ is function  # type: ignore[attr-defined]
    assert wrapped.__name__ == function.__name__
    assert wrapped.__qualname__ == function.__qualname__
    assert wrapped.__doc__ == function.__doc__
    assert wrapped.__module__ == function.__module__
    assert inspect.signature(wrapped) == inspect.signature(function)
    assert typing.get_type_hints(wrapped) == typing.get_type_hints(function)
    assert inspect.iscoroutinefunction(wrapped) == inspect.iscoroutinefunction(function)


def test_method_signature_is_preserved() -> None:
    """Bound methods show the original parameters (without self) to introspection."""
    assert list(inspect.signature(Service().method).parameters) == ["suffix"]
    assert list(inspect.signature(Service.klass).parameters) == ["x"]


def test_generator_function_is_rejected() -> None:
    """Decorating a generator function raises a TypeError that says what to do instead."""

    def numbers() -> Iterator[int]:
        yield 1

    with pytest.raises(TypeError, match=r"generator function .*numbers.*consumes it"):
        resilient(retry=3)(numbers)


def test_async_generator_function_is_rejected() -> None:
    """Decorating an async generator function raises TypeError too."""

    async def numbers() -> AsyncIterator[int]:
        yield 1

    with pytest.raises(TypeError, match="generator function"):
        Policy(retry=3)(numbers)


def test_bare_decorator_rejects_generators_too() -> None:
    """Bare `@resilient` refuses a generator function at decoration time."""

    def numbers() -> Iterator[int]:
        yield 1

    with pytest.raises(TypeError, match="generator"):
        resilient(numbers)


def test_non_callable_is_rejected() -> None:
    """Decorating something that is not callable raises TypeError at once."""
    with pytest.raises(TypeError, match="decorates functions"):
        Policy()(42)  # type: ignore[call-overload]


def test_sync_function_with_async_fallback_is_rejected() -> None:
    """A sync function cannot get an async fallback handler: TypeError at decoration."""

    async def handler(exc: BaseException) -> str:
        return "later"

    with pytest.raises(TypeError, match=r"fallback handler .* is async but .*fetch.* is a sync function"):

        @resilient(fallback=handler)
        def fetch() -> str:
            return "now"


def test_policy_call_runs_a_sync_callable() -> None:
    """`Policy.call(fn, *args, **kwargs)` runs fn once under the policy."""
    flaky = Flaky(failures=1)
    policy = Policy(retry=Retry(attempts=2, budget=None))
    with no_wait():
        assert policy.call(flaky) == "ok"
    assert flaky.calls == 2
    assert policy.call(original, 7, amount=1.5) == "7:1.5"


async def test_policy_call_async_awaits_a_coroutine_function() -> None:
    """`await Policy.call_async(fn, *args, **kwargs)` runs an async callable under the policy."""
    flaky = Flaky(failures=1)

    async def fetch(suffix: str) -> str:
        return flaky() + suffix

    policy = Policy(retry=Retry(attempts=2, budget=None))
    with no_wait():
        assert await policy.call_async(fetch, "!") == "ok!"
    assert flaky.calls == 2
    assert await policy.call_async(aoriginal, 3, amount=2.0) == "3:2.0"


def test_one_policy_shares_state_between_decorated_functions_and_call() -> None:
    """A Policy's decorations and its `call` share one compiled policy (here one rate limit)."""
    policy = Policy(rate_limit="2/minute")

    @policy
    def first() -> str:
        return "first"

    with fake_clock():
        assert first() == "first"
        assert policy.call(original, 1) == "1:0.0"
        with pytest.raises(RateLimitedError):
            first()


@pytest.mark.parametrize(
    ("policy_name", "expected"),
    [(None, "test_events_name_the_function_or_the_policy.<locals>.fetch"), ("named", "named")],
)
def test_events_name_the_function_or_the_policy(
    policy_name: str | None, expected: str, events: list[instrumentation.Event]
) -> None:
    """Events carry the policy's name, or the function's qualified name when the policy has none."""

    @resilient(name=policy_name, rate_limit="1/minute")
    def fetch() -> None:
        return None

    with fake_clock():
        fetch()
        with pytest.raises(RateLimitedError) as caught:
            fetch()
    assert caught.value.policy == expected
    assert [event.policy for event in events if event.name == "ratelimit.rejected"] == [expected]


def test_decorating_twice_nests_policies() -> None:
    """Two stacked decorators both apply; the inner one sees each attempt of the outer one."""
    flaky = Flaky(failures=3)

    @resilient(retry=Retry(attempts=2, budget=None))
    @resilient(retry=Retry(attempts=2, budget=None))
    def fetch() -> str:
        return flaky()

    with no_wait():
        assert fetch() == "ok"
    assert flaky.calls == 4


async def test_decorated_async_function_runs_in_the_callers_task() -> None:
    """The async wrapper awaits the function in the caller's task (contextvars and cancellation flow)."""
    outer = asyncio.current_task()

    @resilient(retry=2)
    async def which_task() -> asyncio.Task[object] | None:
        return asyncio.current_task()

    assert await which_task() is outer
