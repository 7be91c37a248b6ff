"""The async paths on both of anyio's backends: the decorator, the ASGI middleware, the async transport.

Every test runs twice, on asyncio and on trio (anyio's pytest plugin, as httpx and Starlette
test themselves), and uses anyio's primitives so the scenario is the same text on both.
Waits are skipped (`resilient.testing.no_wait`) wherever the library would sleep; a real
timeout, where one is the point, is small and the test asserts what happened, never how
long it took. `anyio.fail_after` bounds each scenario so a hang fails instead of stalling.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any, Literal

import anyio
import httpx
import pytest
import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from resilient import (
    Bulkhead,
    BulkheadFullError,
    CircuitBreaker,
    CircuitOpenError,
    DeadlineExceededError,
    Policy,
    RateLimit,
    Retry,
    Timeout,
    deadline,
    resilient,
    testing,
)
from resilient.asgi import ResilientMiddleware, RouteOptions
from resilient.httpx import AsyncResilientTransport
from resilient.testing import Fault, FaultyUpstream

with warnings.catch_warnings():
    # Starlette 1.x asks for `httpx2` behind its TestClient and warns when it runs on httpx.
    warnings.filterwarnings("ignore", message=r".*install `httpx2`")
    from starlette.testclient import TestClient

pytestmark = pytest.mark.anyio

LONG = 30.0  # a wait no scenario reaches: it ends by a timeout, a cancel or a release first
SHORT = 0.05  # a real timeout the scenario is about (outcomes asserted, not durations)
BOUND = 20.0  # the bound on one scenario: only a hang reaches it


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Run the test on asyncio and on trio."""
    return str(request.param)


@pytest.fixture
def skipped_waits() -> Iterator[list[float]]:
    """The library's waits skipped and recorded (backoff, rate-limit waits)."""
    with testing.no_wait() as waits:
        yield waits


# --- the decorator ---------------------------------------------------------------------------


async def test_a_timeout_cancels_the_call_and_raises_deadline_exceeded() -> None:
    """A call past its timeout is cancelled inside (it sees the backend's cancellation) and raises the timeout error."""
    cancelled: list[bool] = []

    @resilient(timeout=SHORT)
    async def hang() -> None:
        try:
            await anyio.sleep(LONG)
        except anyio.get_cancelled_exc_class():
            cancelled.append(True)
            raise

    with anyio.fail_after(BOUND), pytest.raises(DeadlineExceededError) as caught:
        await hang()
    assert isinstance(caught.value, TimeoutError)
    assert caught.value.scope == "total"
    assert cancelled == [True]


async def test_an_attempt_timeout_is_retried_and_publishes_the_deadline(skipped_waits: list[float]) -> None:
    """Each attempt is bounded (and sees its bound in `remaining()`); a timed-out attempt is retried."""
    calls: list[float | None] = []
    policy = Policy(timeout=Timeout(attempt=SHORT), retry=Retry(attempts=2, on=(TimeoutError,)))

    @policy
    async def slow_then_fast() -> str:
        calls.append(deadline.remaining())
        if len(calls) == 1:
            await anyio.sleep(LONG)
        return "ok"

    with anyio.fail_after(BOUND):
        assert await slow_then_fast() == "ok"
    assert len(calls) == 2
    assert all(left is not None and 0 < left <= SHORT for left in calls)
    assert len(skipped_waits) == 1


async def test_retries_sleep_their_backoff(skipped_waits: list[float]) -> None:
    """Transient failures are retried after the backoff sleep; the last result comes back."""
    attempts: list[int] = []

    @resilient(retry=Retry(attempts=3, initial_delay=0.2, jitter=False, budget=None))
    async def flaky() -> str:
        attempts.append(1)
        if len(attempts) < 3:
            raise ConnectionError("transient")
        return "ok"

    with anyio.fail_after(BOUND):
        assert await flaky() == "ok"
    assert len(attempts) == 3
    assert len(skipped_waits) == 2
    assert skipped_waits[1] == pytest.approx(2 * skipped_waits[0])


