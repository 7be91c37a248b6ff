"""A circuit breaker whose state lives in Redis: one state for every process and host.

Why not pybreaker's `CircuitRedisStorage`: each of its operations is one command, but a
breaker's decisions are read-modify-write sequences across them. Two processes can both
count the failure that reaches the threshold and both open (and both notify); half-open
has no permit count, so every process lets its callers through at once; a success in
one process resets a count another is about to compare; `opened_at` has one-second
resolution and is compared with each host's own clock; its keys never expire and carry
no breaker name unless a namespace is set by hand (pybreaker#88); and it swallows every
Redis error into a log line per call, with no way back. Here every decision is one Lua
script run atomically by Redis, on one hash per breaker, timed by Redis' own clock:

``{prefix}:breaker:{name}:state`` fields: ``s`` state, ``f`` consecutive failures, ``o``
opened at (ms, Redis time), ``p`` half-open probes in flight, ``pa`` when the last probe
permit was issued, ``ok`` half-open successes, ``e`` epoch (bumped by every transition,
so a late report from an older half-open period changes nothing).

- A missing hash is a closed breaker with no failures: a process that starts joins what
  is stored and never writes until it has something to record (pybreaker#26).
- Every admission reads the state (one round trip), so a breaker opened anywhere makes
  every process fail fast on its next call; a closed breaker with no counted failures
  needs no second round trip after a success.
- Probe permits are leases: a probe whose process died without reporting frees its
  permit after `reset_timeout`, so half-open can never stick.
- Writes refresh a TTL of max(1 hour, 2 x reset_timeout): an abandoned breaker's hash
  expires, which reads as closed.
- The failure-*rate* window stays per process (each process judges the calls it saw and
  opens the shared breaker when its window trips): a shared window would cost a write per
  success on every call; consecutive failures are counted in Redis.
- Transition events and pybreaker listeners fire in the process that made the transition
  (once per transition, fleet-wide); other processes update their mirror silently.
- While Redis is unreachable the inherited in-process state decides (it starts from the
  last state seen in Redis); when Redis answers again the shared state wins.
"""

from __future__ import annotations

import logging
import math
from contextvars import ContextVar
from typing import Any

from resilient._kernel.clock import CLOCK
from resilient._kernel.errors import CircuitOpenError
from resilient._storage.config import resolve_storage
from resilient._storage.store import SharedStore, store_for
from resilient._strategies.breaker import (
    CLOSED,
    EVENT_REJECTED,
    HALF_OPEN,
    OPEN,
    BreakerRuntime,
    CircuitBreaker,
    _call_listener,
)
from resilient.instrumentation._hub import HUB

__all__ = ["DEFAULT_TTL", "SharedBreakerRuntime"]

DEFAULT_TTL = 3600.0
_STATES = {"closed": CLOSED, "open": OPEN, "half-open": HALF_OPEN}

# Redis time in milliseconds, in every script that needs "now".
_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# ARGV: reset_ms, half_open_max, ttl_ms -> {verdict 0 pass|1 probe|2 reject, state, epoch, failures, wait_ms, moved}
ADMIT = (
    """
local v = redis.call('HMGET', KEYS[1], 's', 'f', 'o', 'p', 'pa', 'e')
local state = v[1] or 'closed'
local epoch = tonumber(v[6]) or 0
if state == 'closed' then
  return {0, state, epoch, tonumber(v[2]) or 0, 0, 0}
end
"""
    + _NOW
    + """
local reset_ms = tonumber(ARGV[1])
local max = tonumber(ARGV[2])
local probes = tonumber(v[4]) or 0
local moved = 0
if state == 'open' then
  local wait = (tonumber(v[3]) or 0) + reset_ms - now
  if wait > 0 then
    return {2, state, epoch, 0, wait, 0}
  end
  state = 'half-open'
  epoch = epoch + 1
  probes = 0
  moved = 1
  redis.call('HSET', KEYS[1], 's', state, 'ok', 0, 'e', epoch)
elseif probes >= max and now - (tonumber(v[5]) or 0) >= reset_ms then
  probes = 0
end
if probes < max then
  redis.call('HSET', KEYS[1], 'p', probes + 1, 'pa', now)
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return {1, state, epoch, 0, 0, moved}
end
return {2, state, epoch, 0, math.min(reset_ms, 1000), moved}
"""
)

