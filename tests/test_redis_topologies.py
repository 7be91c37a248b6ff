"""Rate limits and breakers against a live Redis Sentinel and a live Redis Cluster."""

from __future__ import annotations

import asyncio
import gc
import os
import queue
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.cluster
from redis.crc import key_slot

from resilient import CircuitBreaker, CircuitOpenError, Policy, RateLimit, RateLimitedError, instrumentation, testing
from resilient._storage.store import EVENT_DEGRADED, EVENT_RECOVERED, close_stores
from resilient._strategies.ratelimit import ALGORITHMS, Algorithm
from tests._redis_topologies import Binaries, Cluster, Sentinel, cluster, find_binaries, sentinel

LIMIT = 5
ATTEMPTS = 12
WAIT = 10.0
COMMAND_TIMEOUT = 1.0  # sharing is under test, not timeouts: a loaded host must not degrade the store

Topology = Sentinel | Cluster
PlainClient = redis.Redis | redis.cluster.RedisCluster


@pytest.fixture(scope="module")
def binaries() -> Binaries:
    """redis-server and redis-cli; under CI=true their absence fails the run instead of skipping."""
    found = find_binaries()
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true but redis-server / redis-cli are not installed")
        pytest.skip("redis-server and redis-cli are needed for the Sentinel and Cluster tests")
    return found


@pytest.fixture(scope="module")
def sentinel_topology(binaries: Binaries) -> Iterator[Sentinel]:
    """A master and a Sentinel monitoring it as ``mymaster``, for this module."""
    with tempfile.TemporaryDirectory() as workdir, sentinel(binaries, Path(workdir)) as started:
        yield started


@pytest.fixture(scope="module")
def cluster_topology(binaries: Binaries) -> Iterator[Cluster]:
    """A three-primary Redis Cluster, for this module."""
    with tempfile.TemporaryDirectory() as workdir, cluster(binaries, Path(workdir)) as started:
        yield started


@pytest.fixture(params=["sentinel", "cluster"])
def topology(request: pytest.FixtureRequest) -> Topology:
    """Each topology in turn (started once per module, on first use)."""
    started: Topology = request.getfixturevalue(f"{request.param}_topology")
    return started


@pytest.fixture
def prefix() -> str:
    """A key prefix of this test's own."""
    return f"topo-{uuid.uuid4().hex[:12]}"


@contextmanager
def _storage_uri(started: Topology, prefix: str) -> Iterator[str]:
    """The topology's URI under `prefix`; afterwards every client is closed, the keys deleted,
    and the test fails if the storage degraded (it would then have passed on local state).
    """
    degraded: list[instrumentation.Event] = []

    def listen(event: instrumentation.Event) -> None:
        if event.name == EVENT_DEGRADED:
            degraded.append(event)

    instrumentation.add_listener(listen)
    try:
        yield f"{started.uri}?key_prefix={prefix}&timeout={COMMAND_TIMEOUT}"
    finally:
        instrumentation.remove_listener(listen)
        close_stores()
        gc.collect()  # a client left open warns now, inside this test, not at random later
        _delete_prefix(started, prefix)
    assert not degraded, f"the storage degraded: {degraded[0].fields}"


def _delete_prefix(started: Topology, prefix: str) -> None:
    client = started.client()
    try:
        for key in list(client.scan_iter(match=f"{prefix}:*", count=1000)):
            client.delete(key)
    finally:
        client.close()


@pytest.fixture
def uri(topology: Topology, prefix: str) -> Iterator[str]:
    """The storage URI of this test on the parametrized topology."""
    with _storage_uri(topology, prefix) as storage:
        yield storage


@pytest.fixture
def cluster_uri(cluster_topology: Cluster, prefix: str) -> Iterator[str]:
    """The storage URI of this test on the cluster."""
    with _storage_uri(cluster_topology, prefix) as storage:
        yield storage


@pytest.fixture
def plain(topology: Topology) -> Iterator[PlainClient]:
    """A plain client of the topology, to look at (and age) what the library stored."""
    client = topology.client()
    yield client
    client.close()


@pytest.fixture
def cluster_client(cluster_topology: Cluster) -> Iterator[redis.cluster.RedisCluster]:
    """A plain cluster client."""
    client = cluster_topology.client()
    yield client
    client.close()


# ---------------------------------------------------------------- rate limits


async def _one() -> int:
    return 1