async def test_a_real_backoff_sleep_runs_on_the_backend() -> None:
    """Without `no_wait` the backoff really sleeps (a short one) and the retry succeeds."""
    attempts: list[int] = []

    @resilient(retry=Retry(attempts=2, initial_delay=0.001, max_delay=0.001, jitter=False, budget=None))
    async def flaky() -> str:
        attempts.append(1)
        if len(attempts) == 1:
            raise ConnectionError("transient")
        return "ok"

    with anyio.fail_after(BOUND):
        assert await flaky() == "ok"
    assert len(attempts) == 2


async def test_a_bulkhead_waiter_gets_the_slot_the_holder_gives_back() -> None:
    """With the one slot held, a second caller waits (max_wait) and runs once the holder returns."""
    policy = Policy(bulkhead=Bulkhead(max_concurrent=1, max_wait=LONG))
    release = anyio.Event()
    order: list[str] = []

    @policy
    async def guarded(name: str, *, hold: bool) -> None:
        order.append(name)
        if hold:
            await release.wait()

    with anyio.fail_after(BOUND):
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: guarded("holder", hold=True))
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(lambda: guarded("waiter", hold=False))
            await anyio.wait_all_tasks_blocked()
            assert order == ["holder"]  # the waiter is queued, not running
            release.set()
    assert order == ["holder", "waiter"]
    assert policy._compiled.bulkhead is not None
    assert policy._compiled.bulkhead.in_use == 0


async def test_a_full_bulkhead_rejects_at_once_and_after_its_wait() -> None:
    """No free slot: `max_wait=0` rejects at once, a short `max_wait` rejects when it runs out."""
    release = anyio.Event()

    async def hold() -> None:
        await release.wait()

    at_once = Policy(bulkhead=Bulkhead(max_concurrent=1))(hold)
    after_wait = Policy(bulkhead=Bulkhead(max_concurrent=1, max_wait=SHORT))(hold)
    with anyio.fail_after(BOUND):
        async with anyio.create_task_group() as tg:
            tg.start_soon(at_once)
            tg.start_soon(after_wait)
            await anyio.wait_all_tasks_blocked()
            with pytest.raises(BulkheadFullError):
                await at_once()
            with pytest.raises(BulkheadFullError) as caught:
                await after_wait()
            assert caught.value.max_wait == SHORT
            release.set()


async def test_a_cancelled_bulkhead_waiter_never_runs_and_its_slot_goes_back() -> None:
    """A queued caller cancelled in the same step its slot is handed over never runs; the slot is free again."""
    policy = Policy(bulkhead=Bulkhead(max_concurrent=1, max_wait=LONG))
    runtime = policy._compiled.bulkhead
    assert runtime is not None
    ran: list[str] = []

    @policy
    async def guarded(name: str) -> str:
        ran.append(name)
        return name

    assert runtime.try_acquire()
    with anyio.fail_after(BOUND):
        async with anyio.create_task_group() as tg:
            waiting = anyio.CancelScope()
            tg.start_soon(_in_scope, waiting, guarded, "cancelled")
            await anyio.wait_all_tasks_blocked()
            runtime.release()  # handed to the queued caller...
            waiting.cancel()  # ...which is cancelled before it resumes
        assert ran == []
        assert runtime.in_use == 0
        assert await guarded("next") == "next"


async def _in_scope(scope: anyio.CancelScope, fn: Callable[[str], Awaitable[Any]], name: str) -> None:
    """Run `fn(name)` inside `scope`, which the test cancels from outside."""
    with scope:
        await fn(name)


async def test_a_rate_limit_waits_for_its_next_slot(skipped_waits: list[float]) -> None:
    """Over the limit, a caller with `max_wait` waits for the next slot instead of being refused."""
    clock_start = 1_000.0
    with testing.fake_clock(clock_start):

        @resilient(rate_limit=RateLimit("1/second", max_wait=LONG))
        async def limited() -> str:
            return "ok"

        with anyio.fail_after(BOUND):
            assert [await limited(), await limited()] == ["ok", "ok"]
    assert len(skipped_waits) >= 1
    assert all(0 < wait <= 1.0 for wait in skipped_waits)


