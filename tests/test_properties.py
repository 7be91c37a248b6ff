"""Property tests: backoff delays stay within their bounds for any configuration."""

from __future__ import annotations

import tenacity
from hypothesis import given, settings
from hypothesis import strategies as st

from resilient import Retry
from resilient._strategies.retry import RetryCall, RetryRuntime

delays = st.floats(min_value=0.0, max_value=60.0, allow_nan=False)


@settings(max_examples=300, deadline=None)
@given(
    initial=delays,
    extra=delays,
    base=st.floats(min_value=1.0, max_value=10.0, allow_nan=False),
    attempt=st.integers(min_value=1, max_value=200),
    jitter=st.booleans(),
)
def test_backoff_is_within_zero_and_the_capped_exponential(
    initial: float, extra: float, base: float, attempt: int, jitter: bool
) -> None:
    """Every delay lies in [0, min(max_delay, initial * base ** (attempt - 1))], never above the cap."""
    retry = RetryRuntime(
        Retry(attempts=attempt + 1, initial_delay=initial, max_delay=initial + extra, exp_base=base, jitter=jitter)
    )
    call = RetryCall(lambda: None, (), {})
    call.record(attempt, ConnectionError(), None)
    delay = retry.wait(call.state)
    try:
        exponential = initial * base ** (attempt - 1)
    except OverflowError:
        exponential = float("inf")
    ceiling = min(initial + extra, exponential)
    assert 0.0 <= delay <= ceiling + 1e-9
    if not jitter:
        assert delay == tenacity.wait_exponential(multiplier=initial, max=initial + extra, exp_base=base)(call.state)


@settings(max_examples=200, deadline=None)
@given(attempts=st.integers(min_value=1, max_value=20), failures=st.integers(min_value=0, max_value=30))
def test_attempts_are_never_exceeded(attempts: int, failures: int) -> None:
    """However many failures are scripted, the function runs at most `attempts` times."""
    from resilient import Policy, testing  # noqa: PLC0415

    calls = 0

    def dependency() -> str:
        nonlocal calls
        calls += 1
        if calls <= failures:
            raise ConnectionError
        return "ok"

    policy = Policy(retry=Retry(attempts=attempts, budget=None))
    with testing.no_wait():
        try:
            assert policy.call(dependency) == "ok"
        except ConnectionError:
            assert failures >= attempts
    assert calls == min(attempts, failures + 1)
