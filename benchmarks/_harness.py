"""Declarative cases and the timeit-style loop that measures them.

A case names what it measures and how to build it; building happens once, in ``setup``,
and only the zero-argument callable it returns is timed. Each case is calibrated so one
repeat lasts about ``Settings.target_seconds``, warmed up, then timed ``repeats`` times;
the figure kept is the median repeat divided by the loop count. The repeats of one
section's cases are interleaved (see `Runner`); async cases of a section share one event
loop, started once outside the timed loops, so no figure includes loop start-up.
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
Unit = Literal["ns", "instr"]  # what `Result.per_call` counts: nanoseconds, or instructions

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
    isolated: bool = False  # setup changes global state: measure it alone, not interleaved

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
    """What one case gave: a per-call cost in ``unit``, or the reason there is none."""

    case: Case
    per_call: float | None = None
    unit: Unit = "ns"
    loops: int = 0
    samples: tuple[int, ...] = ()  # "ns": each repeat's time; "instr": the totals of the N and 2N runs
    note: str = ""
    #: The case broke (its setup or its calls raised): unlike a peer not installed or Redis
    #: not running, that is a defect, and the runner exits non-zero (see `__main__.main`).
    failed: bool = False

    @property
    def ns_per_call(self) -> float | None:
        """The per-call time; None when there is none or the result counts something else."""
        return self.per_call if self.unit == "ns" else None


@dataclass(slots=True)
class Timing:
    """A case being measured: its callable, its loop count and the repeats taken so far."""

    case: Case
    bench: SyncBench
    loops: int = 0
    samples: list[int] = field(default_factory=list)
    error: str = ""

    def result(self) -> Result:
        if self.error:
            return Result(case=self.case, note=self.error, failed=True)
        median = statistics.median(self.samples)
        return Result(case=self.case, per_call=median / self.loops, loops=self.loops, samples=tuple(self.samples))


@dataclass(slots=True)
class Runner:
    """Measures cases batch by batch, installing the SDK once before the first "sdk" batch.

    A batch is one section's cases of one phase. Its repeats are interleaved (repeat 1 of
    every case, then repeat 2, ...), so a slow spell of the machine hits every row of a
    section alike and the ratios within it hold. A case whose setup changes global state
    (``isolated``) gets a batch of its own.
    """

    settings: Settings
    install_sdk: Callable[[], None]
    progress: Callable[[str], None] = field(default=lambda _line: None)
    _sdk_failure: str | None = None  # None until installed; then "" or why it failed
    _done: int = 0

    def run(self, cases: Sequence[Case]) -> list[Result]:
        measured: dict[int, Result] = {}
        for batch in batches(cases):
            for result in self._run_batch(batch, len(cases)):
                measured[id(result.case)] = result
        return [measured[id(case)] for case in cases]

    def _run_batch(self, batch: list[Case], total: int) -> list[Result]:
        failure = self._ensure_sdk() if batch[0].phase == "sdk" else ""
        if failure:
            results = [Result(case=case, note=failure) for case in batch]
        else:
            results = measure_batch(batch, self.settings)
        for result in results:
            self._done += 1
            self.progress(f"[{self._done}/{total}] {result.case.section} | {result.case.name}: {describe(result)}")
        return results

    def _ensure_sdk(self) -> str:
        if self._sdk_failure is None:
            try:
                self.install_sdk()
                self._sdk_failure = ""
            except Exception as exc:
                self._sdk_failure = f"n/a (OpenTelemetry SDK could not be installed: {exc})"
        return self._sdk_failure


def batches(cases: Sequence[Case]) -> list[list[Case]]:
    """Cases grouped by (phase, section, sync or async), "plain" batches first."""
    grouped: dict[tuple[object, ...], list[Case]] = {}
    for phase in ("plain", "sdk"):
        for case in cases:
            if case.phase == phase:
                key = (phase, case.section, case.is_async, id(case) if case.isolated else 0)
                grouped.setdefault(key, []).append(case)
    return list(grouped.values())


def measure_batch(cases: Sequence[Case], settings: Settings) -> list[Result]:
    """Build every case of a batch, time them interleaved, and report each one."""
    with ExitStack() as stack:
        built = [_build(case, stack) for case in cases]
        timings = [item for item in built if isinstance(item, Timing)]
        if timings:
            gc.collect()
            if cases[0].is_async:
                asyncio.run(_sample_async(timings, settings))  # one loop for the whole batch
            else:
                _sample_sync(timings, settings)
        return [item.result() if isinstance(item, Timing) else item for item in built]


def _build(case: Case, stack: ExitStack) -> Timing | Result:
    """The case's callable, or a row that says why there is none."""
    try:
        return Timing(case=case, bench=case.setup(stack))
    except UnavailableError as exc:
        return Result(case=case, note=f"n/a ({exc})")
    except ImportError as exc:
        return Result(case=case, note=f"n/a (not installed: {exc.name or exc})")
    except Exception as exc:
        return Result(case=case, note=f"n/a (setup failed: {type(exc).__name__}: {exc})", failed=True)