async def test_cancellation_from_outside_propagates_untouched() -> None:
    """Cancelling a call under timeout, retry and bulkhead raises the backend's own cancellation, never retried."""
    entered = anyio.Event()
    attempts: list[int] = []
    seen: list[type[BaseException]] = []
    policy = Policy(timeout=LONG, retry=3, bulkhead=Bulkhead(max_concurrent=2, max_wait=LONG))

    @policy
    async def hang() -> None:
        attempts.append(1)
        entered.set()
        await anyio.sleep(LONG)

    async def caller() -> None:
        try:
            await hang()
        except BaseException as exc:
            seen.append(type(exc))
            raise

    with anyio.fail_after(BOUND):
        async with anyio.create_task_group() as tg:
            tg.start_soon(caller)
            await entered.wait()
            tg.cancel_scope.cancel()
    assert attempts == [1]
    assert seen == [anyio.get_cancelled_exc_class()]


async def test_cancellation_during_a_backoff_sleep_propagates() -> None:
    """A call cancelled while it sleeps between attempts stops there, with the backend's cancellation."""
    attempts: list[int] = []

    @resilient(retry=Retry(attempts=3, initial_delay=LONG, max_delay=LONG, jitter=False, budget=None))
    async def failing() -> None:
        attempts.append(1)
        raise ConnectionError("transient")

    with anyio.fail_after(BOUND):
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(failing)
                await anyio.wait_all_tasks_blocked()  # asleep in the backoff
                scope.cancel()
        assert scope.cancelled_caught
    assert attempts == [1]


async def test_many_concurrent_timeouts_each_fire() -> None:
    """Twenty calls timing out together each raise the timeout error (one watchdog, or one scope each)."""
    outcomes: list[str] = []

    @resilient(timeout=SHORT)
    async def hang() -> None:
        await anyio.sleep(LONG)

    async def one() -> None:
        try:
            await hang()
        except DeadlineExceededError:
            outcomes.append("timeout")

    with anyio.fail_after(BOUND):
        async with anyio.create_task_group() as tg:
            for _ in range(20):
                tg.start_soon(one)
    assert outcomes == ["timeout"] * 20


# --- the ASGI middleware ---------------------------------------------------------------------


class Held:
    """A route that, while `hold` is set, stays inside until `release`; counts who entered."""

    def __init__(self) -> None:
        self.entered = 0
        self.hold = True
        self.release = anyio.Event()

    async def endpoint(self, _request: Request) -> PlainTextResponse:
        """The route's handler."""
        self.entered += 1
        if self.hold:
            await self.release.wait()
        return PlainTextResponse("done")


async def _hang(_request: Request) -> PlainTextResponse:
    await anyio.sleep(LONG)
    return PlainTextResponse("never")


async def _hello(_request: Request) -> PlainTextResponse:
    return PlainTextResponse(f"left={deadline.remaining() is not None}")


def _app(held: Held | None = None, **options: Any) -> Starlette:
    routes = [Route("/", _hello), Route("/hang", _hang)]
    if held is not None:
        routes.append(Route("/held", held.endpoint))
    return Starlette(routes=routes, middleware=[Middleware(ResilientMiddleware, **options)])


def _client(app: Starlette) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


async def test_middleware_answers_normally_and_504_at_the_deadline() -> None:
    """A normal request passes (with the deadline published inside); one past the route's timeout gets 504."""
    app = _app(timeout=LONG, routes={"/hang": RouteOptions(timeout=SHORT)})
    with anyio.fail_after(BOUND):
        async with _client(app) as client:
            ok = await client.get("/")
            late = await client.get("/hang")
    assert (ok.status_code, ok.text) == (200, "left=True")
    assert late.status_code == 504
    assert late.json()["error"] == "deadline_exceeded"


async def test_middleware_sheds_past_the_in_flight_limit() -> None:
    """With the one slot held, the next request gets 503 with Retry-After; the held one completes."""
    held = Held()
    app = _app(held, max_in_flight=1)
    responses: list[httpx.Response] = []
    with anyio.fail_after(BOUND):
        async with _client(app) as client, anyio.create_task_group() as tg:

            async def first() -> None:
                responses.append(await client.get("/held"))

            tg.start_soon(first)
            await anyio.wait_all_tasks_blocked()
            shed = await client.get("/")
            held.release.set()
    assert shed.status_code == 503
    assert shed.headers["retry-after"] == "1"
    assert [response.status_code for response in responses] == [200]


