"""Private Redis topologies for the tests: a Sentinel watching a master, a 3-node Cluster.

Every server runs on 127.0.0.1 on a free port, with its data in a temporary directory and
persistence off. Readiness is read from the server's own log ("Ready to accept
connections", drained by a thread so a chatty server never blocks on a full pipe), and
the topology's readiness by asking it with ``redis-cli`` in a bounded loop.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import redis
import redis.cluster

from tests._redis_workers import free_port

READY_TIMEOUT = 15.0
_POLL = 0.05
_QUIET = ("--save", "", "--appendonly", "no")


@dataclass(frozen=True, slots=True)
class Binaries:
    """Where redis-server and redis-cli are."""

    server: str
    cli: str


def find_binaries() -> Binaries | None:
    """redis-server and redis-cli from PATH, or None when either is missing."""
    server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    return None if server is None or cli is None else Binaries(server, cli)


class ServerProcess:
    """One redis-server (or sentinel) process whose log is drained by a thread until it exits."""

    def __init__(self, argv: list[str], port: int, ready_line: str = "Ready to accept connections") -> None:
        self.port = port
        self._ready_line = ready_line
        self.ready = threading.Event()
        self.log: deque[str] = deque(maxlen=50)
        self.process = subprocess.Popen(  # noqa: S603 - fixed argv, loopback only
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self._drainer = threading.Thread(target=self._drain, name=f"redis-log-{port}", daemon=True)
        self._drainer.start()

    def _drain(self) -> None:
        stdout = self.process.stdout
        assert stdout is not None
        for line in stdout:
            self.log.append(line.rstrip())
            if self._ready_line in line:
                self.ready.set()

    def wait_ready(self) -> None:
        """Return once the server logged that it accepts connections; raise if it did not."""
        if not self.ready.wait(READY_TIMEOUT):
            raise RuntimeError(f"redis on port {self.port} did not become ready:\n" + "\n".join(self.log))

    def stop(self) -> None:
        """Terminate the process (resumed first, were it stopped), wait for it, and close its pipe."""
        self.process.send_signal(signal.SIGCONT)
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        self._drainer.join(timeout=10)
        if self.process.stdout is not None:
            self.process.stdout.close()


def _start_server(binaries: Binaries, workdir: Path, port: int, *extra: str) -> ServerProcess:
    argv = [binaries.server, "--bind", "127.0.0.1", "--port", str(port), *_QUIET, "--dir", str(workdir), *extra]
    return ServerProcess(argv, port)


def cli(binaries: Binaries, *args: str) -> str:
    """Run redis-cli with `args`; its output (empty when it failed)."""
    result = subprocess.run(  # noqa: S603 - fixed argv, loopback only
        [binaries.cli, *args], capture_output=True, text=True, timeout=READY_TIMEOUT, check=False
    )
    return result.stdout if result.returncode == 0 else ""


def wait_for(what: str, answered: Callable[[], bool]) -> None:
    """Ask `answered` in a bounded loop until it is true; raise after `READY_TIMEOUT`."""
    deadline = time.monotonic() + READY_TIMEOUT
    while not answered():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(_POLL)  # between two polls of the server, not a wait for readiness


@dataclass(frozen=True, slots=True)
class Sentinel:
    """A running master and the Sentinel that monitors it as `service`."""

    master_port: int
    sentinel_port: int
    watcher: ServerProcess
    service: str = "mymaster"

    @contextmanager
    def frozen(self) -> Iterator[None]:
        """The Sentinel stopped (SIGSTOP): it accepts connections but never answers; resumed after."""
        self.watcher.process.send_signal(signal.SIGSTOP)
        try:
            yield
        finally:
            self.watcher.process.send_signal(signal.SIGCONT)

    @property
    def uri(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.sentinel_port}/{self.service}"

    def client(self) -> redis.Redis:
        """A plain client on the master, to look at (and age) what the library stored."""
        return redis.Redis(host="127.0.0.1", port=self.master_port)


@contextmanager
def sentinel(binaries: Binaries, workdir: Path) -> Iterator[Sentinel]:
    """A master and a Sentinel (quorum 1) monitoring it as ``mymaster``; both always stopped."""
    master_port, sentinel_port = free_port(), free_port()
    master_dir, sentinel_dir = workdir / "master", workdir / "sentinel"
    master_dir.mkdir()
    sentinel_dir.mkdir()
    conf = sentinel_dir / "sentinel.conf"  # Sentinel rewrites its config: it must be writable
    conf.write_text(
        f"port {sentinel_port}\n"
        "bind 127.0.0.1\n"
        f"dir {sentinel_dir}\n"
        "sentinel resolve-hostnames no\n"
        f"sentinel monitor mymaster 127.0.0.1 {master_port} 1\n"
        "sentinel down-after-milliseconds mymaster 5000\n"
    )
    with ExitStack() as stack:
        master = _start_server(binaries, master_dir, master_port)
        stack.callback(master.stop)
        master.wait_ready()
        # A Sentinel logs no "Ready to accept connections"; it is listening once it monitors.
        watcher = ServerProcess([binaries.server, str(conf), "--sentinel"], sentinel_port, "+monitor master mymaster")
        stack.callback(watcher.stop)
        watcher.wait_ready()
        address = ["127.0.0.1", str(master_port)]
        ask = ("-p", str(sentinel_port), "sentinel", "get-master-addr-by-name", "mymaster")
        wait_for("the sentinel to know mymaster", lambda: cli(binaries, *ask).split() == address)
        yield Sentinel(master_port, sentinel_port, watcher)


@dataclass(frozen=True, slots=True)
class Cluster:
    """A running 3-primary Redis Cluster."""

    ports: tuple[int, ...]
    nodes: tuple[ServerProcess, ...]

    @contextmanager
    def frozen(self, port: int) -> Iterator[None]:
        """The node on `port` stopped (SIGSTOP): connected clients time out; resumed after."""
        node = self.nodes[self.ports.index(port)]
        node.process.send_signal(signal.SIGSTOP)
        try:
            yield
        finally:
            node.process.send_signal(signal.SIGCONT)

    @property
    def uri(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{port}" for port in self.ports)

    def client(self) -> redis.cluster.RedisCluster:
        """A plain cluster client, to look at (and age) what the library stored."""
        return redis.cluster.RedisCluster(host="127.0.0.1", port=self.ports[0])


@contextmanager
def cluster(binaries: Binaries, workdir: Path, size: int = 3) -> Iterator[Cluster]:
    """`size` cluster-enabled servers joined into one cluster with no replicas; always stopped."""
    ports = tuple(free_port() for _ in range(size))
    with ExitStack() as stack:
        nodes: list[ServerProcess] = []
        for port in ports:
            node_dir = workdir / f"node-{port}"
            node_dir.mkdir()
            node = _start_server(
                binaries,
                node_dir,
                port,
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                str(node_dir / f"nodes-{port}.conf"),
                "--cluster-node-timeout",
                "2000",
                # The bus port defaults to port + 10000, which a free port above 55535 cannot have.
                "--cluster-port",
                str(free_port()),
            )
            stack.callback(node.stop)
            nodes.append(node)
        for node in nodes:
            node.wait_ready()
        members = [f"127.0.0.1:{port}" for port in ports]
        created = subprocess.run(  # noqa: S603 - fixed argv, loopback only
            [binaries.cli, "--cluster", "create", *members, "--cluster-replicas", "0", "--cluster-yes"],
            capture_output=True,
            text=True,
            timeout=READY_TIMEOUT * 2,
            check=False,
        )
        if created.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed:\n{created.stdout}\n{created.stderr}")
        for port in ports:
            wait_for(
                f"cluster_state:ok on {port}",
                lambda port=port: "cluster_state:ok" in cli(binaries, "-p", str(port), "cluster", "info"),  # type: ignore[misc]
            )
        yield Cluster(ports, tuple(nodes))
