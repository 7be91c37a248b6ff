"""Declarative cases and the timeit-style loop that measures them.

A case names what it measures and how to build it; building happens once, in ``setup``,
and only the zero-argument callable it returns is timed. Each case is calibrated so one
repeat lasts about ``Settings.target_seconds``, warmed up, then timed ``repeats`` times;
the figure kept is the median repeat divided by the loop count.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Literal, cast

SyncBench = Callable[[], object]
AsyncBench = Callable[[], Awaitable[object]]
Setup = Callable[[ExitStack], SyncBench]
Phase = Literal["plain", "sdk"]

NS_PER_SECOND = 1_000_000_000
CALIBRATION_FRACTION = 0.1  # calibrate on runs lasting at least this share of a repeat
CALIBRATION_GROWTH = 4


class UnavailableError(Exception):
    """A case cannot run here; the message is what the table prints after "n/a"."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Case:
    """One row of the table: what is measured, how to build it, what to compare it with."""

    section: str
    name: str
    setup: Setup
    is_async: bool = False
    baseline: bool = False
    peers: tuple[str, ...] = ()  # names of rows in the same section to compare overheads with
    tag: str = ""  # short label when another row names this one as a peer
    phase: Phase = "plain"  # "sdk" rows run after the OpenTelemetry SDK is installed

    @property
    def label(self) -> str:
        return self.tag or self.name


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """How long one repeat lasts and how many repeats are kept."""

    target_seconds: float
    repeats: int
    warmups: int = 1

    @property
    def target_ns(self) -> int:
        return int(self.target_seconds * NS_PER_SECOND)


QUICK = Settings(target_seconds=0.02, repeats=5)
FULL = Settings(target_seconds=0.2, repeats=7)


@dataclass(frozen=True, slots=True, kw_only=True)
class Result:
    """What one case gave: a per-call time, or the reason there is none."""

    case: Case
    ns_per_call: float | None = None
    loops: int = 0
    samples_ns: tuple[int, ...] = ()
    note: str = ""


@dataclass(slots=True)
class Runner:
    """Measures cases in order, installing the SDK once before the first "sdk" case."""

    settings: Settings
    install_sdk: Callable[[], None]
    progress: Callable[[str], None] = field(default=lambda _line: None)
    _sdk_failure: str | None = None  # None until installed; then "" or why it failed

    def run(self, cases: Sequence[Case]) -> list[Result]:
        ordered = [c for c in cases if c.phase == "plain"] + [c for c in cases if c.phase == "sdk"]
        measured = {id(case): self._run_one(case, number, len(ordered)) for number, case in enumerate(ordered, 1)}
        return [measured[id(case)] for case in cases]

    def _run_one(self, case: Case, number: int, total: int) -> Result:
        failure = self._ensure_sdk() if case.phase == "sdk" else ""
        result = Result(case=case, note=failure) if failure else measure_case(case, self.settings)
        self.progress(f"[{number}/{total}] {case.section} | {case.name}: {describe(result)}")
        return result

    def _ensure_sdk(self) -> str:
        if self._sdk_failure is None:
            try:
                self.install_sdk()
                self._sdk_failure = ""
            except Exception as exc:
                self._sdk_failure = f"n/a (OpenTelemetry SDK could not be installed: {exc})"
        return self._sdk_failure


def measure_case(case: Case, settings: Settings) -> Result:
    """Build the case, time it, and turn any failure into a row that says why."""
    with ExitStack() as stack:
        try:
            bench = case.setup(stack)
        except UnavailableError as exc:
            return Result(case=case, note=f"n/a ({exc})")
        except ImportError as exc:
            return Result(case=case, note=f"n/a (not installed: {exc.name or exc})")
        except Exception as exc:
            return Result(case=case, note=f"n/a (setup failed: {type(exc).__name__}: {exc})")
        try:
            loops, samples = _measure(bench, case.is_async, settings)
        except Exception as exc:
            return Result(case=case, note=f"error ({type(exc).__name__}: {exc})")
    median = statistics.median(samples)
    return Result(case=case, ns_per_call=median / loops, loops=loops, samples_ns=samples)


def describe(result: Result) -> str:
    if result.ns_per_call is None:
        return result.note
    return format_duration(result.ns_per_call)


def format_duration(ns: float) -> str:
    """Three significant figures in the unit that keeps the number readable."""
    for unit, scale in (("s", 1e9), ("ms", 1e6), ("µs", 1e3)):
        if ns >= scale:
            return f"{ns / scale:.3g} {unit}"
    return f"{ns:.3g} ns"


def _measure(bench: SyncBench, is_async: bool, settings: Settings) -> tuple[int, tuple[int, ...]]:
    gc.collect()
    if is_async:
        return asyncio.run(_measure_async(cast("AsyncBench", bench), settings))
    return _measure_sync(bench, settings)


def _loops_for(elapsed_ns: int, loops: int, target_ns: int) -> int | None:
    """The loop count that fills a repeat, once a run is long enough to extrapolate from."""
    if elapsed_ns < target_ns * CALIBRATION_FRACTION:
        return None
    return max(1, round(loops * target_ns / max(elapsed_ns, 1)))


def _measure_sync(bench: SyncBench, settings: Settings) -> tuple[int, tuple[int, ...]]:
    loops = 1
    while (calibrated := _loops_for(_time_sync(bench, loops), loops, settings.target_ns)) is None:
        loops *= CALIBRATION_GROWTH
    for _ in range(settings.warmups):
        _time_sync(bench, calibrated)
    return calibrated, tuple(_time_sync(bench, calibrated) for _ in range(settings.repeats))


def _time_sync(bench: SyncBench, loops: int) -> int:
    start = time.perf_counter_ns()
    for _ in itertools.repeat(None, loops):
        bench()
    return time.perf_counter_ns() - start


async def _measure_async(bench: AsyncBench, settings: Settings) -> tuple[int, tuple[int, ...]]:
    loops = 1
    while (calibrated := _loops_for(await _time_async(bench, loops), loops, settings.target_ns)) is None:
        loops *= CALIBRATION_GROWTH
    for _ in range(settings.warmups):
        await _time_async(bench, calibrated)
    samples = [await _time_async(bench, calibrated) for _ in range(settings.repeats)]
    return calibrated, tuple(samples)


async def _time_async(bench: AsyncBench, loops: int) -> int:
    start = time.perf_counter_ns()
    for _ in itertools.repeat(None, loops):
        await bench()
    return time.perf_counter_ns() - start


def select(cases: Sequence[Case], only: str | None) -> list[Case]:
    """Cases whose section or name contains ``only``, with the rows they are compared to."""
    if not only:
        return list(cases)
    needle = only.casefold()
    chosen = [c for c in cases if needle in f"{c.section} {c.name}".casefold()]
    wanted = {(c.section, peer) for c in chosen for peer in c.peers}
    sections = {c.section for c in chosen}
    chosen_ids = {id(c) for c in chosen}
    return [
        c
        for c in cases
        if id(c) in chosen_ids or (c.section, c.name) in wanted or (c.baseline and c.section in sections)
    ]


def print_progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