async def test_middleware_in_flight_wait_hands_the_slot_over() -> None:
    """A request that may wait (max_in_flight_wait) is admitted when the held one finishes."""
    held = Held()
    app = _app(held, max_in_flight=1, max_in_flight_wait=LONG)
    statuses: list[int] = []
    with anyio.fail_after(BOUND):
        async with _client(app) as client, anyio.create_task_group() as tg:

            async def get(path: str) -> None:
                statuses.append((await client.get(path)).status_code)

            tg.start_soon(get, "/held")
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(get, "/")
            await anyio.wait_all_tasks_blocked()
            assert statuses == []  # the second request waits for the slot
            held.release.set()
    assert statuses == [200, 200]


async def test_middleware_in_flight_wait_runs_out_with_503() -> None:
    """A waiting request whose wait runs out is shed with 503; the slot count stays exact."""
    held = Held()
    app = _app(held, max_in_flight=1, max_in_flight_wait=SHORT)
    with anyio.fail_after(BOUND):
        async with _client(app) as client, anyio.create_task_group() as tg:

            async def first() -> None:
                await client.get("/held")

            tg.start_soon(first)
            await anyio.wait_all_tasks_blocked()
            shed = await client.get("/")
            held.release.set()
        after = await _client(app).get("/")
    assert shed.status_code == 503
    assert after.status_code == 200


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_starlette_test_client_on_either_backend(backend: Literal["asyncio", "trio"]) -> None:
    """Starlette's TestClient (`backend=`) sees the normal answer, the 504 and the 503 on both backends."""
    held = Held()
    held.hold = False
    app = _app(held, timeout=LONG, max_in_flight=5, routes={"/hang": RouteOptions(timeout=SHORT)})
    with TestClient(app, backend=backend) as client:
        assert client.get("/").text == "left=True"
        assert client.get("/hang").status_code == 504
        assert client.get("/held").status_code == 200


@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_middleware_under_hypercorn_on_trio() -> None:
    """A real server (hypercorn on trio) over loopback: normal answer, 504 at the deadline, 503 when full."""
    held = Held()
    app = _app(held, timeout=LONG, max_in_flight=1, routes={"/hang": RouteOptions(timeout=SHORT)})
    with trio.fail_after(BOUND):
        async with _hypercorn(app) as base, httpx.AsyncClient(base_url=base) as client:
            assert (await client.get("/")).text == "left=True"
            assert (await client.get("/hang")).status_code == 504
            async with trio.open_nursery() as nursery:
                statuses: list[int] = []

                async def first() -> None:
                    statuses.append((await client.get("/held")).status_code)

                nursery.start_soon(first)
                while held.entered == 0:  # the request is on the server: wait for it to arrive
                    await trio.sleep(0.01)
                assert (await client.get("/")).status_code == 503
                held.release.set()
            assert statuses == [200]


@asynccontextmanager
async def _hypercorn(app: Starlette) -> AsyncIterator[str]:
    """Serve `app` with hypercorn on trio, 127.0.0.1 on a free port; yields its base URL; always stops it."""
    config = Config()
    config.bind = ["127.0.0.1:0"]  # the bound port comes back through `task_status`
    config.accesslog = config.errorlog = None
    config.graceful_timeout = 1.0
    stop = trio.Event()

    async def shutdown_trigger() -> None:
        await stop.wait()

    async with trio.open_nursery() as nursery:
        asgi_app: Any = app  # hypercorn's own ASGI types are narrower than Starlette's

        async def run(task_status: trio.TaskStatus[list[str]]) -> None:
            await serve(asgi_app, config, shutdown_trigger=shutdown_trigger, task_status=task_status)

        binds: list[str] = await nursery.start(run)
        try:
            yield binds[0]
        finally:
            stop.set()


# --- the async transport ---------------------------------------------------------------------


def _mock(answers: list[int], calls: list[str]) -> httpx.MockTransport:
    """A mock upstream answering `answers` in order (then 200), recording each request's path."""

    async def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        status = answers.pop(0) if answers else 200
        return httpx.Response(status, text=str(status))

    return httpx.MockTransport(handler)


