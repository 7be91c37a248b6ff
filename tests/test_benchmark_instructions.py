"""``python -m benchmarks --instructions``: callgrind totals read right, turned into per-call
counts right, shown as instructions, and one real run on the cheapest section."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from contextlib import ExitStack

from benchmarks.__main__ import main
from benchmarks._harness import Case, Result, SyncBench
from benchmarks._instructions import (
    MAX_LOOPS,
    MIN_LOOPS,
    CountError,
    loops_for,
    mean_per_call,
    method,
    per_call,
    read_total,
)
from benchmarks._report import TIMES, build_sections, method_header_line, render

ROOT = Path(__file__).resolve().parent.parent

# The shape callgrind 3.19 writes with --dump-instr=no, with a cache simulation's extra columns.
CALLGRIND_OUT = """\
# callgrind format
version: 1
creator: callgrind-3.19.0
pid: 4242
cmd:  python -m benchmarks._instructions_child 1. raw 300
part: 1

desc: I1 cache:
desc: Timerange: Basic block 0 - 123456
desc: Trigger: Program termination

positions: line
events: Ir Dr Dw
summary: 453938925 120000000 80000000


ob=(1) /usr/bin/python3.11
fl=(1) ???
fn=(1) _PyEval_EvalFrameDefault
0 400000000 100000000 70000000

totals: 453938925 120000000 80000000
"""


def _nothing(_stack: ExitStack) -> SyncBench:
    return lambda: None


def test_read_total_takes_the_instruction_column() -> None:
    """The Ir figure of the totals line, whatever other events were collected."""
    assert read_total(CALLGRIND_OUT) == 453_938_925
    assert read_total(CALLGRIND_OUT, "Dw") == 80_000_000


def test_read_total_falls_back_to_the_summary_and_refuses_a_file_without_either() -> None:
    summary_only = "events: Ir\nsummary: 1234\nfn=(1) main\n0 1234\n"
    assert read_total(summary_only) == 1234
    with pytest.raises(CountError, match="no Ir total"):
        read_total("events: Ir\nfn=(1) main\n0 1234\n")


def test_per_call_is_the_difference_of_the_two_runs_over_n() -> None:
    """Start-up, imports and setup are in both totals and cancel; N calls remain."""
    start_up = 450_000_000
    assert per_call(start_up + 300 * 620_000, start_up + 600 * 620_000, 300) == 620_000


def test_seeds_average_the_per_call_counts_of_their_layouts() -> None:
    """One pair of runs per hash seed; the figure is the mean of their per-call counts."""
    start_up = 450_000_000
    pairs = [(start_up + 300 * 18_000, start_up + 600 * 18_000), (start_up + 300 * 20_000, start_up + 600 * 20_000)]
    assert mean_per_call(pairs, 300) == 19_000
    assert "mean over hash seeds 0..4" in method("valgrind-3.19.0", 5)
    assert "hash seed 0," in method("valgrind-3.19.0")


def test_seeds_must_be_positive_and_go_with_instructions(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--instructions", "--seeds", "0"], ["--seeds", "3"]):
        with pytest.raises(SystemExit) as stopped:
            main(argv)
        assert stopped.value.code == 2
    errors = capsys.readouterr().err
    assert "must be at least 1, got 0" in errors
    assert "--seeds applies to --instructions only" in errors


def test_n_is_the_probe_loop_count_within_bounds() -> None:
    case = Case(section="s", name="n", setup=_nothing)
    assert loops_for(Result(case=case, per_call=50_000.0, loops=500)) == 500
    assert loops_for(Result(case=case, per_call=50.0, loops=500_000)) == MAX_LOOPS
    assert loops_for(Result(case=case, per_call=1_000_000.0, loops=25)) == MIN_LOOPS
    assert loops_for(Result(case=case, per_call=50_000_000.0, loops=1)) == 20  # 1 s of calls, not 15 s


def test_table_shows_instructions_and_ratios_of_counts() -> None:
    """Rows say "instr", ratios come from the counts, the header names the method."""
    base = Case(section="s", name="raw", tag="raw", baseline=True, setup=_nothing)
    peer = Case(section="s", name="peer", setup=_nothing)
    ours = Case(section="s", name="ours", peers=("peer",), setup=_nothing)
    results = [
        Result(case=base, per_call=40_000.0, unit="instr"),
        Result(case=peer, per_call=50_000.0, unit="instr"),
        Result(case=ours, per_call=41_234.0, unit="instr"),
    ]
    table = render(build_sections(results), method_header_line("cmd", method("valgrind-3.19.0")))
    assert "instructions per call (valgrind-3.19.0 --tool=callgrind, (I(2N)-I(N))/N" in table.splitlines()[0]
    row = next(line for line in table.splitlines() if line.startswith("ours"))
    assert row.split()[1:] == ["41.2k", "instr", f"1.03{TIMES}", f"0.123{TIMES}", "peer"]
    assert " ns" not in table


def test_without_valgrind_the_mode_says_so_and_exits_2(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert main(["--instructions", "--only", "1. baseline"]) == 2
    captured = capsys.readouterr()
    assert "needs valgrind" in captured.err
    assert captured.out == ""


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("valgrind") is None, reason="needs valgrind")
def test_a_raw_call_counts_fewer_instructions_than_a_decorated_one(tmp_path: Path) -> None:
    """The real thing on section 1 · sync (two cases, four callgrind runs, about 10 s)."""
    out = tmp_path / "counts.json"
    command = [sys.executable, "-m", "benchmarks", "--instructions", "--only", "1. baseline · sync", "--json", str(out)]
    completed = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)  # noqa: S603
    assert completed.returncode == 0, completed.stderr
    assert "instructions per call" in completed.stdout.splitlines()[0]
    rows = {row["name"]: row for row in json.loads(out.read_text())["sections"][0]["rows"]}
    raw, wrapped = rows["raw call"], rows["functools.wraps pass-through"]
    assert raw["unit"] == wrapped["unit"] == "instr"
    assert 0 < raw["per_call"] < wrapped["per_call"]
    assert wrapped["ratio_to_baseline"] > 1
