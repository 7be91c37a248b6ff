"""A strategy plugs in from outside the engine: one `Layer` and one `register_layer` call."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest

from resilient import Policy, Retry, deadline
from resilient._engine import layers
from resilient._engine.layers import register_layer, unregister_layer
from resilient._kernel.layer import Layer, Link
from resilient.testing import no_wait


class Counting:
    """A trivial strategy: counts the calls through it (and notes what it saw) for named policies."""

    def __init__(self, names: set[str]) -> None:
        self.names = names
        self.calls = 0
        self.saw_deadline: list[bool] = []
        self.layer = Layer("count", self.link, self.compile)

    def compile(self, cp: Any, options: Mapping[str, Any]) -> None:
        cp.counting = self if options["name"] in self.names else None

    def link(self, cp: Any, inner: Link) -> Link | None:
        if cp.counting is None:
            return None
        after_sync, after_async = inner.sync, inner.async_

        def count_sync(
            cp: Any, label: str, fn: Callable[..., Any], args: Any, kwargs: Any, obs: Any, now: Any = None
        ) -> Any:
            self.calls += 1
            self.saw_deadline.append(deadline.remaining() is not None)
            return after_sync(cp, label, fn, args, kwargs, obs, now)

        async def count_async(
            cp: Any, label: str, fn: Callable[..., Any], args: Any, kwargs: Any, obs: Any, now: Any = None
        ) -> Any:
            self.calls += 1
            self.saw_deadline.append(deadline.remaining() is not None)
            return await after_async(cp, label, fn, args, kwargs, obs, now)

        return Link(count_sync, count_async)


@pytest.fixture
def counting() -> Iterator[Counting]:
    strategy = Counting({"counted"})
    register_layer(strategy.layer, before="retry")
    try:
        yield strategy
    finally:
        unregister_layer("count")


def _flaky(failures: int) -> tuple[list[int], Callable[[], str]]:
    attempts: list[int] = []

    def call() -> str:
        attempts.append(1)
        if len(attempts) <= failures:
            raise ConnectionError("flaky")
        return "ok"

    return attempts, call


def test_a_registered_layer_runs_between_deadline_and_retry_sync(counting: Counting) -> None:
    """Placed before retry it runs once per call inside the deadline while retry repeats the attempts."""
    policy = Policy(name="counted", timeout=5.0, retry=Retry(attempts=3, jitter=False))
    attempts, call = _flaky(failures=2)
    with no_wait():
        assert policy.call(call) == "ok"
    assert policy._compiled.chain == ("timeout", "count", "retry", "attempt")
    assert (counting.calls, len(attempts), counting.saw_deadline) == (1, 3, [True])


async def test_a_registered_layer_runs_between_deadline_and_retry_async(counting: Counting) -> None:
    """The async side of the same layer sits at the same place."""
    policy = Policy(name="counted", timeout=5.0, retry=Retry(attempts=3, jitter=False))
    attempts, call = _flaky(failures=2)

    async def acall() -> str:
        return call()

    with no_wait():
        assert await policy.call_async(acall) == "ok"
    assert (counting.calls, len(attempts), counting.saw_deadline) == (1, 3, [True])


def test_a_layer_the_policy_leaves_out_costs_no_call(counting: Counting) -> None:
    """For a policy it does not configure, the chain is the one compiled without the layer at all."""
    policy = Policy(name="other", timeout=5.0, retry=3)
    assert policy.call(lambda: "ok") == "ok"
    assert counting.calls == 0
    unregister_layer("count")
    plain = Policy(name="other", timeout=5.0, retry=3)
    register_layer(counting.layer, before="retry")
    assert policy._compiled.chain == plain._compiled.chain == ("timeout", "retry", "attempt")
    # The deadline layer links straight to retry's step: no pass-through step in between.
    assert policy._compiled.sync_entry.__code__ is plain._compiled.sync_entry.__code__
    assert policy._compiled.sync_entry.__closure__ is not None
    inner = {cell.cell_contents for cell in policy._compiled.sync_entry.__closure__ if callable(cell.cell_contents)}
    assert {step.__qualname__.rpartition(".")[2] for step in inner} == {"retry_sync"}


def test_without_retry_keeps_a_registered_layer(counting: Counting) -> None:
    """Relinking minus retry (httpx's send-once policy) keeps the plugged-in layer in its place."""
    policy = Policy(name="counted", timeout=5.0, retry=3)
    assert policy._compiled.without_retry().chain == ("timeout", "count", "attempt")


def test_register_layer_refuses_a_taken_name_or_an_unknown_place(counting: Counting) -> None:
    """A duplicate name or a `before` naming no row fails with ValueError naming the value."""
    with pytest.raises(ValueError, match="'count' is already"):
        register_layer(counting.layer, before="retry")
    with pytest.raises(ValueError, match="before='hedge' names no layer"):
        register_layer(Layer("other", None), before="hedge")
    with pytest.raises(ValueError, match="'retry' is built in"):
        unregister_layer("retry")
    names = [row.name for row in layers.LAYERS]
    assert names == ["fallback", "rate_limit", "bulkhead", "timeout", "count", "retry", "attempt"]


def test_a_layer_placed_inside_retry_runs_on_every_attempt() -> None:
    """Placed before the attempt layer it sees each attempt: retry no longer skips past it to the function."""
    strategy = Counting({"per-attempt"})
    register_layer(strategy.layer, before="attempt")
    try:
        policy = Policy(name="per-attempt", retry=Retry(attempts=3, jitter=False), breaker="per-attempt-breaker")
        attempts, call = _flaky(failures=2)
        with no_wait():
            assert policy.call(call) == "ok"
    finally:
        unregister_layer("count")
    assert policy._compiled.chain == ("retry", "count", "attempt")
    assert (strategy.calls, len(attempts)) == (3, 3)