def _admitted_sync(policies: list[Policy]) -> int:
    admitted = 0
    for attempt in range(ATTEMPTS):
        try:
            policies[attempt % len(policies)].call(int)
        except RateLimitedError:
            continue
        admitted += 1
    return admitted


async def _admitted_async(policies: list[Policy]) -> int:
    admitted = 0
    for attempt in range(ATTEMPTS):
        try:
            await policies[attempt % len(policies)].call_async(_one)
        except RateLimitedError:
            continue
        admitted += 1
    return admitted


def _two_policies(uri: str, algorithm: Algorithm = "moving-window") -> list[Policy]:
    """Two policies built independently (as two processes would) over one named shared limit."""
    return [
        Policy(
            name=f"worker-{index}",
            rate_limit=RateLimit(f"{LIMIT}/minute", algorithm=algorithm, storage=uri, name="shared"),
        )
        for index in range(2)
    ]


def test_a_limit_is_shared_between_policies(uri: str) -> None:
    """Two independently built policies on one named limit admit exactly 5 calls of 5/minute in total."""
    assert _admitted_sync(_two_policies(uri)) == LIMIT


async def test_a_limit_is_shared_between_policies_async(uri: str) -> None:
    """The async path (redis.asyncio through limits' async+ storages) shares the same 5-call budget."""
    assert await _admitted_async(_two_policies(uri)) == LIMIT


def _limiter_keys(client: redis.cluster.RedisCluster, prefix: str) -> list[bytes]:
    return list(client.scan_iter(match=f"{prefix}:ratelimit:*", count=1000))


def _assert_one_slot(client: redis.cluster.RedisCluster, prefix: str, algorithm: Algorithm) -> None:
    """The limiter's keys exist and hash to one slot.

    Fixed and moving windows keep one key per limit; the sliding window's current and
    previous keys go together into one Lua script, which limits makes legal on a cluster by
    wrapping the key in braces (a hash tag): were they in two slots, the script would fail
    with CROSSSLOT, the storage would degrade, and the `cluster_uri` fixture would fail.
    """
    keys = _limiter_keys(client, prefix)
    assert keys, "nothing was stored in the cluster"
    assert all(f"/{algorithm}/".encode() in key for key in keys)
    assert len({key_slot(key) for key in keys}) == 1, keys


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_every_algorithm_on_the_cluster(
    cluster_uri: str, cluster_client: redis.cluster.RedisCluster, prefix: str, algorithm: Algorithm
) -> None:
    """Each algorithm admits exactly 5 calls across two policies on the cluster, its keys in one slot."""
    assert _admitted_sync(_two_policies(cluster_uri, algorithm)) == LIMIT
    _assert_one_slot(cluster_client, prefix, algorithm)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
async def test_every_algorithm_on_the_cluster_async(
    cluster_uri: str, cluster_client: redis.cluster.RedisCluster, prefix: str, algorithm: Algorithm
) -> None:
    """Each async algorithm admits exactly 5 calls across two policies on the cluster, its keys in one slot."""
    assert await _admitted_async(_two_policies(cluster_uri, algorithm)) == LIMIT
    _assert_one_slot(cluster_client, prefix, algorithm)


# ---------------------------------------------------------------- circuit breakers

THRESHOLD = 2
PROBES = 2
RESET_TIMEOUT = 30.0


def _breaker(uri: str) -> CircuitBreaker:
    return CircuitBreaker(
        name="dependency",
        failure_threshold=THRESHOLD,
        reset_timeout=RESET_TIMEOUT,
        half_open_max_calls=PROBES,
        storage=uri,
    )


def _independent_policy(uri: str, name: str) -> Policy:
    """A policy with its own breaker runtime, as in another process (the registry would share one)."""
    testing.forget_breakers()
    return Policy(name=name, breaker=_breaker(uri))


def _down() -> None:
    raise ConnectionError("down")


async def _adown() -> None:
    raise ConnectionError("down")


def _open_sync(uri: str) -> None:
    opener = _independent_policy(uri, "opener")
    for _ in range(THRESHOLD):
        with pytest.raises(ConnectionError):
            opener.call(_down)


async def _open_async(uri: str) -> None:
    opener = _independent_policy(uri, "opener")
    for _ in range(THRESHOLD):
        with pytest.raises(ConnectionError):
            await opener.call_async(_adown)


def _age(client: PlainClient, prefix: str) -> None:
    """Move the stored opened-at instant back by the reset timeout: Redis' clock, fast-forwarded."""
    client.hincrby(f"{prefix}:breaker:dependency:state", "o", -round(RESET_TIMEOUT * 1000) - 1)


