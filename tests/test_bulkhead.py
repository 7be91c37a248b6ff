"""Bulkhead: `max_concurrent` calls in flight, FIFO waiters bounded by `max_wait`, one capacity.

Calls are held inside the protected function with `threading.Event` (sync callers, run in
threads) or `asyncio.Event` (async callers, run as tasks); the test learns that a caller
is queued from the bulkhead's own queue, so nothing here sleeps to synchronise.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any, SupportsIndex, cast

import pytest

from resilient import Bulkhead, BulkheadFullError, Policy, ResilienceError, deadline, instrumentation
from resilient._strategies import bulkhead as _bulkhead
from resilient._strategies.bulkhead import BulkheadRuntime

LONG_WAIT = 30.0  # a wait the tests end long before (by releasing); only a hung test reaches it


class NotifyingQueue(deque[Any]):
    """The bulkhead's waiter queue, instrumented so a test can wait until callers are queued."""

    def __init__(self) -> None:
        super().__init__()
        self.changed = threading.Condition()

    def append(self, item: Any) -> None:
        """Queue a waiter and wake whoever watches the queue length."""
        with self.changed:
            super().append(item)
            self.changed.notify_all()

    def wait_for_length(self, length: int) -> None:
        """Block the calling thread until `length` callers are queued."""
        with self.changed:
            assert self.changed.wait_for(lambda: len(self) >= length, timeout=LONG_WAIT)


def runtime_of(policy: Policy) -> BulkheadRuntime:
    """The policy's compiled bulkhead, with an observable waiter queue."""
    runtime = policy._compiled.bulkhead
    assert runtime is not None
    if not isinstance(runtime._waiters, NotifyingQueue):
        runtime._waiters = NotifyingQueue()
    return runtime


async def queued(runtime: BulkheadRuntime, length: int) -> None:
    """Return once `length` callers wait in the bulkhead's queue."""
    await asyncio.to_thread(cast("NotifyingQueue", runtime._waiters).wait_for_length, length)


class Side:
    """One kind of caller (sync in threads, or async as tasks) of a shared policy."""

    def __init__(self, policy: Policy, kind: str) -> None:
        self.kind = kind
        self.entered: list[str] = []
        self._sync_gate = threading.Event()
        self._async_gate = asyncio.Event()
        self._sync_inside = threading.Semaphore(0)
        self._async_inside = asyncio.Semaphore(0)
        self._sync_fn = policy(self._body)
        self._async_fn = policy(self._abody)

    def _body(self, name: str, hold: bool) -> str:
        self.entered.append(name)
        if hold:
            self._sync_inside.release()
            assert self._sync_gate.wait(timeout=LONG_WAIT)
        return name

    async def _abody(self, name: str, hold: bool) -> str:
        self.entered.append(name)
        if hold:
            self._async_inside.release()
            await self._async_gate.wait()
        return name

    def start(self, name: str, *, hold: bool = False) -> asyncio.Task[str]:
        """Begin a call in the background (a thread for sync, a task for async)."""
        if self.kind == "sync":
            return asyncio.create_task(asyncio.to_thread(self._sync_fn, name, hold))
        return asyncio.create_task(self._async_fn(name, hold))

    async def hold(self, name: str = "holder") -> asyncio.Task[str]:
        """Start a call that takes a slot and stays inside until `release`; return once inside."""
        task = self.start(name, hold=True)
        if self.kind == "sync":
            assert await asyncio.to_thread(self._sync_inside.acquire, timeout=LONG_WAIT)
        else:
            await self._async_inside.acquire()
        return task

    async def call_now(self, name: str = "extra") -> str:
        """Call in the foreground; only for calls that cannot block (max_wait=0 or a slot free)."""
        if self.kind == "sync":
            return self._sync_fn(name, False)
        return await self._async_fn(name, False)

    def release(self) -> None:
        """Let every held call finish."""
        self._sync_gate.set()
        self._async_gate.set()


@pytest.fixture(params=["sync", "async"])
def kind(request: pytest.FixtureRequest) -> str:
    """Run a scenario with sync callers (threads) and with async callers (tasks)."""
    return cast("str", request.param)


async def test_rejects_at_once_when_full_without_max_wait(kind: str, events: list[instrumentation.Event]) -> None:
    """With max_wait=0, max_concurrent calls run and the next one is rejected immediately."""
    policy = Policy(name="db", bulkhead=Bulkhead(max_concurrent=2))
    runtime = runtime_of(policy)
    side = Side(policy, kind)
    holders = [await side.hold("first"), await side.hold("second")]
    assert runtime.in_use == 2
    with pytest.raises(BulkheadFullError) as caught:
        await side.call_now()
    assert isinstance(caught.value, ResilienceError)
    assert caught.value.max_concurrent == 2
    assert caught.value.max_wait == 0.0
    assert caught.value.policy == "db"
    assert "extra" not in side.entered
    side.release()
    assert sorted(await asyncio.gather(*holders)) == ["first", "second"]
    assert runtime.in_use == 0
    rejected = [event for event in events if event.name == "bulkhead.rejected"]
    assert len(rejected) == 1
    assert rejected[0].policy == "db"
    assert rejected[0].fields["max_concurrent"] == 2


