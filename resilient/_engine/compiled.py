"""A policy compiled once: the strategies' runtime objects and the chain of configured layers.

`CompiledPolicy` names no strategy: it runs each row of the layer table (`_engine/layers.py`)
once to build the runtimes (`Layer.compile`, which sets them as attributes: `retry`,
`breaker`, `limiter`, ...; None where a strategy is left out), then links the rows from the
innermost out (`Layer.link`): each configured layer gets a pointer to the next configured
one, chosen here, so an absent layer costs no call. `sync_entry` / `async_entry` is the
first configured layer, called as ``entry(cp, label, fn, args, kwargs, obs, now=None)``.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

from resilient._engine import layers as _layers
from resilient._kernel.layer import Link, call_async, call_sync

if TYPE_CHECKING:
    from collections.abc import Mapping

    from resilient._kernel.layer import Layer, Step
    from resilient._strategies.breaker import BreakerRuntime
    from resilient._strategies.bulkhead import BulkheadRuntime
    from resilient._strategies.fallback import FallbackRuntime
    from resilient._strategies.ratelimit import LimiterRuntime
    from resilient._strategies.retry import RetryRuntime
    from resilient._strategies.timeout import ThreadRunner

__all__ = ["CompiledPolicy"]

#: The end of every chain: the protected call itself.
_END = Link(call_sync, call_async)


class CompiledPolicy:
    """Everything a call needs, precomputed; shared by every call of the policy.

    No `__slots__`: a strategy's compile step may add the attributes it needs.
    """

    # Set by the built-in rows' compile steps (declared for the readers: wrapper, httpx, tests).
    fallback: FallbackRuntime | None
    limiter: LimiterRuntime | None
    bulkhead: BulkheadRuntime | None
    total_timeout: float | None
    attempt_timeout: float | None
    runner: ThreadRunner | None
    bounded_sync: bool
    bounded_async: bool
    retry: RetryRuntime | None
    breaker: BreakerRuntime | None
    # Set by `_link`.
    sync_entry: Step
    async_entry: Step

    def __init__(self, *, name: str | None = None, **options: Any) -> None:
        """`options`: the configs by `Policy` keyword (``timeout=Timeout(...)``, ...; None: left out)."""
        self.name = name
        self.options: Mapping[str, Any] = {"name": name, **options}
        #: The rows this policy was compiled from (a later `register_layer` does not change it).
        self.layers: tuple[Layer, ...] = _layers.LAYERS
        for layer in self.layers:
            if layer.compile is not None:
                layer.compile(self, self.options)
        self._link()

    def without_retry(self) -> CompiledPolicy:
        """The same runtime objects (one rate limiter, one bulkhead, one breaker) minus retry.

        For calls that must run once whatever the policy says (a non-idempotent HTTP request):
        they still count against the policy's shared limits.
        """
        once = copy.copy(self)
        once.retry = None
        once._link()  # re-point the deadline layer straight at the attempt
        return once

    def _link(self) -> None:
        """Point each configured layer at the next configured one, innermost first."""
        link = _END
        chain: list[str] = []
        for layer in reversed(self.layers):
            outer = layer.link(self, link) if layer.link is not None else None
            if outer is not None:
                link = outer
                chain.append(layer.name)
        #: The configured layers' names, outer to inner (for tests and `repr`).
        self.chain = tuple(reversed(chain))
        self.sync_entry, self.async_entry = link.sync, link.async_