def _stored_state(client: PlainClient, prefix: str) -> Any:
    return client.hget(f"{prefix}:breaker:dependency:state", "s")


def test_a_breaker_opened_through_one_policy_fails_fast_in_another(uri: str) -> None:
    """Failures through one policy open the shared breaker; another policy's runtime then fails fast without calling."""
    _open_sync(uri)
    calls: list[int] = []
    with pytest.raises(CircuitOpenError) as caught:
        _independent_policy(uri, "other").call(calls.append, 1)
    assert calls == []
    assert 0 < caught.value.retry_after <= RESET_TIMEOUT


async def test_a_breaker_opened_through_one_policy_fails_fast_in_another_async(uri: str) -> None:
    """The async path opens the shared breaker and another policy's runtime fails fast without calling."""
    await _open_async(uri)
    calls: list[int] = []

    async def record() -> None:
        calls.append(1)

    with pytest.raises(CircuitOpenError):
        await _independent_policy(uri, "other").call_async(record)
    assert calls == []


def test_half_open_admits_exactly_the_configured_probes(uri: str, plain: PlainClient, prefix: str) -> None:
    """After reset_timeout, three concurrent calls through two policies run exactly 2 probes; a success closes."""
    _open_sync(uri)
    _age(plain, prefix)
    first, second = _independent_policy(uri, "first"), _independent_policy(uri, "second")
    arrived: queue.Queue[str] = queue.Queue()
    release = threading.Event()

    def probe() -> None:
        arrived.put("probe")
        release.wait(WAIT)

    def attempt(policy: Policy) -> None:
        try:
            policy.call(probe)
        except CircuitOpenError:
            arrived.put("rejected")

    threads = [threading.Thread(target=attempt, args=(policy,)) for policy in (first, second, first)]
    for thread in threads:
        thread.start()
    try:
        outcomes = sorted(arrived.get(timeout=WAIT) for _ in threads)
    finally:
        release.set()
        for thread in threads:
            thread.join(WAIT)
    assert outcomes == ["probe"] * PROBES + ["rejected"]
    assert _stored_state(plain, prefix) == b"closed"


async def test_half_open_admits_exactly_the_configured_probes_async(uri: str, plain: PlainClient, prefix: str) -> None:
    """Async: three concurrent calls through two policies after reset_timeout run exactly 2 probes; a success closes."""
    await _open_async(uri)
    _age(plain, prefix)
    first, second = _independent_policy(uri, "first"), _independent_policy(uri, "second")
    outcomes: list[str] = []
    all_arrived, release = asyncio.Event(), asyncio.Event()

    def arrive(outcome: str) -> None:
        outcomes.append(outcome)
        if len(outcomes) == 3:
            all_arrived.set()

    async def probe() -> None:
        arrive("probe")
        await release.wait()

    async def attempt(policy: Policy) -> None:
        try:
            await policy.call_async(probe)
        except CircuitOpenError:
            arrive("rejected")

    tasks = [asyncio.create_task(attempt(policy)) for policy in (first, second, first)]
    try:
        await asyncio.wait_for(all_arrived.wait(), WAIT)
    finally:
        release.set()
        await asyncio.gather(*tasks)
    assert sorted(outcomes) == ["probe"] * PROBES + ["rejected"]
    assert _stored_state(plain, prefix) == b"closed"


# ---------------------------------------------------------------- a server that does not answer

DEGRADE_WITHIN = 2.0  # seconds: a few command timeouts, never a hang
RECOVERY_TIMEOUT = 15.0  # reconnect backoff tops out at 2 s; generous for a loaded host
NODE_TIMEOUT = 0.5  # the cluster test's command timeout: long enough to tell one from several


@contextmanager
def _expect_degradation(started: Topology, uri: str, prefix: str) -> Iterator[list[str]]:
    """The storage events of a fresh store on `uri`; afterwards it must have degraded and recovered."""
    seen: list[str] = []
    recovered = threading.Event()

    def listen(event: instrumentation.Event) -> None:
        if event.name in (EVENT_DEGRADED, EVENT_RECOVERED):
            seen.append(event.name)
        if event.name == EVENT_RECOVERED:
            recovered.set()

    close_stores()  # no pooled connection: the next call connects (and asks the Sentinel) anew
    instrumentation.add_listener(listen)
    try:
        yield seen
        assert recovered.wait(RECOVERY_TIMEOUT), "the storage never recovered once the server answered again"
        assert seen == [EVENT_DEGRADED, EVENT_RECOVERED]
    finally:
        instrumentation.remove_listener(listen)
        close_stores()
        gc.collect()
        _delete_prefix(started, prefix)