async def test_a_waiter_gets_the_slot_when_it_is_released(kind: str) -> None:
    """With max_wait > 0, a caller waits while the bulkhead is full and runs once a slot frees up."""
    policy = Policy(bulkhead=Bulkhead(max_concurrent=1, max_wait=LONG_WAIT))
    runtime = runtime_of(policy)
    side = Side(policy, kind)
    holder = await side.hold()
    waiter = side.start("waiter")
    await queued(runtime, 1)
    assert side.entered == ["holder"]
    side.release()
    assert await waiter == "waiter"
    assert await holder == "holder"
    assert runtime.in_use == 0


async def test_waiters_are_served_in_arrival_order(kind: str) -> None:
    """Queued callers get freed slots first come, first served."""
    policy = Policy(bulkhead=Bulkhead(max_concurrent=1, max_wait=LONG_WAIT))
    runtime = runtime_of(policy)
    side = Side(policy, kind)
    holder = await side.hold()
    waiters = []
    for index, name in enumerate(["first", "second", "third"], start=1):
        waiters.append(side.start(name))
        await queued(runtime, index)
    side.release()
    await asyncio.gather(holder, *waiters)
    assert side.entered == ["holder", "first", "second", "third"]
    assert runtime.in_use == 0


async def test_a_waiter_is_rejected_after_max_wait(kind: str) -> None:
    """A caller still queued when max_wait elapses is rejected and leaves the queue."""
    policy = Policy(bulkhead=Bulkhead(max_concurrent=1, max_wait=0.05))
    runtime = runtime_of(policy)
    side = Side(policy, kind)
    holder = await side.hold()
    with pytest.raises(BulkheadFullError) as caught:
        await side.start("late")
    assert caught.value.max_wait == 0.05
    assert len(runtime._waiters) == 0
    assert runtime.in_use == 1
    side.release()
    await holder
    assert runtime.in_use == 0


async def test_the_wait_is_clamped_to_an_expired_deadline(kind: str) -> None:
    """With no time left before the enclosing deadline, a full bulkhead rejects without queueing."""
    policy = Policy(bulkhead=Bulkhead(max_concurrent=1, max_wait=LONG_WAIT))
    runtime = runtime_of(policy)
    side = Side(policy, kind)
    holder = await side.hold()
    with deadline.scope(0.0), pytest.raises(BulkheadFullError):
        await side.call_now()
    assert len(runtime._waiters) == 0
    side.release()
    await holder


async def test_a_failing_call_gives_its_slot_back(kind: str) -> None:
    """The slot is released when the protected function raises."""
    policy = Policy(bulkhead=1)
    runtime = runtime_of(policy)

    def fail() -> None:
        raise RuntimeError(kind)

    async def afail() -> None:
        raise RuntimeError(kind)

    with pytest.raises(RuntimeError):
        await (asyncio.to_thread(policy(fail)) if kind == "sync" else policy(afail)())
    assert runtime.in_use == 0


@pytest.mark.parametrize(("holding", "calling"), [("sync", "async"), ("async", "sync")])
async def test_sync_and_async_callers_share_one_capacity(holding: str, calling: str) -> None:
    """One Policy decorating a sync and an async function has one capacity for both."""
    policy = Policy(bulkhead=Bulkhead(max_concurrent=1))
    runtime = runtime_of(policy)
    holder_side, caller_side = Side(policy, holding), Side(policy, calling)
    holder = await holder_side.hold()
    with pytest.raises(BulkheadFullError):
        await caller_side.call_now()
    holder_side.release()
    await holder
    assert await caller_side.call_now("after") == "after"
    assert runtime.in_use == 0


@pytest.mark.parametrize(("holding", "waiting"), [("sync", "async"), ("async", "sync")])
async def test_a_slot_is_handed_across_sync_and_async(holding: str, waiting: str) -> None:
    """A slot released by a thread goes to a queued task, and one released by a task to a thread."""
    policy = Policy(bulkhead=Bulkhead(max_concurrent=1, max_wait=LONG_WAIT))
    runtime = runtime_of(policy)
    holder_side, waiter_side = Side(policy, holding), Side(policy, waiting)
    holder = await holder_side.hold()
    waiter = waiter_side.start("waiter")
    await queued(runtime, 1)
    holder_side.release()
    assert await holder == "holder"
    assert await waiter == "waiter"
    assert runtime.in_use == 0