# ARGV: probe (0|1), epoch, success_threshold, ttl_ms -> {state, moved}
SUCCESS = """
local v = redis.call('HMGET', KEYS[1], 's', 'f', 'ok', 'p', 'e')
local state = v[1] or 'closed'
if ARGV[1] == '1' then
  local epoch = tonumber(v[5]) or 0
  if state ~= 'half-open' or epoch ~= tonumber(ARGV[2]) then
    return {state, 0}
  end
  local ok = (tonumber(v[3]) or 0) + 1
  if ok >= tonumber(ARGV[3]) then
    redis.call('HSET', KEYS[1], 's', 'closed', 'f', 0, 'ok', 0, 'p', 0, 'e', epoch + 1)
    redis.call('PEXPIRE', KEYS[1], ARGV[4])
    return {'closed', 1}
  end
  redis.call('HSET', KEYS[1], 'ok', ok, 'p', math.max((tonumber(v[4]) or 1) - 1, 0))
  return {state, 0}
end
if state == 'closed' and (tonumber(v[2]) or 0) > 0 then
  redis.call('HSET', KEYS[1], 'f', 0)
end
return {state, 0}
"""

# ARGV: probe (0|1), epoch, threshold (0: not counted here), force (0|1), ttl_ms -> {state, moved}
FAILURE = (
    """
local v = redis.call('HMGET', KEYS[1], 's', 'e')
local state = v[1] or 'closed'
local epoch = tonumber(v[2]) or 0
local trip = false
if ARGV[1] == '1' then
  trip = state == 'half-open' and epoch == tonumber(ARGV[2])
elseif state == 'closed' then
  if ARGV[4] == '1' then
    trip = true
  elseif tonumber(ARGV[3]) > 0 then
    trip = redis.call('HINCRBY', KEYS[1], 'f', 1) >= tonumber(ARGV[3])
    if not trip then
      redis.call('PEXPIRE', KEYS[1], ARGV[5])
    end
  end
end
if not trip then
  return {state, 0}
end
"""
    + _NOW
    + """
redis.call('HSET', KEYS[1], 's', 'open', 'f', 0, 'ok', 0, 'p', 0, 'o', now, 'e', epoch + 1)
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return {'open', 1}
"""
)

# ARGV: epoch -> 0
ABANDON = """
local v = redis.call('HMGET', KEYS[1], 's', 'p', 'e')
if v[1] == 'half-open' and tonumber(v[3]) == tonumber(ARGV[1]) and (tonumber(v[2]) or 0) > 0 then
  redis.call('HINCRBY', KEYS[1], 'p', -1)
end
return 0
"""

#: (epoch at admission, admitted by Redis?, did Redis hold failures to reset?)
_Ticket = tuple[int, bool, bool]
_LOCAL: _Ticket = (0, False, False)
#: (script name, script source, arguments)
_Plan = tuple[str, str, tuple[int, ...]]


def _text(value: Any) -> str:
    return value if isinstance(value, str) else bytes(value).decode()


