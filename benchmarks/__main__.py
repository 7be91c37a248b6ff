"""``python -m benchmarks [--quick | --instructions [--seeds K]] [--only SUBSTRING] [--json PATH]``."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from benchmarks import cases_config, cases_core, cases_redis, cases_shared, cases_stack, cases_web, cases_wsgi
from benchmarks._harness import FULL, QUICK, Case, Result, Runner, print_progress, select
from benchmarks._instructions import VALGRIND_MISSING, InstructionRunner, find_valgrind, method, valgrind_version
from benchmarks._report import build_sections, header_line, method_header_line, render, to_json
from benchmarks._support import configure_structlog_filtered, install_otel_sdk

if TYPE_CHECKING:
    from collections.abc import Sequence


def all_cases() -> list[Case]:
    """Every case, in table order; "sdk" cases are measured last whatever their place here."""
    return [
        *cases_core.cases(),
        *cases_stack.cases(),
        *cases_web.cases(),
        *cases_redis.cases(),
        *cases_shared.cases(),
        *cases_wsgi.cases(),
        *cases_config.cases(),
    ]


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--quick", action="store_true", help="repeats of ~0.02 s instead of ~0.2 s (CI smoke, under a minute)"
    )
    mode.add_argument(
        "--instructions",
        action="store_true",
        help="count instructions per call under valgrind's callgrind instead of timing: "
        "deterministic, slow (two valgrind runs per case, ~10-30 s each)",
    )
    parser.add_argument(
        "--seeds",
        metavar="K",
        type=positive_int,
        default=1,
        help="with --instructions: count each case under hash seeds 0..K-1 and report the mean "
        "(small ratios depend on the heap layout; K times slower)",
    )
    parser.add_argument(
        "--only",
        metavar="SUBSTRING",
        help="run the cases whose section or name contains SUBSTRING "
        "(with their section's baseline and the peers they cite)",
    )
    parser.add_argument("--json", metavar="PATH", type=Path, help="also write results as JSON")
    args = parser.parse_args(argv)
    if args.seeds != 1 and not args.instructions:
        parser.error("--seeds applies to --instructions only")
    return args


def positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    command = shlex.join(["python", "-m", "benchmarks", *(sys.argv[1:] if argv is None else argv)])
    valgrind = find_valgrind() if args.instructions else None
    if args.instructions and valgrind is None:
        print(VALGRIND_MISSING, file=sys.stderr)
        return 2
    configure_structlog_filtered()
    cases = select(all_cases(), args.only)
    started = time.perf_counter()
    results, header = measure(cases, command, valgrind, quick=args.quick, seeds=args.seeds)
    sections = build_sections(results)
    print(render(sections, header))
    print(f"({len(cases)} cases in {time.perf_counter() - started:.1f} s)")
    if args.json:
        args.json.write_text(json.dumps(to_json(sections, header, command), indent=2) + "\n")
    return report_failures(results)


def report_failures(results: Sequence[Result]) -> int:
    """1 (and the broken cases on stderr) when a case broke, else 0. A peer not installed or
    Redis not running is an n/a row, not a failure: the run says so and goes on."""
    failed = [result for result in results if result.failed]
    for result in failed:
        print(f"FAILED {result.case.section} | {result.case.name}: {result.note}", file=sys.stderr)
    return 1 if failed else 0


def measure(
    cases: Sequence[Case], command: str, valgrind: str | None, *, quick: bool, seeds: int
) -> tuple[list[Result], str]:
    """The results and the table's header: instruction counts with a valgrind, else times."""
    if valgrind:
        runner = InstructionRunner(
            valgrind=valgrind, install_sdk=install_otel_sdk, progress=print_progress, seeds=seeds
        )
        return runner.run(cases), method_header_line(command, method(valgrind_version(valgrind), seeds))
    settings = QUICK if quick else FULL
    results = Runner(settings=settings, install_sdk=install_otel_sdk, progress=print_progress).run(cases)
    return results, header_line(command, settings)


if __name__ == "__main__":
    sys.exit(main())