async def test_max_concurrent_callers_run_at_the_same_time() -> None:
    """Up to max_concurrent calls are inside the function at once: nothing serialises them."""
    policy = Policy(bulkhead=3)
    runtime = runtime_of(policy)
    sync_side, async_side = Side(policy, "sync"), Side(policy, "async")
    holders = [await sync_side.hold("t1"), await async_side.hold("a1"), await sync_side.hold("t2")]
    assert runtime.in_use == 3
    sync_side.release()
    async_side.release()
    await asyncio.gather(*holders)
    assert runtime.in_use == 0


async def test_cancelling_a_queued_async_caller_keeps_the_count_consistent() -> None:
    """A task cancelled while queued leaves the queue; every slot is back once all calls end."""
    policy = Policy(bulkhead=Bulkhead(max_concurrent=1, max_wait=LONG_WAIT))
    runtime = runtime_of(policy)
    side = Side(policy, "async")
    holder = await side.hold()
    cancelled = side.start("cancelled")
    kept = side.start("kept")
    await queued(runtime, 2)
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    assert len(runtime._waiters) == 1
    side.release()
    assert await holder == "holder"
    assert await kept == "kept"
    assert "cancelled" not in side.entered
    assert runtime.in_use == 0
    assert len(runtime._waiters) == 0


async def test_cancelling_a_caller_just_handed_a_slot_gives_it_back() -> None:
    """A task cancelled after a slot was handed to it, before it ran, passes the slot on."""
    policy = Policy(bulkhead=Bulkhead(max_concurrent=1, max_wait=LONG_WAIT))
    runtime = runtime_of(policy)
    side = Side(policy, "async")
    holder = await side.hold()
    granted = side.start("granted")
    await queued(runtime, 1)
    side.release()
    assert await holder == "holder"  # its release handed the slot to `granted`, not yet resumed
    granted.cancel()
    (outcome,) = await asyncio.gather(granted, return_exceptions=True)
    assert isinstance(outcome, asyncio.CancelledError)
    assert "granted" not in side.entered
    assert runtime.in_use == 0
    assert await side.call_now("next") == "next"
    assert runtime.in_use == 0


@pytest.mark.parametrize("hops", range(6))
async def test_a_cancel_arriving_with_the_handed_slot_wins(hops: int) -> None:
    """A caller cancelled after its slot was handed over but before it resumed never runs the call.

    The holder's release and the cancel happen in one loop iteration, the cancel `hops`
    callbacks later, wherever it falls among the hand-over's own callbacks: on 3.11
    `asyncio.wait_for` returned the completed hand-over to a task being cancelled (CPython
    gh-86296), and the cancelled caller ran the function. The slot always comes back.
    """
    policy = Policy(bulkhead=Bulkhead(max_concurrent=1, max_wait=LONG_WAIT))
    runtime = runtime_of(policy)
    ran: list[str] = []

    @policy
    async def protected(name: str) -> str:
        ran.append(name)
        return name

    assert runtime.try_acquire()  # the slot is held outside any task
    granted = asyncio.create_task(protected("granted"))
    await asyncio.sleep(0)  # one step: the task queues (enqueueing is synchronous) and parks
    assert len(runtime._waiters) == 1
    loop = asyncio.get_running_loop()

    started_before_cancel: list[bool] = []

    def cancel_after(remaining: int) -> None:
        if remaining == 0:
            started_before_cancel.append(bool(ran))
            granted.cancel()
        else:
            loop.call_soon(cancel_after, remaining - 1)

    runtime.release()  # hands the slot to `granted`
    cancel_after(hops)
    (outcome,) = await asyncio.gather(granted, return_exceptions=True)
    if hops == 0:
        assert started_before_cancel == [False]  # the cancel is requested before the task resumes
    if started_before_cancel == [False]:  # cancelled before the call began: it must never begin
        assert isinstance(outcome, asyncio.CancelledError)
        assert ran == []
    else:  # the task resumed and finished first: the cancel came too late to matter
        assert outcome == "granted"
    assert runtime.in_use == 0
    assert await protected("next") == "next"


def test_shorthand_and_config_compile_to_the_same_bulkhead() -> None:
    """`bulkhead=4` is `Bulkhead(max_concurrent=4)` with no wait."""
    assert Policy(bulkhead=4).bulkhead == Bulkhead(max_concurrent=4, max_wait=0.0)
    runtime = runtime_of(Policy(bulkhead=4))
    assert (runtime.max_concurrent, runtime.max_wait, runtime.in_use) == (4, 0.0, 0)


