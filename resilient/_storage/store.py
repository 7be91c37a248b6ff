"""The health of each Redis that holds shared state: clients, degrading, reconnecting.

Storage URIs and the global default are in `_storage.config`; a runtime on ``memory://``
never touches this module after construction.

One `SharedStore` per distinct storage holds the clients and the health of that Redis.
A call that meets a Redis error switches the store to *degraded*: every runtime on it
uses its in-process state, `storage.degraded` is emitted once, and a daemon thread PINGs
with backoff until Redis answers, then emits `storage.recovered` and the runtimes go
back to the shared state. Calls never wait for Redis while it is degraded.

Async code gets its own clients per event loop (``redis.asyncio`` and limits' ``async+``
storages), so the loop is never blocked by a socket; those clients are closed when the
loop shuts down its async generators (``asyncio.run`` and ``asyncio.Runner`` do).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
import weakref
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from resilient._storage.config import StorageSpec, redis_module
from resilient.instrumentation._hub import HUB

__all__ = ["EVENT_DEGRADED", "EVENT_RECOVERED", "SharedStore", "close_stores", "store_for"]

EVENT_DEGRADED = "storage.degraded"
EVENT_RECOVERED = "storage.recovered"
RECONNECT_FIRST_DELAY = 0.05
RECONNECT_MAX_DELAY = 2.0

_log = logging.getLogger("resilient.storage")


# ---------------------------------------------------------------- clients and health


@dataclass(slots=True)
class _LoopClients:
    """The async clients of one event loop, closed when that loop shuts down."""

    limits_storage: Any
    client: Any
    scripts: dict[str, Any] = field(default_factory=dict)
    strategies: dict[str, Any] = field(default_factory=dict)
    closer: AsyncIterator[None] | None = None


class SharedStore:
    """One Redis: lazily built clients (sync, and per event loop), health, reconnection."""

    def __init__(self, spec: StorageSpec) -> None:
        self.spec = spec
        redis = redis_module("storage", spec.uri)
        #: What a Redis call may raise when Redis is down, slow or confused: degrade on it.
        self.errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError)
        self.healthy = True
        self._lock = threading.Lock()
        self._sync: Any = None
        self._sync_scripts: dict[str, Any] = {}
        self._sync_strategies: dict[str, Any] = {}
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopClients] = weakref.WeakKeyDictionary()
        self._stop = threading.Event()
        self._reconnector: threading.Thread | None = None

    # -- options shared by every client --------------------------------------------

    def _options(self, *, asynchronous: bool) -> dict[str, Any]:
        """Short timeouts on every call; one immediate retry on a broken connection only.

        A pooled connection that Redis closed (a restart) fails its next command at once:
        retrying that once on a fresh connection is what separates "Redis restarted" from
        "Redis is down". Timeouts are never retried (that would double the wait); the
        default redis-py retries (3, with backoff) would make a dead Redis cost seconds.
        A cluster client cannot tell the two apart, so it does not retry at all.
        """
        from redis.asyncio.retry import Retry as AsyncRetry  # noqa: PLC0415 - optional dependency
        from redis.backoff import NoBackoff  # noqa: PLC0415
        from redis.exceptions import ConnectionError as RedisConnectionError  # noqa: PLC0415
        from redis.retry import Retry  # noqa: PLC0415

        retry = AsyncRetry if asynchronous else Retry
        options: dict[str, Any] = {
            "key_prefix": f"{self.spec.key_prefix}:ratelimit",
            "socket_timeout": self.spec.timeout,
            "socket_connect_timeout": self.spec.connect_timeout,
        }
        if self.spec.scheme == "redis+cluster":
            # The cluster client retries a command on any node error (timeouts included)
            # after re-reading the slot layout, 3 times by default: a silent node cost a sync
            # call over a second. Its `retry` sets only that count (its nodes never retry).
            options["retry"] = retry(NoBackoff(), 0)
            return options
        options["retry"] = retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,))
        if self.spec.scheme == "redis+sentinel":
            # Every new connection asks a Sentinel where the master is. limits hands the
            # Sentinels `sentinel_kwargs={}`, so without these they would get no timeout at
            # all (a silent Sentinel hung the call) and redis-py's default retries.
            options["sentinel_kwargs"] = {
                "socket_timeout": self.spec.timeout,
                "socket_connect_timeout": self.spec.connect_timeout,
                "retry": retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
            }
        return options

    # -- sync ---------------------------------------------------------------------------

    def limits_storage(self) -> Any:
        """The sync `limits` storage (its redis-py client is shared with the breakers)."""
        storage = self._sync
        if storage is None:
            with self._lock:
                if self._sync is None:
                    from limits.storage import storage_from_string  # noqa: PLC0415

                    self._sync = storage_from_string(self.spec.uri, **self._options(asynchronous=False))
                storage = self._sync
        return storage

    def client(self) -> Any:
        """The sync redis-py client."""
        return self.limits_storage().get_connection()

    def script(self, name: str, source: str) -> Any:
        """A registered Lua script on the sync client (EVALSHA, reloaded after a flush)."""
        script = self._sync_scripts.get(name)
        if script is None:
            script = self._sync_scripts[name] = self.client().register_script(source)
        return script

    def strategy(self, algorithm: str, kinds: dict[str, Any]) -> Any:
        """The sync `limits` strategy of `algorithm` over this storage."""
        strategy = self._sync_strategies.get(algorithm)
        if strategy is None:
            strategy = self._sync_strategies[algorithm] = kinds[algorithm](self.limits_storage())
        return strategy

    # -- async (one set per running loop) -----------------------------------------------

    def loop_clients(self) -> _LoopClients:
        """The async clients of the running loop, created on first use in that loop."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise RuntimeError(_NOT_ASYNCIO.format(storage=self.spec.shown)) from None
        clients = self._loops.get(loop)
        if clients is None:
            clients = self._loops[loop] = self._new_loop_clients()
        return clients

    def _new_loop_clients(self) -> _LoopClients:
        from limits.storage import storage_from_string  # noqa: PLC0415

        options = self._options(asynchronous=True)
        storage: Any = storage_from_string(f"async+{self.spec.uri}", implementation="redispy", **options)
        clients = _LoopClients(limits_storage=storage, client=storage.bridge.get_connection())
        # The loop tracks (weakly) every async generator started in it and closes them at
        # shutdown (`loop.shutdown_asyncgens()`, called by asyncio.run and Runner): the
        # one place to close this loop's connections from inside it, without a task.
        closer = _close_at_loop_shutdown(self, clients)
        clients.closer = closer
        # Start the generator so the loop tracks it; it parks at its first `yield`.
        with contextlib.suppress(StopIteration):
            closer.asend(None).send(None)  # type: ignore[attr-defined]
        return clients

    def forget_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """Drop a loop's clients (they were closed with the loop)."""
        with contextlib.suppress(KeyError):
            del self._loops[loop]

    def async_script(self, name: str, source: str) -> Any:
        """A registered Lua script on the running loop's client."""
        clients = self.loop_clients()
        script = clients.scripts.get(name)
        if script is None:
            script = clients.scripts[name] = clients.client.register_script(source)
        return script

    def async_strategy(self, algorithm: str, kinds: dict[str, Any]) -> Any:
        """The `limits.aio` strategy of `algorithm` for the running loop."""
        clients = self.loop_clients()
        strategy = clients.strategies.get(algorithm)
        if strategy is None:
            strategy = clients.strategies[algorithm] = kinds[algorithm](clients.limits_storage)
        return strategy

    # -- health ---------------------------------------------------------------------------

    def degrade(self, error: BaseException, label: str) -> None:
        """Redis failed a call: use local state, say so once, reconnect in the background."""
        with self._lock:
            if not self.healthy:
                return
            self.healthy = False
            self._stop.clear()
            thread = threading.Thread(target=self._reconnect, name="resilient-storage-reconnect", daemon=True)
            self._reconnector = thread
        reason = f"{type(error).__name__}: {error}"
        HUB.emit(EVENT_DEGRADED, label, logging.WARNING, error, storage=self.spec.shown, reason=reason[:300])
        thread.start()

    def _reconnect(self) -> None:
        """PING with jittered exponential backoff until Redis answers (or the store closes)."""
        delay = RECONNECT_FIRST_DELAY
        while not self._stop.wait(delay * random.uniform(0.5, 1.0)):  # noqa: S311 - jitter, not crypto
            try:
                self.client().ping()
            except Exception as error:
                _log.debug("storage %s still unreachable: %s", self.spec.shown, error)
                delay = min(delay * 2, RECONNECT_MAX_DELAY)
                continue
            with self._lock:
                self.healthy = True
            HUB.emit(EVENT_RECOVERED, "storage", logging.WARNING, storage=self.spec.shown)
            return

    def close(self) -> None:
        """Stop reconnecting and close the sync clients (async ones close with their loop)."""
        self._stop.set()
        thread = self._reconnector
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)
        with self._lock:
            storage, self._sync = self._sync, None
            self._sync_scripts.clear()
            self._sync_strategies.clear()
            self.healthy = True
        if storage is not None:
            for client in _redis_clients(storage):
                client.close()


