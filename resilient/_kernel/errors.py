"""The library's own errors: one base class, each error carrying what a caller needs."""

from __future__ import annotations

__all__ = [
    "BulkheadFullError",
    "CircuitOpenError",
    "DeadlineExceededError",
    "RateLimitedError",
    "ResilienceError",
]


class ResilienceError(Exception):
    """Base class of every error raised by `resilient` itself (never of the user's errors)."""

    policy: str | None

    def __init__(self, message: str, *, policy: str | None = None) -> None:
        super().__init__(message)
        self.policy = policy


class CircuitOpenError(ResilienceError):
    """The circuit breaker is open (or half-open with every probe slot taken): failed fast."""

    def __init__(self, breaker: str, *, retry_after: float, policy: str | None = None) -> None:
        super().__init__(
            f"circuit breaker {breaker!r} is open; next probe allowed in {retry_after:.3f}s",
            policy=policy,
        )
        self.breaker = breaker
        self.retry_after = retry_after


class RateLimitedError(ResilienceError):
    """The rate limit rejected the call; `retry_after` is when a slot frees up, in seconds."""

    def __init__(self, limit: str, *, retry_after: float, key: str = "", policy: str | None = None) -> None:
        super().__init__(f"rate limit {limit!r} exceeded; retry after {retry_after:.3f}s", policy=policy)
        self.limit = limit
        self.retry_after = retry_after
        self.key = key


class BulkheadFullError(ResilienceError):
    """Every concurrency slot of the bulkhead stayed taken for longer than `max_wait`."""

    def __init__(self, max_concurrent: int, *, max_wait: float, policy: str | None = None) -> None:
        super().__init__(
            f"bulkhead full: {max_concurrent} calls in flight, waited {max_wait:.3f}s",
            policy=policy,
        )
        self.max_concurrent = max_concurrent
        self.max_wait = max_wait


class DeadlineExceededError(ResilienceError, TimeoutError):
    """A timeout fired. Also a builtin `TimeoutError`, so existing `except TimeoutError` works.

    `scope` says which limit fired: ``"attempt"`` (one attempt), ``"total"`` (the policy's
    deadline over all attempts and backoff) or ``"inherited"`` (an enclosing deadline).
    """

    def __init__(self, timeout: float, *, scope: str, policy: str | None = None) -> None:
        ResilienceError.__init__(self, f"{scope} timeout of {timeout:.3f}s exceeded", policy=policy)
        self.timeout = timeout
        self.scope = scope


for _cls in (
    ResilienceError,
    CircuitOpenError,
    RateLimitedError,
    BulkheadFullError,
    DeadlineExceededError,
):
    _cls.__module__ = "resilient"