class SharedBreakerRuntime(BreakerRuntime):
    """`BreakerRuntime` with its state in Redis; the inherited in-process state is the fallback."""

    shared = True
    _local_state: str = CLOSED

    def __init__(self, config: CircuitBreaker) -> None:
        self._store = store_for_config(config)
        super().__init__(config)
        self.key = f"{self._store.spec.key_prefix}:breaker:{config.name}:state"
        self._keys = (self.key,)
        reset_ms = max(math.ceil(config.reset_timeout * 1000), 1)
        self._ttl_ms = max(math.ceil(DEFAULT_TTL * 1000), 2 * reset_ms)
        self._admit_args = (reset_ms, config.half_open_max_calls, self._ttl_ms)
        self._threshold = 0 if config.failure_rate is not None else config.failure_threshold
        #: Which admission the current call holds; a context variable, so threads and tasks each see their own.
        self._ticket: ContextVar[_Ticket] = ContextVar(f"resilient.breaker.{config.name}", default=_LOCAL)
        self.reports_success = True

    @property
    def state(self) -> str:
        """The last state seen in Redis (the in-process state while degraded).

        Only a mirror: the drivers call `acquire` on every call of a shared breaker
        (`shared` is True), since another process may have opened it meanwhile.
        """
        return self._local_state

    @state.setter
    def state(self, value: str) -> None:
        self._local_state = value

    @property
    def _local_reports(self) -> bool:
        return self._window is not None or self._slow is not None or bool(self._pb._listeners)

    # ------------------------------------------------------------------ admission

    def acquire(self, label: str) -> bool:
        """Ask Redis (one round trip): pass, take a probe permit, or raise `CircuitOpenError`."""
        store = self._store
        if store.healthy:
            try:
                reply = store.script("admit", ADMIT)(keys=self._keys, args=self._admit_args)
            except store.errors as error:
                store.degrade(error, label)
            else:
                return self._admitted(reply, label)
        self._ticket.set(_LOCAL)
        return BreakerRuntime.acquire(self, label)

    async def aacquire(self, label: str) -> bool:
        """`acquire` through ``redis.asyncio``."""
        store = self._store
        if store.healthy:
            try:
                reply = await store.async_script("admit", ADMIT)(keys=self._keys, args=self._admit_args)
            except store.errors as error:
                store.degrade(error, label)
            else:
                return self._admitted(reply, label)
        self._ticket.set(_LOCAL)
        return BreakerRuntime.acquire(self, label)

    def _admitted(self, reply: list[Any], label: str) -> bool:
        verdict, state, epoch, failures, wait_ms, moved = reply
        self._ticket.set((int(epoch), True, int(failures) > 0))
        self.reports_success = int(failures) > 0 or self._local_reports
        self._observe(_text(state), moved=bool(moved), label=label)
        if verdict == 0:
            return False
        if verdict == 1:
            return True
        retry_after = int(wait_ms) / 1000
        HUB.emit(EVENT_REJECTED, label, logging.DEBUG, breaker=self.name, retry_after=round(retry_after, 3))
        raise CircuitOpenError(self.name, retry_after=retry_after, policy=label)

    def _observe(self, state_name: str, *, moved: bool, label: str, error: BaseException | None = None) -> None:
        """Mirror Redis' state here; report the transition when this call made it."""
        state = _STATES.get(state_name, CLOSED)
        if state is self._local_state:
            return
        with self._lock:
            transition = self._move_needs_lock(state, CLOCK.monotonic())
        if moved:
            self._notify(transition, label, error)

    # ------------------------------------------------------------------ outcomes

    def on_success(self, *, probe: bool, duration: float, label: str) -> None:
        """Record a success in Redis when it can change something (a probe, counted failures)."""
        if self._local(probe):
            BreakerRuntime.on_success(self, probe=probe, duration=duration, label=label)
            return
        plan = self._plan_success(probe, duration)
        self._finish(plan, self._run(plan, label), None, probe=probe, label=label)

    async def aon_success(self, *, probe: bool, duration: float, label: str) -> None:
        """`on_success` through ``redis.asyncio``."""
        if self._local(probe):
            BreakerRuntime.on_success(self, probe=probe, duration=duration, label=label)
            return
        plan = self._plan_success(probe, duration)
        self._finish(plan, await self._arun(plan, label), None, probe=probe, label=label)

    def _record_failure(self, error: BaseException | None, *, probe: bool, label: str) -> None:
        # Reached from the inherited `on_failure` (excluded errors go to `on_success`).
        if self._local(probe):
            BreakerRuntime._record_failure(self, error, probe=probe, label=label)
            return
        plan = self._plan_failure(probe)
        self._finish(plan, self._run(plan, label), error, probe=probe, label=label)

    async def aon_failure(self, error: BaseException, *, probe: bool, label: str) -> None:
        """`on_failure` through ``redis.asyncio``."""
        if not self._pb.is_system_error(error):
            await self.aon_success(probe=probe, duration=0.0, label=label)
        elif self._local(probe):
            BreakerRuntime._record_failure(self, error, probe=probe, label=label)
        else:
            plan = self._plan_failure(probe)
            self._finish(plan, await self._arun(plan, label), error, probe=probe, label=label)

    def _local(self, probe: bool) -> bool:
        """Does this outcome go to the in-process state?

        Yes when Redis did not admit the call, or for a non-probe when Redis has gone away
        since. A probe that Redis admitted is never counted locally (its lease expires).
        """
        return not self._ticket.get()[1] or (not probe and not self._store.healthy)

    def on_abandon(self, probe: bool) -> None:
        """A cancelled probe gives its permit back (were this lost, the lease expires)."""
        epoch, shared, _ = self._ticket.get()
        if not shared:
            BreakerRuntime.on_abandon(self, probe)
        elif probe:
            self._run(("abandon", ABANDON, (epoch,)), self.name)

    async def aon_abandon(self, probe: bool) -> None:
        """`on_abandon` through ``redis.asyncio``."""
        epoch, shared, _ = self._ticket.get()
        if not shared:
            BreakerRuntime.on_abandon(self, probe)
        elif probe:
            await self._arun(("abandon", ABANDON, (epoch,)), self.name)

    def _plan_success(self, probe: bool, duration: float) -> _Plan | None:
        """What Redis must hear about a success (None: nothing), after local bookkeeping."""
        if self._slow is not None and duration >= self._slow:
            return self._plan_failure(probe)
        epoch, _, dirty = self._ticket.get()
        if probe or (dirty and self._window is None):
            return ("success", SUCCESS, (int(probe), epoch, self._pb.success_threshold, self._ttl_ms))
        if self._window is not None:
            with self._lock:
                self._window.record(failed=False)
        return None

    def _plan_failure(self, probe: bool) -> _Plan:
        force = False
        window, rate = self._window, self._rate
        if not probe and window is not None and rate is not None:
            with self._lock:
                window.record(failed=True)
                force = window.calls >= self.config.minimum_calls and window.failures >= rate * window.calls
        epoch = self._ticket.get()[0]
        return ("failure", FAILURE, (int(probe), epoch, self._threshold, int(force), self._ttl_ms))

    def _run(self, plan: _Plan | None, label: str) -> list[Any] | None:
        if plan is None or not self._store.healthy:
            return None
        name, source, args = plan
        try:
            return self._store.script(name, source)(keys=self._keys, args=args)  # type: ignore[no-any-return]
        except self._store.errors as error:
            self._store.degrade(error, label)
            return None

    async def _arun(self, plan: _Plan | None, label: str) -> list[Any] | None:
        if plan is None or not self._store.healthy:
            return None
        name, source, args = plan
        try:
            return await self._store.async_script(name, source)(keys=self._keys, args=args)  # type: ignore[no-any-return]
        except self._store.errors as error:
            self._store.degrade(error, label)
            return None

    def _finish(
        self, plan: _Plan | None, reply: list[Any] | None, error: BaseException | None, *, probe: bool, label: str
    ) -> None:
        failed = plan is not None and plan[0] == "failure"
        if reply is not None:
            state, moved = reply
            self._observe(_text(state), moved=bool(moved), label=label, error=error)
        elif failed and not probe and self._window is None:
            # Redis failed this very report: count the failure in the local state instead.
            with self._lock:
                transition = self._count_failure_needs_lock(probe, CLOCK.monotonic())
            if transition is not None:
                self._notify(transition, label, error)
        listeners = self._pb.listeners
        if not failed:
            for listener in listeners:
                _call_listener(listener.success, self._pb)
        elif error is not None:
            for listener in listeners:
                _call_listener(listener.failure, self._pb, error)

    def reset(self) -> None:
        """Close the breaker here and in Redis (for tests and operators)."""
        BreakerRuntime.reset(self)
        store = self._store
        if store.healthy:
            try:
                store.client().delete(self.key)
            except store.errors as error:
                store.degrade(error, self.name)


def store_for_config(config: CircuitBreaker) -> SharedStore:
    """The store of a breaker config's Redis storage."""
    spec = resolve_storage("breaker.storage", config.storage)
    if spec is None:  # pragma: no cover - breaker_registry.new_breaker picks this class only for Redis
        raise ValueError("SharedBreakerRuntime needs a Redis storage")
    return store_for(spec)
