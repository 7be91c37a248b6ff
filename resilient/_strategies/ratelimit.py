"""Rate limit: admission before any work; reject with `retry_after`, or wait up to `max_wait`.

Limits are written in `limits` notation (``"100/second"``, ``"10/second;1000/hour"``) and
parsed by `limits`. Shared storages (``redis://``...) go through `limits`' strategies
(`SharedLimiterRuntime`, chosen at construction; see docs/redis.md).
The in-process default does NOT use `limits.storage.MemoryStorage`: a `hit` there costs
about 120x a raw function call (3 µs), more than the whole rest of a policy, so the three
algorithms are implemented in `_rate_windows` (O(1) work per call), run here under one
lock. Keys are kept in least-recently-used order: each new key first drops up to two
expired keys from the old end, and at `max_keys` evicts the least recently used one, so
per-key state cannot grow without bound and a new key costs O(1) whatever the churn.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

import limits
import limits.aio.strategies
import limits.strategies

from resilient._kernel.clock import CLOCK
from resilient._kernel.errors import RateLimitedError
from resilient._kernel.layer import Layer, Link
from resilient._kernel.validate import check_int, check_name, check_seconds
from resilient._storage.config import check_storage, resolve_storage
from resilient._storage.store import store_for
from resilient._strategies.rate_windows import WINDOWS, Window
from resilient.deadline import _DEADLINE
from resilient.instrumentation._hub import HUB

if TYPE_CHECKING:
    from collections.abc import Awaitable, Mapping

    from resilient._kernel.layer import AFn, Args, Fn, Kwargs, Now, Obs

__all__ = ["EVENT_REJECTED", "LAYER", "LimiterRuntime", "RateLimit", "RateLimitPolicy", "SharedLimiterRuntime"]

Algorithm = Literal["sliding-window", "fixed-window", "moving-window"]
ALGORITHMS: tuple[Algorithm, ...] = ("sliding-window", "fixed-window", "moving-window")
# Exact by default: the weighted two-window counter misjudges small quotas (a steady
# "1/minute" gets every other call rejected); the moving window holds at most `amount`
# timestamps per key, which is cheap for the few keys a decorator limits.
DEFAULT_ALGORITHM: Algorithm = "moving-window"
DEFAULT_MAX_KEYS = 100_000
# Expired keys dropped from the least recently used end per new key: more than one, so the
# table drains of idle state faster than new keys fill it.
_EXPIRED_PER_NEW_KEY = 2
EVENT_REJECTED = "ratelimit.rejected"

KeyFunction = Callable[..., str]


@dataclass(frozen=True, slots=True)
class RateLimit:
    """At most `limit` calls (limits notation, e.g. ``"100/second"``) per key.

    `algorithm`: ``"moving-window"`` (default; exact: at most `limit` calls in any window,
    remembers each admitted call, so up to `limit` timestamps per key), ``"sliding-window"``
    (weighted two-window counter, O(1) memory per key, approximate: too strict for quotas of
    a few calls) or ``"fixed-window"`` (cheapest, allows 2x bursts across a window edge). `key` receives the call's
    arguments and returns the key to limit by (default: one limit for all calls).
    `max_wait` > 0 waits for a slot (within any deadline) instead of rejecting at once.
    `storage`: ``"memory://"`` (per process) or a Redis URI shared by every process (None:
    the global default, see `resilient.configure_storage`). `name` identifies the limit in
    shared storage; unnamed shared limits with the same settings share one budget.
    """

    limit: str
    algorithm: Algorithm = DEFAULT_ALGORITHM
    key: KeyFunction | None = None
    max_wait: float = 0.0
    storage: str | None = field(default=None, repr=False)  # a URI may carry a password
    max_keys: int = DEFAULT_MAX_KEYS
    name: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.limit, str):
            raise TypeError(f"rate_limit.limit must be a string like '100/second', got {self.limit!r}")
        try:
            items = limits.parse_many(self.limit)
        except ValueError:
            raise ValueError(
                "rate_limit.limit must be limits notation such as '100/second' or "
                f"'10/second;1000/hour', got {self.limit!r}"
            ) from None
        if not items or any(item.amount < 1 for item in items):
            raise ValueError(
                f"rate_limit.limit must allow at least 1 call per window, e.g. '100/second', got {self.limit!r}"
            )
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"rate_limit.algorithm must be one of {ALGORITHMS}, got {self.algorithm!r}")
        if self.key is not None and not callable(self.key):
            raise TypeError(f"rate_limit.key must be callable or None, got {self.key!r}")
        object.__setattr__(self, "max_wait", check_seconds("rate_limit.max_wait", self.max_wait, allow_zero=True))
        check_int("rate_limit.max_keys", self.max_keys, minimum=1)
        check_storage("rate_limit.storage", self.storage)
        if self.name is not None:
            check_name("rate_limit.name", self.name)


RateLimit.__module__ = "resilient"


class LimiterRuntime:
    """The compiled limiter of one policy: per-key windows under one short-held lock.

    With a Redis storage, construction returns a `SharedLimiterRuntime` instead; this
    class's own methods stay the in-process path, untouched by shared storage.
    """

    #: True when admission goes to shared storage: async drivers then `await atry_acquire`.
    shared = False

    def __new__(cls, config: RateLimit, scope: str | None = None) -> LimiterRuntime:  # noqa: ARG004, PYI034 - picks a subclass
        if cls is LimiterRuntime and resolve_storage("rate_limit.storage", config.storage) is not None:
            return object.__new__(SharedLimiterRuntime)
        return object.__new__(cls)

    def __init__(self, config: RateLimit, scope: str | None = None) -> None:  # noqa: ARG002 - used when shared
        self.config = config
        self._items = [(item.amount, float(item.get_expiry())) for item in limits.parse_many(config.limit)]
        self._window_type = WINDOWS[config.algorithm]
        #: No wait is longer than the longest period (each window admits within its period).
        self._longest = max(period for _, period in self._items)
        self._key = config.key
        self.keyed = config.key is not None
        self._single = len(self._items) == 1
        self._max_wait = config.max_wait
        self._max_keys = config.max_keys
        #: Least recently used first: a hit moves its key to the end (keyed limiters only).
        self._keys: OrderedDict[str, list[Window]] = OrderedDict()
        self._lock = threading.Lock()

    def key_of(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        """The limiting key of a call (one shared key without a key function)."""
        return "" if self._key is None else str(self._key(*args, **kwargs))

    def try_acquire(self, key: str, now: float | None = None) -> float:
        """Take a slot now: 0.0 when admitted, else seconds until one may free up.

        `now`: the caller's clock reading, if it has one (saves reading it again).
        """
        if now is None:
            now = CLOCK.monotonic()
        lock = self._lock
        lock.acquire()  # not `with`: on the hot path the protocol costs more than the lock
        try:
            windows = self._keys.get(key)
            if windows is None:
                windows = self._new_key_needs_lock(key, now)
            elif self.keyed:
                self._keys.move_to_end(key)
            if self._single:
                wait = windows[0].admit(now)
            else:
                wait = max(window.check(now) for window in windows)
                if not wait:
                    for window in windows:
                        window.commit(now)
        finally:
            lock.release()
        # Round up to the microsecond: float error must never make "wait retry_after" too short.
        return min(math.ceil(wait * 1e6) / 1e6, self._longest) if wait else 0.0

    async def atry_acquire(self, key: str) -> float:
        """`try_acquire` for async drivers (in memory it does no I/O, so it is the same)."""
        return self.try_acquire(key)

    def _new_key_needs_lock(self, key: str, now: float) -> list[Window]:
        """Make room (O(1): at most three entries visited), then add the key at the recent end."""
        keys = self._keys
        for _ in range(_EXPIRED_PER_NEW_KEY):  # idle state expires as new keys arrive
            if not keys:
                break
            oldest, old_windows = next(iter(keys.items()))
            if any(window.expires > now for window in old_windows):
                break
            del keys[oldest]
        if len(keys) >= self._max_keys:
            keys.popitem(last=False)  # full of live keys: the least recently used one goes
        windows = [self._window_type(amount, period) for amount, period in self._items]
        keys[key] = windows
        return windows

    def state(self, key: str) -> list[tuple[int, float]]:
        """(calls still allowed, seconds until reset) per limit item for `key`, read-only.

        Empty for a key never seen, and for shared storages (their windows live in Redis).
        """
        now = CLOCK.monotonic()
        with self._lock:
            windows = self._keys.get(key)
            return [] if windows is None else [window.state(now) for window in windows]

    @property
    def key_count(self) -> int:
        """How many keys hold state now (bounded by `max_keys`)."""
        return len(self._keys)

    def wait_budget(self, deadline: float | None) -> float:
        """How long a caller may wait for a slot: `max_wait`, clamped to the deadline."""
        if deadline is None:
            return self._max_wait
        return min(self._max_wait, max(deadline - CLOCK.monotonic(), 0.0))

    def reject(self, key: str, retry_after: float, label: str) -> RateLimitedError:
        """Report and build the rejection."""
        HUB.emit(EVENT_REJECTED, label, logging.INFO, limit=self.config.limit, retry_after=round(retry_after, 3))
        return RateLimitedError(self.config.limit, retry_after=retry_after, key=key, policy=label)


_SYNC_STRATEGIES: dict[str, Any] = {
    "fixed-window": limits.strategies.FixedWindowRateLimiter,
    "sliding-window": limits.strategies.SlidingWindowCounterRateLimiter,
    "moving-window": limits.strategies.MovingWindowRateLimiter,
}
_ASYNC_STRATEGIES: dict[str, Any] = {
    "fixed-window": limits.aio.strategies.FixedWindowRateLimiter,
    "sliding-window": limits.aio.strategies.SlidingWindowCounterRateLimiter,
    "moving-window": limits.aio.strategies.MovingWindowRateLimiter,
}
_MIN_RETRY_AFTER = 0.001


class SharedLimiterRuntime(LimiterRuntime):
    """A limiter whose windows live in Redis, through `limits`' strategies and Lua scripts.

    Each limit item is one atomic `hit` (a Lua script: one round trip); a rejection costs
    one more read for `retry_after`. Several items (``"10/second;1000/hour"``) are hit in
    order and the first full one rejects, so earlier items keep that hit (as `limits` and
    flask-limiter do). Keys: ``{prefix}:ratelimit:LIMITER/{scope}/{algorithm}/{key}/...``
    where scope is `RateLimit.name`, else the policy's name, else ``"default"``. While the
    storage is degraded the inherited in-process windows decide: per process, so a fleet
    of N processes admits up to N times the limit until Redis answers again.
    """

    shared = True

    def __init__(self, config: RateLimit, scope: str | None = None) -> None:
        super().__init__(config)
        spec = resolve_storage("rate_limit.storage", config.storage)
        if spec is None:  # pragma: no cover - __new__ only picks this class for Redis
            raise ValueError("SharedLimiterRuntime needs a Redis storage")
        self._store = store_for(spec)
        self._algorithm = config.algorithm
        self._limit_items = limits.parse_many(config.limit)
        self.scope = config.name or scope or "default"
        self._ids = (self.scope, config.algorithm)

    def try_acquire(self, key: str, now: float | None = None) -> float:
        """One atomic hit per limit item in Redis; in-process windows while Redis is down."""
        store = self._store
        if store.healthy:
            try:
                return self._hit(store.strategy(self._algorithm, _SYNC_STRATEGIES), key)
            except store.errors as error:
                store.degrade(error, self.scope)
        return LimiterRuntime.try_acquire(self, key, now)

    async def atry_acquire(self, key: str) -> float:
        """`try_acquire` through ``redis.asyncio``: the event loop is never blocked."""
        store = self._store
        if store.healthy:
            try:
                return await self._ahit(store.async_strategy(self._algorithm, _ASYNC_STRATEGIES), key)
            except store.errors as error:
                store.degrade(error, self.scope)
        return LimiterRuntime.try_acquire(self, key)

    def _hit(self, strategy: Any, key: str) -> float:
        ids = (*self._ids, key)
        for item in self._limit_items:
            if not strategy.hit(item, *ids):
                return _retry_after(strategy.get_window_stats(item, *ids).reset_time, item.get_expiry())
        return 0.0

    async def _ahit(self, strategy: Any, key: str) -> float:
        ids = (*self._ids, key)
        for item in self._limit_items:
            if not await strategy.hit(item, *ids):
                return _retry_after((await strategy.get_window_stats(item, *ids)).reset_time, item.get_expiry())
        return 0.0


def _retry_after(reset_time: float, period: float) -> float:
    """Seconds until `limits` says the window frees a slot, rounded up to the microsecond.

    Never more than the item's period: `limits`' sliding-window counter can report a reset
    beyond it, and hosts' clocks differ from Redis'.
    """
    return min(math.ceil(max(reset_time - time.time(), _MIN_RETRY_AFTER) * 1e6) / 1e6, float(period))


# ---------------------------------------------------------------- the layer: rate limit

_current_deadline = _DEADLINE.get


class RateLimitPolicy(Protocol):
    """What the rate limit compiles into the policy."""

    limiter: LimiterRuntime | None


def _compile(cp: RateLimitPolicy, options: Mapping[str, Any]) -> None:
    config: RateLimit | None = options.get("rate_limit")
    # A shared (Redis) limit is keyed by RateLimit.name, else the policy's name.
    cp.limiter = LimiterRuntime(config, scope=options.get("name")) if config else None


def _link(cp: RateLimitPolicy, inner: Link) -> Link | None:
    """Admission by rate: take a slot, or wait for one within `max_wait` (clamped to the deadline)."""
    limiter = cp.limiter
    if limiter is None:
        return None
    after_sync, after_async = inner.sync, inner.async_
    keyed, shared = limiter.keyed, limiter.shared

    def rate_limit_sync(
        cp: RateLimitPolicy, label: str, fn: Fn, args: Args, kwargs: Kwargs, obs: Obs, now: Now = None
    ) -> Any:
        key = limiter.key_of(args, kwargs) if keyed else ""
        now = CLOCK.monotonic()
        wait = limiter.try_acquire(key, now)
        if wait:
            _wait_for_rate_slot_sync(limiter, key, wait, label)
            now = None
        return after_sync(cp, label, fn, args, kwargs, obs, now)

    def rate_limit_async(
        cp: RateLimitPolicy, label: str, fn: AFn, args: Args, kwargs: Kwargs, obs: Obs, now: Now = None
    ) -> Awaitable[Any]:
        # Not a coroutine: with a slot free it hands back the next layer's awaitable, so
        # admission costs no coroutine of its own; only a wait (or Redis) needs one.
        key = limiter.key_of(args, kwargs) if keyed else ""
        if shared:
            return admit_then_async(cp, label, fn, args, kwargs, obs, now, key, None)
        now = CLOCK.monotonic()
        wait = limiter.try_acquire(key, now)
        if wait:
            return admit_then_async(cp, label, fn, args, kwargs, obs, None, key, wait)
        return after_async(cp, label, fn, args, kwargs, obs, now)  # type: ignore[no-any-return]

    async def admit_then_async(
        cp: RateLimitPolicy, label: str, fn: AFn, args: Args, kwargs: Kwargs, obs: Obs, now: Now, key: str, wait: Now
    ) -> Any:
        if wait is None:  # a Redis round trip: the reading would be stale after it
            wait = await limiter.atry_acquire(key)
        if wait:
            await _wait_for_rate_slot_async(limiter, key, wait, label)
            now = None
        return await after_async(cp, label, fn, args, kwargs, obs, now)

    return Link(rate_limit_sync, rate_limit_async)


def _wait_for_rate_slot_sync(limiter: LimiterRuntime, key: str, wait: float, label: str) -> None:
    """Sleep until a slot frees up; `max_wait` (clamped to the deadline) bounds the whole wait."""
    budget = limiter.wait_budget(_current_deadline())
    while wait:
        if wait > budget:
            raise limiter.reject(key, wait, label)
        CLOCK.sleep(wait)
        budget -= wait
        wait = limiter.try_acquire(key)


async def _wait_for_rate_slot_async(limiter: LimiterRuntime, key: str, wait: float, label: str) -> None:
    budget = limiter.wait_budget(_current_deadline())
    while wait:
        if wait > budget:
            raise limiter.reject(key, wait, label)
        await CLOCK.asleep(wait)
        budget -= wait
        wait = await limiter.atry_acquire(key) if limiter.shared else limiter.try_acquire(key)


LAYER = Layer("rate_limit", _link, _compile)
