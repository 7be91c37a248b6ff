"""Circuit breaker: pybreaker's state, storage and listeners; our own admission and locking.

pybreaker holds its lock for the whole protected call (eight threads sleeping 0.1 s
through one breaker take 0.8 s), supports asyncio only through tornado, counts only
consecutive failures and lets every caller through when half-open. So the call never
goes through `pybreaker.CircuitBreaker.call`: this module decides admission with
non-blocking methods (`acquire`, `on_success`, `on_failure`, `on_abandon`), holds its
lock only for counter updates and transitions, and keeps the state in pybreaker's
storage and objects so pybreaker listeners, `current_state` and storages keep working.
Listeners run after the lock is released, never under it.

With a Redis `storage` the registry (`breaker_registry.new_breaker`) builds a
`SharedBreakerRuntime` instead (`_storage/shared_breaker.py`, a subclass; this module never imports it):
state shared through atomic Lua scripts, this module's in-process state as the fallback
while Redis is unreachable. This module's methods stay the in-process path.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pybreaker
from pybreaker import CircuitBreaker as PyBreaker
from pybreaker import CircuitBreakerListener

from resilient._kernel.clock import CLOCK
from resilient._kernel.errors import CircuitOpenError
from resilient._kernel.validate import check_int, check_name, check_ratio, check_seconds
from resilient._storage.config import check_storage, resolve_storage
from resilient.instrumentation._hub import HUB

__all__ = [
    "CLOSED",
    "HALF_OPEN",
    "OPEN",
    "BreakerRuntime",
    "CircuitBreaker",
    "is_shared",
]

DEFAULT_FAILURE_THRESHOLD = 5
DEFAULT_RESET_TIMEOUT = 30.0
DEFAULT_WINDOW = 100
DEFAULT_MINIMUM_CALLS = 10
DEFAULT_HALF_OPEN_MAX_CALLS = 1
DEFAULT_SUCCESS_THRESHOLD = 1

CLOSED: str = pybreaker.STATE_CLOSED
OPEN: str = pybreaker.STATE_OPEN
HALF_OPEN: str = pybreaker.STATE_HALF_OPEN
_STATES = {CLOSED: CLOSED, OPEN: OPEN, HALF_OPEN: HALF_OPEN}  # interned: compared with `is`

EVENT_OPENED = "breaker.opened"
EVENT_HALF_OPENED = "breaker.half_opened"
EVENT_CLOSED = "breaker.closed"
EVENT_REJECTED = "breaker.rejected"
_TRANSITION_EVENTS = {
    OPEN: (EVENT_OPENED, logging.WARNING),
    HALF_OPEN: (EVENT_HALF_OPENED, logging.INFO),
    CLOSED: (EVENT_CLOSED, logging.INFO),
}

Exclusion = type[BaseException] | Callable[[BaseException], bool]


@dataclass(frozen=True, slots=True, kw_only=True)
class CircuitBreaker:
    """Fail fast while a dependency is down; one shared instance per `name` in the process.

    Opens after `failure_threshold` consecutive failures, or — when `failure_rate` is set
    — when the failure rate over the last `window` calls reaches it (once at least
    `minimum_calls` were seen). A call slower than `slow_call_duration` counts as a
    failure. After `reset_timeout` seconds it lets `half_open_max_calls` probes through
    (everyone else still fails fast) and closes after `success_threshold` successful
    probes. `exclude` lists business errors that do not count (pybreaker semantics).
    `storage`: ``"memory://"`` (per process) or a Redis URI that shares the state with
    every process using the same name (None: the global default, see
    `resilient.configure_storage`; a `pybreaker` breaker keeps its own storage).
    """

    name: str
    failure_threshold: int = DEFAULT_FAILURE_THRESHOLD
    failure_rate: float | None = None
    window: int = DEFAULT_WINDOW
    minimum_calls: int = DEFAULT_MINIMUM_CALLS
    slow_call_duration: float | None = None
    reset_timeout: float = DEFAULT_RESET_TIMEOUT
    half_open_max_calls: int = DEFAULT_HALF_OPEN_MAX_CALLS
    success_threshold: int = DEFAULT_SUCCESS_THRESHOLD
    exclude: tuple[Exclusion, ...] = ()
    listeners: tuple[CircuitBreakerListener, ...] = ()
    storage: str | None = field(default=None, repr=False)  # a URI may carry a password
    pybreaker: PyBreaker | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        check_name("breaker.name", self.name)
        check_int("breaker.failure_threshold", self.failure_threshold, minimum=1)
        if self.failure_rate is not None:
            check_ratio("breaker.failure_rate", self.failure_rate, allow_zero=False)
        check_int("breaker.window", self.window, minimum=1)
        check_int("breaker.minimum_calls", self.minimum_calls, minimum=1)
        if self.window < self.minimum_calls:
            # The window counts calls (the last `window` outcomes), so it never holds more
            # than `window` of them: below `minimum_calls` the rate would never be judged.
            raise ValueError(
                f"breaker.window must be >= breaker.minimum_calls ({self.minimum_calls}): the window holds "
                f"the last `window` calls and the rate is judged only once `minimum_calls` were seen, "
                f"got {self.window!r}"
            )
        if self.slow_call_duration is not None:
            object.__setattr__(
                self, "slow_call_duration", check_seconds("breaker.slow_call_duration", self.slow_call_duration)
            )
        object.__setattr__(self, "reset_timeout", check_seconds("breaker.reset_timeout", self.reset_timeout))
        check_int("breaker.half_open_max_calls", self.half_open_max_calls, minimum=1)
        check_int("breaker.success_threshold", self.success_threshold, minimum=1)
        object.__setattr__(self, "exclude", tuple(self.exclude))
        object.__setattr__(self, "listeners", tuple(self.listeners))
        for item in self.exclude:
            if not callable(item):
                raise TypeError(f"breaker.exclude items must be exception types or predicates, got {item!r}")
        check_storage("breaker.storage", self.storage)
        if self.pybreaker is not None and self.storage not in {None, "memory://"}:
            raise ValueError(
                "breaker.storage cannot be combined with breaker.pybreaker (the pybreaker breaker's own "
                f"storage keeps its state), got storage={self.storage!r}"
            )

    @classmethod
    def from_pybreaker(cls, breaker: PyBreaker, *, name: str | None = None) -> CircuitBreaker:
        """Drive an existing `pybreaker.CircuitBreaker` (its storage, listeners, thresholds)."""
        return cls(
            name=name or breaker.name or f"pybreaker-{id(breaker):x}",
            failure_threshold=breaker.fail_max,
            reset_timeout=float(breaker.reset_timeout),
            success_threshold=breaker.success_threshold,
            pybreaker=breaker,
        )


CircuitBreaker.__module__ = "resilient"


class _Window:
    """The outcomes of the last `size` calls, with a running failure count."""

    __slots__ = ("_buffer", "_index", "calls", "failures")

    def __init__(self, size: int) -> None:
        self._buffer = [False] * size
        self._index = 0
        self.calls = 0
        self.failures = 0

    def record(self, *, failed: bool) -> None:
        buffer = self._buffer
        index = self._index
        if self.calls == len(buffer):
            self.failures -= buffer[index]
        else:
            self.calls += 1
        buffer[index] = failed
        self.failures += failed
        self._index = (index + 1) % len(buffer)

    def clear(self) -> None:
        self._buffer = [False] * len(self._buffer)
        self._index = 0
        self.calls = 0
        self.failures = 0


_Transition = tuple[str, str, Any, Any]


class BreakerRuntime:
    """The live breaker behind a name: admission decisions plus pybreaker-kept state."""

    #: True when the state lives in Redis: async drivers then await the `a...` twins.
    shared = False
    #: True while an attempt needs nothing from this breaker but to hear of a failure:
    #: closed, in process, untimed, no success to record. The retry layer then calls the
    #: function itself and reports a failure with `on_failure` (one call fewer per attempt).
    #: Kept current by `_refresh_quiet` wherever the state or `reports_success` changes.
    quiet = False

    def __init__(self, config: CircuitBreaker) -> None:
        self.config = config
        self.name = config.name
        self._pb = config.pybreaker or pybreaker.CircuitBreaker(
            fail_max=config.failure_threshold,
            reset_timeout=config.reset_timeout,
            success_threshold=config.success_threshold,
            exclude=list(config.exclude),
            listeners=list(config.listeners),
            name=config.name,
        )
        self._storage = self._pb._state_storage
        self._lock = threading.Lock()
        self._probes = 0
        #: Bumped by every transition: a probe reports only into the half-open period that
        #: admitted it (the period it saw is kept per call, in `_probe_period`).
        self._period = 0
        self._probe_period: ContextVar[int] = ContextVar(f"resilient.breaker.{config.name}.probe", default=-1)
        self._rate = config.failure_rate
        self._window = _Window(config.window) if self._rate is not None else None
        self._half_open_max = config.half_open_max_calls
        self._slow = config.slow_call_duration
        self.timed = self._slow is not None
        self._failures = 0
        # Join the stored state instead of overwriting it (pybreaker#26).
        self.state: str = _STATES.get(self._pb.current_state, CLOSED)
        self._opened_at = self._opened_monotonic()
        #: False while a success needs no bookkeeping (closed, no failures counted, nothing
        #: listening): the attempt and retry layers then skip `on_success` entirely.
        self.reports_success = True
        self._refresh_reports()

    def _refresh_reports(self) -> None:
        self.reports_success = (
            self._window is not None or self._slow is not None or bool(self._pb._listeners) or self._failures > 0
        )
        self._refresh_quiet()

    def _refresh_quiet(self) -> None:
        self.quiet = self.state is CLOSED and not (self.reports_success or self.timed or self.shared)

    def _opened_monotonic(self) -> float:
        opened = self._storage.opened_at
        now = CLOCK.monotonic()
        if self.state is not OPEN or opened is None:
            return now
        if opened.tzinfo is None:
            opened = opened.replace(tzinfo=UTC)
        return now - max((datetime.now(UTC) - opened).total_seconds(), 0.0)

    def adopt(self, fresh: BreakerRuntime) -> None:
        """Take a full definition's runtime in place (a placeholder made by a bare name).

        The object stays the one every policy holds; it becomes `fresh`, built by the registry
        for the definition (another class when it shares state in Redis, which then wins),
        keeping an open state (and when it opened) and the consecutive failures counted so far.
        """
        with self._lock:
            state, opened_at, failures = self.state, self._opened_at, self._failures
        vars(self).clear()
        vars(self).update(vars(fresh))
        self.__class__ = type(fresh)
        if self.shared:
            return
        with self._lock:
            if state is not CLOSED:
                self._move_needs_lock(OPEN, CLOCK.monotonic())
                self._opened_at = opened_at
            elif failures:
                self._failures = failures
                self._refresh_reports()

    @property
    def pybreaker(self) -> PyBreaker:
        """The pybreaker object holding this breaker's state and listeners."""
        return self._pb

    def acquire(self, label: str) -> bool:
        """Admit a call (True when it is a half-open probe) or raise `CircuitOpenError`."""
        if self.state is CLOSED:
            return False
        now = CLOCK.monotonic()
        with self._lock:
            verdict, transition = self._admit_needs_lock(now)
        if transition is not None:
            self._notify(transition, label)
        if verdict is True or verdict is False:
            return verdict
        HUB.emit(EVENT_REJECTED, label, logging.DEBUG, breaker=self.name, retry_after=round(verdict, 3))
        raise CircuitOpenError(self.name, retry_after=verdict, policy=label)

    def _admit_needs_lock(self, now: float) -> tuple[bool | float, _Transition | None]:
        transition = None
        if self.state is OPEN:
            wait = self._opened_at + self._pb.reset_timeout - now
            if wait > 0:
                return wait, None
            transition = self._move_needs_lock(HALF_OPEN, now)
        if self.state is HALF_OPEN:
            if self._probes >= self._half_open_max:
                return min(float(self._pb.reset_timeout), 1.0), transition
            self._probes += 1
            self._probe_period.set(self._period)
            return True, transition
        return False, transition

    def on_success(self, *, probe: bool, duration: float, label: str) -> None:
        """Record a successful call (a slow one counts as a failure)."""
        if self._slow is not None and duration >= self._slow:
            self._record_failure(None, probe=probe, label=label)
            return
        transition = None
        if probe:
            with self._lock:
                if self._stale_needs_lock():
                    return  # its half-open period already ended: that period's outcome stands
                self._probes -= 1
                self._storage.increment_success_counter()
                if self.state is HALF_OPEN and self._storage.success_counter >= self._pb.success_threshold:
                    transition = self._move_needs_lock(CLOSED, CLOCK.monotonic())
        elif self._window is not None:
            with self._lock:
                self._window.record(failed=False)
        elif self._failures:
            with self._lock:
                self._failures = 0
                self._storage.reset_counter()
                self._refresh_reports()
        if transition is not None:
            self._notify(transition, label)
        for listener in self._pb._listeners:
            _call_listener(listener.success, self._pb)

    def on_failure(self, error: BaseException, *, probe: bool, label: str) -> None:
        """Record a failed call; business errors in `exclude` count as successes."""
        if not self._pb.is_system_error(error):
            self.on_success(probe=probe, duration=0.0, label=label)
            return
        self._record_failure(error, probe=probe, label=label)

    def on_abandon(self, probe: bool) -> None:
        """A call ended without an outcome (cancelled): give its probe slot back."""
        if probe:
            with self._lock:
                if not self._stale_needs_lock():
                    self._probes -= 1

    def _stale_needs_lock(self) -> bool:
        """Was the current call's probe admitted in a half-open period that has since ended?"""
        return self.state is not HALF_OPEN or self._probe_period.get() != self._period

    def _record_failure(self, error: BaseException | None, *, probe: bool, label: str) -> None:
        now = CLOCK.monotonic()
        with self._lock:
            transition = self._count_failure_needs_lock(probe, now)
        if transition is not None:
            self._notify(transition, label, error)
        if error is not None:
            for listener in self._pb.listeners:
                _call_listener(listener.failure, self._pb, error)

    def _count_failure_needs_lock(self, probe: bool, now: float) -> _Transition | None:
        if probe:
            if self._stale_needs_lock():
                return None
            self._probes -= 1
            return self._move_needs_lock(OPEN, now)
        if self.state is not CLOSED:
            return None
        self._storage.increment_counter()
        if self._window is not None and self._rate is not None:
            self._window.record(failed=True)
            window = self._window
            tripped = window.calls >= self.config.minimum_calls and window.failures >= self._rate * window.calls
        else:
            self._failures += 1
            self.reports_success = True
            self._refresh_quiet()
            tripped = self._failures >= self._pb.fail_max
        return self._move_needs_lock(OPEN, now) if tripped else None

    def _move_needs_lock(self, new: str, now: float) -> _Transition:
        """Change state in our mirror, pybreaker's storage and its cached state object."""
        old = self.state
        self._period += 1
        storage = self._storage
        storage.reset_success_counter()
        if new is OPEN:
            storage.opened_at = datetime.now(UTC)
            self._opened_at = now
        elif new is CLOSED:
            storage.reset_counter()
            self._failures = 0
            self._refresh_reports()
            if self._window is not None:
                self._window.clear()
        else:
            self._probes = 0
        storage.state = new
        self.state = new
        self._refresh_quiet()
        old_object = self._pb._state
        # notify=False: pybreaker would call listeners under its lock; we do it after ours.
        new_object = self._pb._create_new_state(new, prev_state=old_object, notify=False)
        self._pb._state = new_object
        return old, new, old_object, new_object

    def _notify(self, transition: _Transition, label: str, error: BaseException | None = None) -> None:
        old, new, old_object, new_object = transition
        event, level = _TRANSITION_EVENTS[new]
        fields: dict[str, Any] = {"breaker": self.name, "previous": old}
        if new is OPEN:
            fields["reset_timeout"] = float(self._pb.reset_timeout)
        HUB.emit(event, label, level, error, **fields)
        for listener in self._pb.listeners:
            _call_listener(listener.state_change, self._pb, old_object, new_object)

    async def aacquire(self, label: str) -> bool:
        """`acquire` for async drivers (in memory it does no I/O, so it is the same)."""
        return self.acquire(label)

    async def aon_success(self, *, probe: bool, duration: float, label: str) -> None:
        """`on_success` for async drivers."""
        self.on_success(probe=probe, duration=duration, label=label)

    async def aon_failure(self, error: BaseException, *, probe: bool, label: str) -> None:
        """`on_failure` for async drivers."""
        self.on_failure(error, probe=probe, label=label)

    async def aon_abandon(self, probe: bool) -> None:
        """`on_abandon` for async drivers."""
        self.on_abandon(probe)

    def reset(self) -> None:
        """Close the breaker and forget every count (for tests and operators)."""
        with self._lock:
            transition = self._move_needs_lock(CLOSED, CLOCK.monotonic()) if self.state is not CLOSED else None
            self._failures = 0
            self._probes = 0
            self._storage.reset_counter()
            self._refresh_reports()
        if transition is not None:
            self._notify(transition, self.name)


def is_shared(config: CircuitBreaker) -> bool:
    """Does this config keep its state in Redis (a Redis `storage`, no pybreaker object of its own)?"""
    return config.pybreaker is None and resolve_storage("breaker.storage", config.storage) is not None


def _call_listener(method: Callable[..., Any], *args: Any) -> None:
    try:
        method(*args)
    except Exception:
        logging.getLogger("resilient.breaker").exception("pybreaker listener %r failed", method)
