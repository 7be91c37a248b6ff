"""``python -m benchmarks [--quick] [--only SUBSTRING] [--json PATH]``."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from benchmarks import cases_core, cases_redis, cases_shared, cases_stack, cases_web
from benchmarks._harness import FULL, QUICK, Case, Runner, print_progress, select
from benchmarks._report import build_sections, header_line, render, to_json
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
    ]


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="repeats of ~0.02 s instead of ~0.2 s (CI smoke, under a minute)"
    )
    parser.add_argument(
        "--only",
        metavar="SUBSTRING",
        help="run the cases whose section or name contains SUBSTRING "
        "(with their section's baseline and the peers they cite)",
    )
    parser.add_argument("--json", metavar="PATH", type=Path, help="also write results as JSON")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    command = shlex.join(["python", "-m", "benchmarks", *(sys.argv[1:] if argv is None else argv)])
    settings = QUICK if args.quick else FULL
    configure_structlog_filtered()
    cases = select(all_cases(), args.only)
    started = time.perf_counter()
    results = Runner(settings=settings, install_sdk=install_otel_sdk, progress=print_progress).run(cases)
    header = header_line(command, settings)
    sections = build_sections(results)
    print(render(sections, header))
    print(f"({len(cases)} cases in {time.perf_counter() - started:.1f} s)")
    if args.json:
        args.json.write_text(json.dumps(to_json(sections, header, command), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