def _failed(timing: Timing, exc: Exception) -> None:
    timing.error = f"error ({type(exc).__name__}: {exc})"


def describe(result: Result) -> str:
    if result.per_call is None:
        return result.note
    return format_value(result.per_call, result.unit)


def format_value(value: float, unit: Unit) -> str:
    return format_duration(value) if unit == "ns" else format_count(value)


def format_duration(ns: float) -> str:
    """Three significant figures in the unit that keeps the number readable."""
    return _three_figures(ns, ((" s", 1e9), (" ms", 1e6), (" µs", 1e3), (" ns", 1.0)))


def format_count(instructions: float) -> str:
    """Three significant figures with a k, M or G suffix: "41.2k instr"."""
    return _three_figures(instructions, (("G instr", 1e9), ("M instr", 1e6), ("k instr", 1e3), (" instr", 1.0)))


def _three_figures(value: float, units: tuple[tuple[str, float], ...]) -> str:
    rounded = float(f"{value:.3g}")  # 999.7 is shown as "1 µs", not "1e+03 ns"
    suffix, scale = next(((suffix, scale) for suffix, scale in units if abs(rounded) >= scale), units[-1])
    return f"{rounded / scale:.3g}{suffix}"


def _loops_for(elapsed_ns: int, loops: int, target_ns: int) -> int | None:
    """The loop count that fills a repeat, once a run is long enough to extrapolate from."""
    if elapsed_ns < target_ns * CALIBRATION_FRACTION:
        return None
    return max(1, round(loops * target_ns / max(elapsed_ns, 1)))


def _sample_sync(timings: list[Timing], settings: Settings) -> None:
    for timing in timings:
        try:
            timing.loops = _calibrate_sync(timing.bench, settings.target_ns)
        except Exception as exc:
            _failed(timing, exc)
    for _ in range(settings.warmups + settings.repeats):
        for timing in (t for t in timings if not t.error):
            try:
                timing.samples.append(_time_sync(timing.bench, timing.loops))
            except Exception as exc:
                _failed(timing, exc)
    for timing in timings:
        del timing.samples[: settings.warmups]


def _calibrate_sync(bench: SyncBench, target_ns: int) -> int:
    loops = 1
    while (calibrated := _loops_for(_time_sync(bench, loops), loops, target_ns)) is None:
        loops *= CALIBRATION_GROWTH
    return calibrated


def _time_sync(bench: SyncBench, loops: int) -> int:
    start = time.perf_counter_ns()
    for _ in itertools.repeat(None, loops):
        bench()
    return time.perf_counter_ns() - start


async def _sample_async(timings: list[Timing], settings: Settings) -> None:
    for timing in timings:
        try:
            timing.loops = await _calibrate_async(cast("AsyncBench", timing.bench), settings.target_ns)
        except Exception as exc:
            _failed(timing, exc)
    for _ in range(settings.warmups + settings.repeats):
        for timing in (t for t in timings if not t.error):
            try:
                timing.samples.append(await _time_async(cast("AsyncBench", timing.bench), timing.loops))
            except Exception as exc:
                _failed(timing, exc)
    for timing in timings:
        del timing.samples[: settings.warmups]


async def _calibrate_async(bench: AsyncBench, target_ns: int) -> int:
    loops = 1
    while (calibrated := _loops_for(await _time_async(bench, loops), loops, target_ns)) is None:
        loops *= CALIBRATION_GROWTH
    return calibrated


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
