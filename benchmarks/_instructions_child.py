"""``python -m benchmarks._instructions_child SECTION NAME LOOPS``: one case, called LOOPS times.

Run by `benchmarks._instructions` under callgrind, twice per case (N and 2N calls). It sets
the process up as the timing runner does (structlog filtered, the OpenTelemetry SDK for
"sdk" cases), builds the one case named, and calls it; it prints nothing.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import random
import sys
from contextlib import ExitStack
from typing import TYPE_CHECKING, cast

from benchmarks.__main__ import all_cases
from benchmarks._support import configure_structlog_filtered, install_otel_sdk

if TYPE_CHECKING:
    from collections.abc import Sequence

    from benchmarks._harness import AsyncBench, Case, SyncBench


def find_case(cases: Sequence[Case], section: str, name: str) -> Case:
    """The case of that section and name (the pair is unique across the table)."""
    for case in cases:
        if (case.section, case.name) == (section, name):
            return case
    raise LookupError(f"no case {name!r} in section {section!r}")


def settle() -> None:
    """Same random draws in every run (OpenTelemetry draws its trace and span ids from
    `random`), then collect and freeze what survives, so a rare full collection in the
    counted calls walks what those calls left behind, not every object set up before them."""
    random.seed(0)
    gc.collect()
    gc.freeze()


def call_sync(bench: SyncBench, loops: int) -> None:
    settle()
    for _ in itertools.repeat(None, loops):
        bench()


async def call_async(bench: AsyncBench, loops: int) -> None:
    settle()
    for _ in itertools.repeat(None, loops):
        await bench()


def main(argv: Sequence[str]) -> int:
    section, name, loops = argv[0], argv[1], int(argv[2])
    configure_structlog_filtered()
    case = find_case(all_cases(), section, name)
    if case.phase == "sdk":
        install_otel_sdk()
    with ExitStack() as stack:
        bench = case.setup(stack)
        if case.is_async:
            asyncio.run(call_async(cast("AsyncBench", bench), loops))  # one loop, as the timing runner
        else:
            call_sync(bench, loops)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
