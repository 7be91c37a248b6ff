"""A policy compiled once: the runtime objects the drivers read, None where a layer is absent."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from resilient._engine.attempt import attempt_async, attempt_async_shared, attempt_sync
from resilient._engine.pipeline import (
    admit_async,
    admit_sync,
    deadline_async,
    deadline_sync,
    retry_async,
    retry_sync,
)
from resilient._strategies.breaker_registry import breaker_for
from resilient._strategies.bulkhead import BulkheadRuntime
from resilient._strategies.fallback import FallbackRuntime
from resilient._strategies.ratelimit import LimiterRuntime
from resilient._strategies.retry import RetryRuntime
from resilient._strategies.timeout import ThreadRunner

if TYPE_CHECKING:
    from resilient._strategies.breaker import BreakerRuntime, CircuitBreaker
    from resilient._strategies.bulkhead import Bulkhead
    from resilient._strategies.fallback import Fallback
    from resilient._strategies.ratelimit import RateLimit
    from resilient._strategies.retry import Retry
    from resilient._strategies.timeout import Timeout

__all__ = ["CompiledPolicy"]

Layer = Callable[..., Any]


class CompiledPolicy:
    """Everything a call needs, precomputed; shared by every call of the policy."""

    __slots__ = (
        "async_after_admit",
        "async_after_deadline",
        "async_attempt",
        "async_entry",
        "attempt_timeout",
        "bounded_async",
        "bounded_sync",
        "breaker",
        "bulkhead",
        "fallback",
        "limiter",
        "retry",
        "runner",
        "sync_after_admit",
        "sync_after_deadline",
        "sync_entry",
        "total_timeout",
    )

    def __init__(
        self,
        *,
        timeout: Timeout | None,
        retry: Retry | None,
        breaker: CircuitBreaker | None,
        rate_limit: RateLimit | None,
        bulkhead: Bulkhead | None,
        fallback: Fallback | None,
        name: str | None = None,
    ) -> None:
        self.total_timeout: float | None = timeout.total if timeout else None  # type: ignore[assignment]
        self.attempt_timeout: float | None = timeout.attempt if timeout else None  # type: ignore[assignment]
        self.runner = ThreadRunner(timeout.max_threads) if timeout and timeout.sync_mode == "thread" else None
        # Sync attempts need the bounded path to publish a tighter per-attempt deadline or
        # to run in the thread pool; async attempts need it for any timeout (cancellation).
        self.bounded_sync = timeout is not None and (self.runner is not None or self.attempt_timeout is not None)
        self.bounded_async = timeout is not None
        self.retry = RetryRuntime(retry) if retry else None
        self.breaker: BreakerRuntime | None = breaker_for(breaker) if breaker else None
        # A shared (Redis) limit is keyed by RateLimit.name, else the policy's name.
        self.limiter = LimiterRuntime(rate_limit, scope=name) if rate_limit else None
        self.bulkhead = BulkheadRuntime(bulkhead) if bulkhead else None
        self.fallback = FallbackRuntime(fallback) if fallback else None
        self._link_layers()

    def without_retry(self) -> CompiledPolicy:
        """The same runtime objects (one rate limiter, one bulkhead, one breaker) minus retry.

        For calls that must run once whatever the policy says (a non-idempotent HTTP request):
        they still count against the policy's shared limits.
        """
        once = object.__new__(CompiledPolicy)
        for slot in CompiledPolicy.__slots__:
            setattr(once, slot, getattr(self, slot))
        once.retry = None
        once._link_layers()  # re-point the deadline layer straight at the attempt
        return once

    def _link_layers(self) -> None:
        """Point each layer at the next configured one, so absent layers cost no call."""
        # A breaker kept in Redis is awaited on the async side (redis.asyncio), never blocking the loop.
        shared = self.breaker is not None and self.breaker.shared
        self.async_attempt: Layer = attempt_async_shared if shared else attempt_async
        after_deadline: tuple[Layer, Layer] = (
            (retry_sync, retry_async) if self.retry is not None else (attempt_sync, self.async_attempt)
        )
        after_admit: tuple[Layer, Layer] = (
            (deadline_sync, deadline_async) if self.total_timeout is not None else after_deadline
        )
        admits = self.limiter is not None or self.bulkhead is not None
        entry: tuple[Layer, Layer] = (admit_sync, admit_async) if admits else after_admit
        self.sync_after_deadline, self.async_after_deadline = after_deadline
        self.sync_after_admit, self.async_after_admit = after_admit
        self.sync_entry, self.async_entry = entry