async def test_transport_retries_a_503(skipped_waits: list[float]) -> None:
    """Two 503s then a 200: the caller gets the 200 after three attempts and two backoff waits."""
    calls: list[str] = []
    transport = AsyncResilientTransport(_mock([503, 503], calls), retry=Retry(attempts=3, budget=None))
    with anyio.fail_after(BOUND):
        async with httpx.AsyncClient(transport=transport, base_url="http://upstream") as client:
            response = await client.get("/a")
    assert response.status_code == 200
    assert calls == ["/a"] * 3
    assert len(skipped_waits) == 2


async def test_transport_times_out_a_hanging_upstream() -> None:
    """An upstream that never answers is cancelled at the transport's timeout: the timeout error."""
    cancelled: list[bool] = []

    async def hang(_request: httpx.Request) -> httpx.Response:
        try:
            await anyio.sleep(LONG)
        except anyio.get_cancelled_exc_class():
            cancelled.append(True)
            raise
        return httpx.Response(200)

    transport = AsyncResilientTransport(httpx.MockTransport(hang), timeout=SHORT, retry=False)
    with anyio.fail_after(BOUND):
        async with httpx.AsyncClient(transport=transport, base_url="http://upstream") as client:
            with pytest.raises(DeadlineExceededError):
                await client.get("/slow")
    assert cancelled == [True]


async def test_transport_breaker_opens_and_fails_fast() -> None:
    """After the threshold of failures the host's breaker opens: the next request fails fast, unsent."""
    calls: list[str] = []
    transport = AsyncResilientTransport(
        _mock([503] * 10, calls),
        retry=False,
        breaker=CircuitBreaker(name="trio-upstream", failure_threshold=2, reset_timeout=LONG),
    )
    with anyio.fail_after(BOUND):
        async with httpx.AsyncClient(transport=transport, base_url="http://upstream") as client:
            statuses = [(await client.get("/x")).status_code for _ in range(2)]
            with pytest.raises(CircuitOpenError):
                await client.get("/x")
    assert statuses == [503, 503]
    assert len(calls) == 2


async def test_transport_over_loopback_retries_and_times_out(skipped_waits: list[float]) -> None:
    """Over a real socket (httpcore on the running backend): a 503 is retried, a hanging answer times out.

    `FaultyUpstream`'s `async with` starts and stops it in a worker thread of either backend.
    """
    script = [Fault.status(503), Fault.ok("fine"), Fault.hang(LONG)]
    transport = AsyncResilientTransport(timeout=1.0, retry=Retry(attempts=2, budget=None))
    with anyio.fail_after(BOUND):
        async with (
            FaultyUpstream(script, max_lifetime=BOUND) as upstream,
            httpx.AsyncClient(transport=transport, base_url=upstream.url) as client,
        ):
            assert (await client.get("/")).text == "fine"
            with pytest.raises(DeadlineExceededError):
                await client.get("/hang")
    assert len(skipped_waits) >= 1


def test_no_async_library_is_a_clear_error() -> None:
    """A coroutine driven outside asyncio and trio fails with an error naming what is supported."""
    thread_result: list[BaseException] = []

    @resilient(timeout=LONG)
    async def call() -> None:
        return None

    def drive() -> None:
        coroutine = call()
        try:
            coroutine.send(None)
        except BaseException as exc:  # the test records whatever comes out
            thread_result.append(exc)
        finally:
            coroutine.close()

    worker = threading.Thread(target=drive)
    worker.start()
    worker.join(BOUND)
    assert len(thread_result) == 1
    assert isinstance(thread_result[0], RuntimeError)
    assert "asyncio event loop or trio run" in str(thread_result[0])


@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_redis_storage_on_trio_says_it_needs_asyncio(uri: str) -> None:
    """Shared state in Redis on an async path under trio fails with an error that says why and what to do."""

    @resilient(rate_limit=RateLimit("100/second", storage=uri))
    async def limited() -> str:
        return "ok"

    with pytest.raises(RuntimeError, match=r"needs asyncio \(redis\.asyncio\)"):
        await limited()