_NOT_ASYNCIO = (
    "shared storage {storage} on an async path needs asyncio (redis.asyncio), and no asyncio loop runs here"
    " (trio?): use in-process state on trio, or call a sync policy from a worker thread"
)


async def _close_at_loop_shutdown(store: SharedStore, clients: _LoopClients) -> AsyncIterator[None]:
    # Holds no reference to the loop: the store maps loops to clients weakly.
    try:
        yield
    finally:
        store.forget_loop(asyncio.get_running_loop())
        for client in _redis_clients(clients.limits_storage.bridge):
            with contextlib.suppress(Exception):
                await _aclose(client)


async def _aclose(client: Any) -> None:
    await client.aclose()
    nodes = getattr(client, "nodes_manager", None)
    if nodes is not None:
        # redis.asyncio's RedisCluster.aclose() does nothing once a node error has marked
        # the client for re-initialization (redis-py 8.1), leaving every connection open.
        await nodes.aclose()
        await nodes.aclose("startup_nodes")


def _redis_clients(holder: Any) -> list[Any]:
    """Every redis-py client a `limits` storage (sync) or bridge (async) holds.

    One for ``redis://`` and ``redis+cluster://``; a Sentinel storage also has a replica
    client and one client per Sentinel, each with connections of its own to close.
    """
    found = [holder.storage, getattr(holder, "storage_slave", None), getattr(holder, "storage_replica", None)]
    sentinel = getattr(holder, "sentinel", None)
    if sentinel is not None:
        found.extend(sentinel.sentinels)
    return [client for client in found if client is not None]


_STORES: dict[StorageSpec, SharedStore] = {}
_STORES_LOCK = threading.Lock()


def store_for(spec: StorageSpec) -> SharedStore:
    """The one store of this storage in the process."""
    with _STORES_LOCK:
        store = _STORES.get(spec)
        if store is None:
            store = _STORES[spec] = SharedStore(spec)
        return store


def close_stores() -> None:
    """Close every store's sync clients and stop its reconnection thread (tests, shutdown)."""
    with _STORES_LOCK:
        stores = list(_STORES.values())
    for store in stores:
        store.close()
