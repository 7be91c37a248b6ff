"""Production safeguards around code that was written without them.

``@resilient(timeout=2.0, retry=3, breaker="payments")`` on a sync or async function adds
timeouts, retries, a circuit breaker, rate limits, bulkheads and fallbacks, each one
logged, traced and measured. See the README for the full tour.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from resilient import deadline
from resilient._engine.policy import Policy, resilient
from resilient._engine.policy import set_policy_source as _set_policy_source
from resilient._kernel.context import current_request_id
from resilient._kernel.errors import (
    BulkheadFullError,
    CircuitOpenError,
    DeadlineExceededError,
    RateLimitedError,
    ResilienceError,
)
from resilient._storage.config import configure_storage
from resilient._strategies.breaker import CircuitBreaker
from resilient._strategies.budget import RetryBudget
from resilient._strategies.bulkhead import Bulkhead
from resilient._strategies.fallback import Fallback
from resilient._strategies.ratelimit import RateLimit
from resilient._strategies.retry import Retry
from resilient._strategies.timeout import Timeout

if TYPE_CHECKING:
    __version__: str

__all__ = [
    "Bulkhead",
    "BulkheadFullError",
    "CircuitBreaker",
    "CircuitOpenError",
    "DeadlineExceededError",
    "Fallback",
    "Policy",
    "RateLimit",
    "RateLimitedError",
    "ResilienceError",
    "Retry",
    "RetryBudget",
    "Timeout",
    "configure_storage",
    "current_request_id",
    "deadline",
    "resilient",
]


def _policy_from_config(name: str, **code_options: object) -> Policy:
    """``resilient("payments")``: the policy the configuration names (loaded on first use)."""
    from resilient.config._current import current  # noqa: PLC0415 - config loads only when a name is used

    return current().policy(name, **code_options)


_set_policy_source(_policy_from_config)


def __getattr__(name: str) -> str:
    if name == "__version__":
        from importlib.metadata import version  # noqa: PLC0415 - lazy, as stamina does

        return version("resilient")
    raise AttributeError(f"module 'resilient' has no attribute {name!r}")
