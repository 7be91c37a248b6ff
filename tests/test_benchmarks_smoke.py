"""The benchmark runner's machinery, run on two tiny cases in process (no timing asserted)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from contextlib import ExitStack

from benchmarks.__main__ import report_failures
from benchmarks._harness import (
    Case,
    Result,
    Runner,
    Settings,
    SyncBench,
    UnavailableError,
    batches,
)
from benchmarks._report import build_sections, format_ratio, overhead_ratio, render
from benchmarks._support import resilient_api

TINY = Settings(target_seconds=0.001, repeats=3, warmups=0)
SECTION = "smoke"


def _cheap(_stack: ExitStack) -> SyncBench:
    return lambda: None


def _dearer(_stack: ExitStack) -> SyncBench:
    return lambda: sum(range(50))


async def _nothing() -> None:
    return None


def _cheap_async(_stack: ExitStack) -> SyncBench:
    return _nothing


def _missing(_stack: ExitStack) -> SyncBench:
    raise UnavailableError("not installed: somepeer")


def _cases() -> list[Case]:
    return [
        Case(section=SECTION, name="cheap", tag="cheap", baseline=True, setup=_cheap),
        Case(section=SECTION, name="dearer", peers=("cheap",), setup=_dearer),
    ]


def _run(cases: list[Case]) -> list[Result]:
    return Runner(settings=TINY, install_sdk=lambda: None).run(cases)


def test_table_has_rows_and_ratio_from_measured_numbers() -> None:
    """Each case gets a row whose ratio is its measured time over the baseline's."""
    results = _run(_cases())
    base, dearer = (r.ns_per_call for r in results)
    assert base is not None
    assert dearer is not None
    sections = build_sections(results)
    table = render(sections, "header")
    row = next(line for line in table.splitlines() if line.startswith("dearer"))
    assert format_ratio(dearer / base) in row
    assert sections[0].rows[1].ratio == pytest.approx(dearer / base)
    assert "cheap *" in table


def test_unavailable_and_async_cases_run_in_the_same_pass() -> None:
    """A missing feature becomes an n/a row; an async case is awaited in its own loop."""
    cases = [
        *_cases(),
        Case(section=SECTION, name="async", is_async=True, setup=_cheap_async),
        Case(section=SECTION, name="missing", setup=_missing, phase="sdk"),
    ]
    results = _run(cases)
    assert results[2].ns_per_call is not None
    assert results[3].note == "n/a (not installed: somepeer)"
    assert "missing" in render(build_sections(results), "header")


def test_overhead_ratio_compares_added_costs() -> None:
    """Overhead vs a peer is (own - base) / (peer - base), n/a when the peer adds nothing."""
    assert overhead_ratio(30.0, 110.0, 10.0) == pytest.approx(0.2)
    assert overhead_ratio(30.0, 10.0, 10.0) is None


def test_batches_put_sdk_cases_last_and_isolated_cases_alone() -> None:
    """A section's cases share a batch, except isolated ones; "sdk" batches come last."""
    cheap, dearer = _cases()
    sdk = Case(section=SECTION, name="sdk", setup=_cheap, phase="sdk")
    alone = Case(section=SECTION, name="alone", setup=_cheap, isolated=True)
    assert batches([sdk, cheap, alone, dearer]) == [[cheap, dearer], [alone], [sdk]]


def test_a_case_that_fails_while_timed_becomes_an_error_row() -> None:
    """An exception in the timed loop is reported on that row; the others still run."""

    def broken(_stack: ExitStack) -> SyncBench:
        def fail() -> None:
            raise RuntimeError("boom")

        return fail

    results = _run([*_cases(), Case(section=SECTION, name="broken", setup=broken)])
    assert results[2].note == "error (RuntimeError: boom)"
    assert results[1].ns_per_call is not None


def test_a_broken_case_fails_the_run_and_a_missing_peer_does_not(capsys: pytest.CaptureFixture[str]) -> None:
    """A case whose setup or calls raise is a failed row, and the runner exits 1 naming it; a
    peer not installed (or Redis not running) is an n/a row, and the run still passes."""

    def broken_setup(_stack: ExitStack) -> SyncBench:
        gone: SyncBench = resilient_api("no_such_name", "resilient")  # what a moved name looks like
        return gone

    def broken_call(_stack: ExitStack) -> SyncBench:
        def fail() -> None:
            raise RuntimeError("boom")

        return fail

    healthy = _run([*_cases(), Case(section=SECTION, name="missing", setup=_missing)])
    assert [result.failed for result in healthy] == [False, False, False]
    assert report_failures(healthy) == 0

    broken = _run(
        [
            *_cases(),
            Case(section=SECTION, name="moved", setup=broken_setup),
            Case(section=SECTION, name="raises", setup=broken_call),
        ]
    )
    assert [result.failed for result in broken] == [False, False, True, True]
    assert "resilient.no_such_name is gone" in broken[2].note
    assert report_failures(broken) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"FAILED smoke | moved: {broken[2].note}",
        f"FAILED smoke | raises: {broken[3].note}",
    ]