def _call_in_thread(policy: Policy, within: float) -> tuple[list[int], float | None]:
    """Call `policy` in a thread; (results, seconds taken, or None when still running after `within`)."""
    results: list[int] = []

    def run() -> None:
        results.append(policy.call(int))

    worker = threading.Thread(target=run)
    started = time.monotonic()
    worker.start()
    worker.join(within)
    elapsed = None if worker.is_alive() else time.monotonic() - started
    return results, elapsed


def _silent_limit(uri: str) -> Policy:
    return Policy(rate_limit=RateLimit(f"{LIMIT}/minute", storage=uri, name="silent"))


def test_a_silent_sentinel_degrades_instead_of_hanging(sentinel_topology: Sentinel, prefix: str) -> None:
    """A Sentinel that accepts connections but never answers costs a call a few timeouts, not a hang."""
    uri = f"{sentinel_topology.uri}?key_prefix={prefix}"
    with _expect_degradation(sentinel_topology, uri, prefix) as seen:
        with sentinel_topology.frozen():
            results, elapsed = _call_in_thread(_silent_limit(uri), DEGRADE_WITHIN)
        assert elapsed is not None, "the call waited on the silent Sentinel"
        assert results == [0]  # answered from local state
        assert seen[:1] == [EVENT_DEGRADED]


async def test_a_silent_sentinel_degrades_instead_of_hanging_async(sentinel_topology: Sentinel, prefix: str) -> None:
    """Async: a Sentinel that never answers costs a call a few timeouts, not a hang of the task."""
    uri = f"{sentinel_topology.uri}?key_prefix={prefix}"
    with _expect_degradation(sentinel_topology, uri, prefix) as seen:
        with sentinel_topology.frozen():
            assert await asyncio.wait_for(_silent_limit(uri).call_async(_one), DEGRADE_WITHIN) == 1
        assert seen[:1] == [EVENT_DEGRADED]


def _owner(cluster_topology: Cluster, client: redis.cluster.RedisCluster, prefix: str) -> int:
    """The port of the node holding the silent limit's moving-window key."""
    key = f"{prefix}:ratelimit:LIMITER/silent/moving-window//{LIMIT}/1/minute"
    port = int(client.nodes_manager.get_node_from_slot(key_slot(key.encode())).port)
    assert port in cluster_topology.ports
    return port


def test_a_silent_cluster_node_costs_one_timeout(
    cluster_topology: Cluster, cluster_client: redis.cluster.RedisCluster, prefix: str
) -> None:
    """A cluster node that stops answering costs a call one command timeout (no cluster retries), then local state."""
    uri = f"{cluster_topology.uri}?key_prefix={prefix}&timeout={NODE_TIMEOUT}"
    with _expect_degradation(cluster_topology, uri, prefix) as seen:
        policy = _silent_limit(uri)
        assert policy.call(int) == 0  # connected, slots known: the next call goes straight to the node
        with cluster_topology.frozen(_owner(cluster_topology, cluster_client, prefix)):
            results, elapsed = _call_in_thread(policy, DEGRADE_WITHIN)
        assert elapsed is not None, "the call waited on the silent node"
        assert elapsed < 2 * NODE_TIMEOUT, f"the call took {elapsed:.2f} s: the timeout was retried"
        assert results == [0]
        assert seen[:1] == [EVENT_DEGRADED]


async def test_a_silent_cluster_node_costs_one_timeout_async(
    cluster_topology: Cluster, cluster_client: redis.cluster.RedisCluster, prefix: str
) -> None:
    """Async: a cluster node that stops answering costs a call one command timeout, then local state."""
    uri = f"{cluster_topology.uri}?key_prefix={prefix}&timeout={NODE_TIMEOUT}"
    with _expect_degradation(cluster_topology, uri, prefix) as seen:
        policy = _silent_limit(uri)
        assert await policy.call_async(_one) == 1
        with cluster_topology.frozen(_owner(cluster_topology, cluster_client, prefix)):
            started = time.monotonic()
            assert await asyncio.wait_for(policy.call_async(_one), DEGRADE_WITHIN) == 1
            elapsed = time.monotonic() - started
        assert elapsed < 2 * NODE_TIMEOUT, f"the call took {elapsed:.2f} s: the timeout was retried"
        assert seen[:1] == [EVENT_DEGRADED]
