"""What the reliability scenarios share: figures out, percentiles, resource counts, fault decks.

Each scenario prints one ``FIGURES scenario=... key=value ...`` line (seen with ``pytest -s``)
and adds the same figures to a JSON file (its path is printed once per session).
"""

from __future__ import annotations

import gc
import json
import logging
import math
import random
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from resilient.instrumentation._log import LOGGER_NAME
from resilient.testing import Fault, ReceivedRequest
from tests._metrics import metric_points

__all__ = [
    "Figures",
    "MetricDelta",
    "OutcomeDeck",
    "hanging_upstream_process",
    "heap_frozen",
    "library_logs_dropped",
    "open_fds",
    "percentile",
]

Figure = int | float | str | bool


class Figures:
    """Collects each scenario's figures: printed as one line and kept in a JSON file."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / "figures.json"
        self._all: dict[str, dict[str, Figure]] = {}
        self._lock = threading.Lock()
        self._announced = False

    def report(self, scenario: str, **values: Figure) -> None:
        """Print ``FIGURES scenario=<scenario> k=v ...`` and store the figures under `scenario`."""
        shown = {key: _rounded(value) for key, value in values.items()}
        line = " ".join([f"FIGURES scenario={scenario}", *(f"{key}={value}" for key, value in shown.items())])
        with self._lock:
            self._all[scenario] = shown
            self.path.write_text(json.dumps(self._all, indent=2, sort_keys=True) + "\n")
            if not self._announced:
                self._announced = True
                print(f"\nFIGURES-JSON {self.path}")  # noqa: T201 - the figures are the scenario's output
            print(f"\n{line}")  # noqa: T201


def _rounded(value: Figure) -> Figure:
    if isinstance(value, float) and not isinstance(value, bool):
        return round(value, 6) if abs(value) < 1 else round(value, 4)
    return value


def percentile(values: list[float], q: float) -> float:
    """The nearest-rank `q` percentile (0 < q <= 100) of `values`."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    rank = max(math.ceil(q / 100 * len(ordered)), 1)
    return ordered[min(rank, len(ordered)) - 1]


def open_fds() -> int:
    """File descriptors open in this process right now (Linux: /proc/self/fd)."""
    return sum(1 for _ in Path("/proc/self/fd").iterdir())


class OutcomeDeck:
    """Exactly `faulty` of every `block` requests fail, at seeded random positions.

    A shuffled deck rather than independent draws: the fault rate is exact over every block,
    so the figures measure the library and not the luck of the dice, while runs of
    consecutive faults still happen as they would at random. The failing requests get the
    `faults` in rotation. Called on the upstream's loop thread only (no lock needed).
    """

    def __init__(self, faults: Sequence[Fault], faulty: int, block: int, *, seed: int, ok: Fault | None = None) -> None:
        self._faults = list(faults)
        self._ok = ok or Fault.ok()
        self._faulty = faulty
        self._block = block
        self._random = random.Random(seed)
        self._deck: list[bool] = []
        self.faults = 0
        self.served = 0

    def __call__(self, _request: ReceivedRequest) -> Fault:
        if not self._deck:
            self._deck = [True] * self._faulty + [False] * (self._block - self._faulty)
            self._random.shuffle(self._deck)
        self.served += 1
        if self._deck.pop():
            self.faults += 1
            return self._faults[self.faults % len(self._faults)]
        return self._ok


class MetricDelta:
    """What one metric counted between construction and `by()`, per value of one attribute."""

    def __init__(self, reader: InMemoryMetricReader, name: str) -> None:
        self._reader = reader
        self._name = name
        self._before = metric_points(reader, name)

    def by(self, attribute: str, **where: Any) -> dict[str, float]:
        """Counted since construction, grouped by `attribute`, among points matching `where`."""
        totals: dict[str, float] = {}
        for key, value in metric_points(self._reader, self._name).items():
            attrs: Mapping[str, Any] = dict(key)
            if any(attrs.get(k) != v for k, v in where.items()):
                continue
            delta = value - self._before.get(key, 0.0)
            if delta:
                group = str(attrs.get(attribute))
                totals[group] = totals.get(group, 0.0) + delta
        return totals


_HANGING_SERVER = """
import sys
from resilient.testing import Fault, FaultyUpstream

with FaultyUpstream(default=Fault.hang({hang}), max_lifetime={lifetime}, max_recorded=1) as upstream:
    print(upstream.port, flush=True)
    sys.stdin.read()  # serve until the parent closes our stdin
"""


@contextmanager
def heap_frozen() -> Iterator[list[float]]:
    """Freeze what the test session allocated so far out of the collector's reach; yield GC pauses.

    After a thousand tests the heap is large and a full collection of it can stall every
    thread for tens of milliseconds, whatever the code under test does (`gc.freeze`, meant
    for exactly this). Garbage the scenario itself makes is still collected; the pauses
    that happen meanwhile are yielded (seconds each) so they can be reported.
    """
    pauses: list[float] = []
    started: list[float] = []

    def watch(phase: str, _info: dict[str, int]) -> None:
        if phase == "start":
            started.append(time.perf_counter())
        elif started:
            pauses.append(time.perf_counter() - started.pop())

    gc.collect()
    gc.freeze()
    gc.callbacks.append(watch)
    try:
        yield pauses
    finally:
        gc.callbacks.remove(watch)
        gc.unfreeze()


@contextmanager
def library_logs_dropped() -> Iterator[None]:
    """The library's log records are made as usual, then dropped instead of kept by pytest.

    Leak scenarios log a warning per timed-out call; pytest's log capture would keep every
    record and the memory figures would measure the test harness instead of the library.
    """
    logger = logging.getLogger(LOGGER_NAME)
    handler = logging.NullHandler()
    propagate = logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield
    finally:
        logger.propagate = propagate
        logger.removeHandler(handler)


@contextmanager
def hanging_upstream_process(*, hang: float, lifetime: float = 120.0) -> Iterator[str]:
    """A `FaultyUpstream` answering nothing for `hang` seconds per request, in a child process.

    In a child so that its sockets, threads and memory are not counted as ours when a
    scenario measures what *the client side* leaves behind. Yields its base URL; the child
    is always stopped (stdin closed, then killed if it lingers).
    """
    code = _HANGING_SERVER.format(hang=hang, lifetime=lifetime)
    child = subprocess.Popen(  # noqa: S603 - our own interpreter, a fixed script
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        port = int(child.stdout.readline())
        yield f"http://127.0.0.1:{port}"
    finally:
        if child.stdin is not None:
            child.stdin.close()
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait(timeout=10)
        if child.stdout is not None:
            child.stdout.close()
