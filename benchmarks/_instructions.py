"""``python -m benchmarks --instructions``: instructions per call, counted by callgrind.

Overheads of a few microseconds on a request of tens drown in wall-clock noise; instruction
counts do not, whatever else the machine does. Each case runs in two child processes
(`benchmarks._instructions_child`) under ``valgrind --tool=callgrind``: one calls it N
times, the other 2N times, after the same interpreter start, imports, setup and (async
cases) event loop start. The difference of the two processes' totals, over N, is the cost
of one call, the first N calls of the longer run serving as its warm-up:
``(I(2N) - I(N)) / N``. The two runs of a case go side by side, cases one after another.

How far the counts repeat: with hashes and `random` fixed, the same case and N counted
twice in a row gives the same figure to within an instruction or so. Runs minutes apart
differ more: the per-call figure of an httpx request (~600k) has moved by up to ~0.3%.
The counts depend on the heap layout: CPython's type attribute cache is indexed by the
addresses of attribute-name strings, so which lookups miss it (and walk the MRO) changes
with where objects land, and that changes with the hash seed and with any edit to the code
measured. One layout can favour one case by ~2k instructions a request: a ratio of two
overheads of ~10k each (resilient against httpx-retries) moved between 1.5x and 2.2x over
five hash seeds. ``--seeds K`` therefore counts each case under hash seeds 0..K-1 and
reports the mean per call, so no single layout decides a small ratio; large overheads
hold to about 1% with one seed. Larger N would not help: it only dilutes what differs
between the two processes of a pair, small already. N is the loop count the
timing runner would pick for a 25 ms repeat, found by timing every case in this process
first, kept within 300..20,000 (~300 for an httpx request, 20,000 for a bare call), and
to calls lasting ~1 s natively in all: section 8's runs mostly sleep, which valgrind does
not slow down or speed up (a pybreaker run lasts 0.4 s). The probe also turns cases that
cannot run here (no Redis, a peer not installed) into "n/a" rows without starting valgrind.

Caveat: under callgrind code runs ~50x slower, so work done once per period of wall time
(a rate-limit window turning over, a sleep) weighs ~50x more per call than it does natively.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks._harness import Case, Result, Runner, Settings, describe

PROBE = Settings(target_seconds=0.025, repeats=1, warmups=0)
MIN_LOOPS = 300
MAX_LOOPS = 20_000
MAX_NATIVE_NS = 1_000_000_000  # N calls last at most ~1 s natively: a sleep is no shorter under valgrind
EVENT = "Ir"  # callgrind's name for instructions executed
CHILD_MODULE = "benchmarks._instructions_child"
ROOT = Path(__file__).resolve().parent.parent  # the directory holding benchmarks/
VALGRIND_MISSING = (
    "--instructions needs valgrind (its callgrind tool counts the instructions), "
    "and no `valgrind` is on PATH: install it, e.g. `apt-get install valgrind`"
)


class CountError(Exception):
    """A child run failed or left no totals; the message is what its row prints."""


def find_valgrind() -> str | None:
    return shutil.which("valgrind")


def valgrind_version(valgrind: str) -> str:
    completed = subprocess.run([valgrind, "--version"], capture_output=True, text=True, check=False)  # noqa: S603
    return completed.stdout.strip() or "valgrind"


def method(version: str, seeds: int = 1) -> str:
    """What the table header says about how its figures were obtained."""
    layouts = "hash seed 0" if seeds == 1 else f"mean over hash seeds 0..{seeds - 1}"
    return (
        f"instructions per call ({version} --tool=callgrind, (I(2N)-I(N))/N, {layouts}, "
        f"N = calls of a {PROBE.target_seconds * 1000:g} ms repeat, {MIN_LOOPS}..{MAX_LOOPS:,}, "
        f"fewer if {MIN_LOOPS} last over {MAX_NATIVE_NS / 1e9:g} s)"
    )


def loops_for(probe: Result) -> int:
    """N: the probe's loop count within bounds, and at most ~1 s of the case's calls."""
    loops = min(max(probe.loops, MIN_LOOPS), MAX_LOOPS)
    if probe.ns_per_call:
        loops = min(loops, max(1, int(MAX_NATIVE_NS / probe.ns_per_call)))
    return loops


def per_call(short_total: int, long_total: int, loops: int) -> float:
    """Instructions of one call: the 2N-call run's total less the N-call run's, over N."""
    return (long_total - short_total) / loops


def mean_per_call(pairs: Sequence[tuple[int, int]], loops: int) -> float:
    """The mean of `per_call` over the (N-call, 2N-call) totals of each hash seed."""
    return sum(per_call(short, long, loops) for short, long in pairs) / len(pairs)


def read_total(text: str, event: str = EVENT) -> int:
    """The whole run's count of ``event`` from a callgrind output file.

    The ``events:`` line names the columns; ``totals:`` (or, failing that, ``summary:``)
    gives the counts in that order.
    """
    fields: dict[str, list[str]] = {}
    for line in text.splitlines():
        key, colon, value = line.partition(":")
        if colon and key in {"events", "summary", "totals"}:
            fields[key] = value.split()
    counts = fields.get("totals") or fields.get("summary")
    events = fields.get("events", [])
    if counts is None or event not in events:
        raise CountError(f"no {event} total in the callgrind output")
    return int(counts[events.index(event)])


def child_command(valgrind: str, out_file: Path, case: Case, loops: int) -> list[str]:
    return [
        valgrind,
        "--tool=callgrind",
        "--quiet",
        f"--callgrind-out-file={out_file}",
        "--dump-instr=no",
        sys.executable,
        "-m",
        CHILD_MODULE,
        case.section,
        case.name,
        str(loops),
    ]


def child_environment(seed: int) -> dict[str, str]:
    """Hashes fixed by `seed`; no bytecode written, so no run compiles what another just cached."""
    return {**os.environ, "PYTHONHASHSEED": str(seed), "PYTHONDONTWRITEBYTECODE": "1"}


@dataclass(frozen=True, slots=True)
class Child:
    """One callgrind run of a case: the process, and the files it writes."""

    process: subprocess.Popen[bytes]
    out_file: Path
    err_file: Path

    @classmethod
    def start(cls, valgrind: str, case: Case, loops: int, directory: Path, seed: int) -> Child:
        out_file, err_file = directory / f"callgrind.{loops}.out", directory / f"stderr.{loops}.txt"
        with err_file.open("wb") as err:
            process = subprocess.Popen(  # noqa: S603 - our own argv, no shell
                child_command(valgrind, out_file, case, loops),
                stdout=subprocess.DEVNULL,
                stderr=err,
                cwd=ROOT,
                env=child_environment(seed),
            )
        return cls(process=process, out_file=out_file, err_file=err_file)

    def total(self) -> int:
        """Wait for the run; its instruction total, or CountError with its last words."""
        if self.process.wait() != 0:
            lines = self.err_file.read_text(errors="replace").strip().splitlines()
            raise CountError(lines[-1] if lines else f"child exited with status {self.process.returncode}")
        return read_total(self.out_file.read_text())

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def count_pair(valgrind: str, case: Case, loops: int, seed: int) -> tuple[int, int]:
    """The totals of the N-call and 2N-call runs under hash seed `seed`, run side by side."""
    with tempfile.TemporaryDirectory(prefix="benchmarks-callgrind-") as directory:
        children = [Child.start(valgrind, case, n, Path(directory), seed) for n in (loops, 2 * loops)]
        try:
            return children[0].total(), children[1].total()
        finally:
            for child in children:
                child.stop()


def count(valgrind: str, probe: Result, seeds: int = 1) -> Result:
    """The case's instructions per call (the mean over `seeds` hash seeds), or the probe's row
    when the case could not run."""
    if probe.per_call is None:
        return probe
    loops = loops_for(probe)
    try:
        pairs = [count_pair(valgrind, probe.case, loops, seed) for seed in range(seeds)]
    except CountError as exc:
        return Result(case=probe.case, note=f"error ({exc})", failed=True)
    return Result(
        case=probe.case,
        per_call=mean_per_call(pairs, loops),
        unit="instr",
        loops=loops,
        samples=tuple(total for pair in pairs for total in pair),
    )


@dataclass(slots=True)
class InstructionRunner:
    """Probes every case for N in this process, then counts each under callgrind in turn."""

    valgrind: str
    install_sdk: Callable[[], None]
    progress: Callable[[str], None] = field(default=lambda _line: None)
    seeds: int = 1  # hash seeds each case is counted under (see the module docstring)

    def run(self, cases: Sequence[Case]) -> list[Result]:
        self.progress(f"timing {len(cases)} cases for ~{PROBE.target_seconds * 1000:g} ms each to choose N")
        probes = Runner(settings=PROBE, install_sdk=self.install_sdk).run(cases)
        return [self._count(probe, index, len(probes)) for index, probe in enumerate(probes, 1)]

    def _count(self, probe: Result, index: int, total: int) -> Result:
        started = time.perf_counter()
        result = count(self.valgrind, probe, self.seeds)
        took = f" (N={result.loops}, {time.perf_counter() - started:.1f} s)" if result.per_call is not None else ""
        self.progress(f"[{index}/{total}] {result.case.section} | {result.case.name}: {describe(result)}{took}")
        return result
