"""Helpers for the Redis tests: worker processes (spawned), key hygiene, a private server.

Workers run in processes started with the ``spawn`` context, so each one builds its own
policies, clients and breaker registry exactly as a separate host would. They meet the
test at barriers and report through queues; nothing waits by sleeping.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import shutil
import socket
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing.context import SpawnContext
from pathlib import Path
from typing import Any

import redis

from resilient import CircuitBreaker, CircuitOpenError, Policy, RateLimit, RateLimitedError
from resilient._storage.store import close_stores
from resilient._strategies.breaker_registry import breaker_for
from resilient._strategies.ratelimit import ALGORITHMS, LimiterRuntime

JOIN_TIMEOUT = 30.0


def spawn() -> SpawnContext:
    """The multiprocessing context every test uses: fresh interpreters, like separate hosts."""
    return multiprocessing.get_context("spawn")


def with_prefix(url: str, prefix: str) -> str:
    """`url` with our `key_prefix` query parameter added."""
    return f"{url}{'&' if '?' in url else '?'}key_prefix={prefix}"


def delete_prefix(url: str, prefix: str) -> None:
    """Delete every key under `prefix` (and nothing else) from the Redis at `url`."""
    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


# ---------------------------------------------------------------- rate limit hammer


def _limit_policies(uri: str) -> dict[str, Policy]:
    return {
        algorithm: Policy(rate_limit=RateLimit("100/minute", algorithm=algorithm, storage=uri, name="hammer"))
        for algorithm in ALGORITHMS
    }


def _count_sync(policy: Policy, attempts: int) -> int:
    admitted = 0
    for _ in range(attempts):
        try:
            policy.call(int)
        except RateLimitedError:
            continue
        admitted += 1
    return admitted


def hammer_sync(uri: str, threads: int, attempts: int, barrier: Any, results: Any) -> None:
    """`threads` threads each try `attempts` calls per algorithm after the cross-process barrier."""
    policies = _limit_policies(uri)
    totals: dict[str, int] = dict.fromkeys(ALGORITHMS, 0)
    lock = threading.Lock()
    local = threading.Barrier(threads)

    def run() -> None:
        local.wait()
        for algorithm, policy in policies.items():
            admitted = _count_sync(policy, attempts)
            with lock:
                totals[algorithm] += admitted

    barrier.wait(JOIN_TIMEOUT)
    workers = [threading.Thread(target=run) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(JOIN_TIMEOUT)
    results.put(totals)
    close_stores()


async def _one_async_call() -> int:
    return 1


async def _count_async(policy: Policy, attempts: int) -> int:
    admitted = 0
    for _ in range(attempts):
        try:
            await policy.call_async(_one_async_call)
        except RateLimitedError:
            continue
        admitted += 1
    return admitted


def hammer_async(uri: str, tasks: int, attempts: int, barrier: Any, results: Any) -> None:
    """`tasks` concurrent tasks each try `attempts` async calls per algorithm, plus direct `atry_acquire`."""
    policies = _limit_policies(uri)

    async def main() -> dict[str, int]:
        totals: dict[str, int] = dict.fromkeys(ALGORITHMS, 0)
        for algorithm, policy in policies.items():
            counts = await asyncio.gather(*(_count_async(policy, attempts) for _ in range(tasks)))
            totals[algorithm] = sum(counts)
        limiter = LimiterRuntime(RateLimit("100/minute", storage=uri, name="direct"))

        async def direct() -> int:
            return sum([not await limiter.atry_acquire("k") for _ in range(attempts)])

        totals["direct"] = sum(await asyncio.gather(*(direct() for _ in range(tasks))))
        return totals

    barrier.wait(JOIN_TIMEOUT)
    results.put(asyncio.run(main()))
    close_stores()


# ---------------------------------------------------------------- breaker workers


@dataclass(frozen=True, slots=True)
class BreakerSpec:
    """How every process defines the shared breaker under test."""

    uri: str
    name: str = "dependency"
    failure_threshold: int = 3
    reset_timeout: float = 30.0
    half_open_max_calls: int = 1

    def config(self) -> CircuitBreaker:
        return CircuitBreaker(
            name=self.name,
            failure_threshold=self.failure_threshold,
            reset_timeout=self.reset_timeout,
            half_open_max_calls=self.half_open_max_calls,
            storage=self.uri,
        )


def fail_fast_worker(spec: BreakerSpec, ready: Any, opened: Any, results: Any, use_async: bool) -> None:
    """Call once while closed, wait until the test opened the breaker elsewhere, call again."""
    policy = Policy(breaker=spec.config())
    called: list[str] = []

    def work() -> str:
        called.append("sync")
        return "ok"

    async def awork() -> str:
        called.append("async")
        return "ok"

    def attempt() -> str:
        try:
            return asyncio.run(policy.call_async(awork)) if use_async else policy.call(work)
        except CircuitOpenError:
            return "open"

    first = attempt()
    ready.set()
    opened.wait(JOIN_TIMEOUT)
    second = attempt()
    results.put((first, second, len(called)))
    close_stores()


def probe_worker(spec: BreakerSpec, threads: int, barrier: Any, arrived: Any, release: Any, use_async: bool) -> None:
    """Every thread calls once after the barrier; a call that runs blocks until `release`.

    Each thread reports "probe" (its function ran) or "rejected" to `arrived`.
    """
    runtime = breaker_for(spec.config())

    def admit_sync() -> None:
        try:
            probe = runtime.acquire("probe-test")
        except CircuitOpenError:
            arrived.put("rejected")
            return
        arrived.put("probe" if probe else "pass")
        release.wait(JOIN_TIMEOUT)
        runtime.on_success(probe=probe, duration=0.0, label="probe-test")

    async def admit_async() -> None:
        try:
            probe = await runtime.aacquire("probe-test")
        except CircuitOpenError:
            arrived.put("rejected")
            return
        arrived.put("probe" if probe else "pass")
        await asyncio.to_thread(release.wait, JOIN_TIMEOUT)
        await runtime.aon_success(probe=probe, duration=0.0, label="probe-test")

    local = threading.Barrier(threads)

    def run() -> None:
        barrier.wait(JOIN_TIMEOUT)
        local.wait(JOIN_TIMEOUT)
        if use_async:
            asyncio.run(admit_async())
        else:
            admit_sync()

    workers = [threading.Thread(target=run) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(JOIN_TIMEOUT)
    close_stores()


def run_processes(target: Callable[..., None], args_for: Callable[[int], tuple[Any, ...]], count: int) -> list[Any]:
    """Start `count` spawned processes; return them (the caller joins with `join_all`)."""
    context = spawn()
    processes = [context.Process(target=target, args=args_for(index), daemon=True) for index in range(count)]
    for process in processes:
        process.start()
    return processes


def join_all(processes: list[Any]) -> None:
    """Join every process and check it exited cleanly."""
    for process in processes:
        process.join(JOIN_TIMEOUT)
        exitcode = process.exitcode
        process.close() if exitcode is not None else process.kill()
        assert exitcode == 0, f"worker exited with {exitcode}"


# ---------------------------------------------------------------- a private redis-server


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrivateRedis:
    """A redis-server of our own on a fixed port, which a test may stop and start again."""

    def __init__(self, binary: str, port: int, workdir: Path) -> None:
        self.binary = binary
        self.port = port
        self.workdir = workdir
        self.process: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start the server and return once it says it accepts connections."""
        argv = [self.binary, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--appendonly", "no"]
        process = subprocess.Popen(  # noqa: S603 - fixed argv, loopback only
            [*argv, "--dir", str(self.workdir)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.process = process
        assert process.stdout is not None
        for _ in range(500):
            line = process.stdout.readline()
            if "Ready to accept connections" in line:
                return
            if not line:
                break
        self.stop()
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def stop(self) -> None:
        """Terminate the server and wait for it to exit."""
        process, self.process = self.process, None
        if process is None:
            return
        process.terminate()
        process.wait(timeout=10)
        if process.stdout is not None:
            process.stdout.close()


@contextmanager
def private_redis() -> Iterator[PrivateRedis | None]:
    """A started private server, always stopped at the end; None without redis-server."""
    binary = shutil.which("redis-server")
    if binary is None:
        yield None
        return
    with tempfile.TemporaryDirectory() as workdir:
        server = PrivateRedis(binary, free_port(), Path(workdir))
        server.start()
        try:
            yield server
        finally:
            server.stop()