def test_threads_beyond_capacity_are_rejected_without_blocking() -> None:
    """Many threads against a full bulkhead (max_wait=0) are all rejected, none blocks."""
    policy = Policy(bulkhead=1)
    runtime = runtime_of(policy)
    inside, gate = threading.Event(), threading.Event()
    outcomes: list[str] = []

    @policy
    def work(hold: bool) -> None:
        if hold:
            inside.set()
            assert gate.wait(timeout=LONG_WAIT)

    holder = threading.Thread(target=work, args=(True,))
    holder.start()
    assert inside.wait(timeout=LONG_WAIT)

    def try_once() -> None:
        try:
            work(False)
        except BulkheadFullError:
            outcomes.append("rejected")
        else:
            outcomes.append("ran")

    others = [threading.Thread(target=try_once) for _ in range(8)]
    for thread in others:
        thread.start()
    for thread in others:
        thread.join(timeout=LONG_WAIT)
    assert outcomes == ["rejected"] * 8
    gate.set()
    holder.join(timeout=LONG_WAIT)
    assert runtime.in_use == 0


@pytest.fixture
def frequent_thread_switches() -> Iterator[None]:
    """Make the interpreter switch threads every microsecond: races show up within a test run."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(previous)


@pytest.mark.usefixtures("frequent_thread_switches")
@pytest.mark.parametrize("free_threaded", [False, True], ids=["gil", "free-threaded-release"])
def test_racing_threads_never_exceed_the_capacity_and_every_waiter_is_served(
    free_threaded: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """16 threads x 200 calls through 3 slots, waiting as long as needed: no call runs beyond
    the capacity, none is rejected or stranded in the queue, and every slot comes back.

    The slot is taken and given back without a lock (list pop/append) while waiters queue
    under one; this drives both paths at once, with the interpreter switching threads
    between almost any two bytecodes.
    """
    monkeypatch.setattr(_bulkhead, "_NO_GIL", free_threaded)  # the release a free-threaded build runs
    capacity, threads, calls = 3, 16, 200
    policy = Policy(bulkhead=Bulkhead(max_concurrent=capacity, max_wait=LONG_WAIT))
    runtime = runtime_of(policy)
    counter = threading.Lock()
    running = peak = completed = 0

    @policy
    def work() -> None:
        nonlocal running, peak, completed
        with counter:
            running += 1
            peak = max(peak, running)
        with counter:
            running -= 1
            completed += 1

    failures: list[BaseException] = []

    def caller() -> None:
        try:
            for _ in range(calls):
                work()
        except BaseException as error:  # reported by the assertion below
            failures.append(error)

    workers = [threading.Thread(target=caller) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=LONG_WAIT)

    assert failures == []
    assert completed == threads * calls
    assert 1 <= peak <= capacity
    assert runtime.in_use == 0
    assert len(runtime._waiters) == 0


class RacingTokens(list[None]):
    """The bulkhead's free-slot tokens, rigged for one race: the first pop that finds no token
    while the bulkhead's queue lock is held (a caller joining the queue) runs `on_empty`, then
    reports failure, as if the slot came back a moment too late."""

    def __init__(self, queue_lock: threading.Lock, on_empty: Callable[[], None]) -> None:
        super().__init__()
        self.queue_lock = queue_lock
        self.on_empty: Callable[[], None] | None = on_empty
        self.returned = threading.Event()

    def pop(self, index: SupportsIndex = -1) -> None:
        """`list.pop`, running the hook at the chosen miss."""
        hook = self.on_empty
        if not self and hook is not None and self.queue_lock.locked():
            self.on_empty = None
            hook()
            raise IndexError("pop from empty list")  # what it found before the slot came back
        return super().pop(index)

    def append(self, item: None) -> None:
        """`list.append`, noting that a slot came back."""
        super().append(item)
        self.returned.set()


def test_a_slot_released_while_a_caller_joins_the_queue_reaches_that_caller() -> None:
    """The lost-wake-up race: the only slot comes back just as a caller, having found none,
    is joining the queue. The caller must get it at once rather than wait out `max_wait`."""
    policy = Policy(bulkhead=Bulkhead(max_concurrent=1, max_wait=5.0))
    runtime = runtime_of(policy)
    inside, gate = threading.Event(), threading.Event()

    @policy
    def work(hold: bool) -> str:
        if hold:
            inside.set()
            assert gate.wait(timeout=LONG_WAIT)
        return "ran"

    holder = threading.Thread(target=work, args=(True,))
    holder.start()
    assert inside.wait(timeout=LONG_WAIT)

    def holder_returns_its_slot() -> None:
        gate.set()  # the holder's call ends and it puts its slot back...
        assert tokens.returned.wait(timeout=LONG_WAIT)  # ...while the caller is mid-way

    tokens = RacingTokens(runtime._lock, on_empty=holder_returns_its_slot)
    runtime._free = tokens
    assert work(False) == "ran"  # handed over: a caller left waiting would be rejected after max_wait
    holder.join(timeout=LONG_WAIT)
    assert runtime.in_use == 0
