"""Turn measured results into ratios, a text table and a JSON document."""

from __future__ import annotations

import datetime as dt
import os
import platform
from dataclasses import dataclass
from typing import TYPE_CHECKING

from benchmarks._harness import Result, Settings, format_value

if TYPE_CHECKING:
    from collections.abc import Sequence

NAME_WIDTH = 54
VALUE_WIDTH = 11  # "41.2k instr"
RATIO_WIDTH = 9
TIMES = "\N{MULTIPLICATION SIGN}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Row:
    """A result with its ratios against the section's baseline and its peers."""

    result: Result
    ratio: float | None  # cost / baseline cost
    overheads: tuple[tuple[str, float | None], ...]  # (peer label, own overhead / peer's)


@dataclass(frozen=True, slots=True, kw_only=True)
class Section:
    title: str
    baseline: str
    rows: tuple[Row, ...]


def build_sections(results: Sequence[Result]) -> list[Section]:
    """Group results by section, in first-seen order, and compute every ratio."""
    titles = list(dict.fromkeys(r.case.section for r in results))
    return [_section(title, [r for r in results if r.case.section == title]) for title in titles]


def _section(title: str, results: list[Result]) -> Section:
    baseline = next((r for r in results if r.case.baseline), None)
    base = baseline.per_call if baseline else None
    by_name = {r.case.name: r for r in results}
    rows = tuple(_row(r, base, by_name) for r in results)
    return Section(title=title, baseline=baseline.case.name if baseline else "none", rows=rows)


def _row(result: Result, base: float | None, by_name: dict[str, Result]) -> Row:
    own = result.per_call
    ratio = own / base if own is not None and base else None
    overheads = tuple(
        (
            by_name[peer].case.label if peer in by_name else peer,
            overhead_ratio(own, by_name[peer].per_call if peer in by_name else None, base),
        )
        for peer in result.case.peers
    )
    return Row(result=result, ratio=ratio, overheads=overheads)


def overhead_ratio(own: float | None, peer: float | None, base: float | None) -> float | None:
    """(own - base) / (peer - base): how much of the peer's added cost we add."""
    if own is None or peer is None or base is None or peer - base <= 0:
        return None
    return (own - base) / (peer - base)


def format_ratio(ratio: float | None) -> str:
    if ratio is None:
        return "n/a"
    if abs(ratio) >= 100:
        return f"{ratio:,.0f}{TIMES}"
    return f"{ratio:.3g}{TIMES}" if abs(ratio) < 10 else f"{ratio:.1f}{TIMES}"


def header_line(command: str, settings: Settings, *, now: dt.datetime | None = None) -> str:
    method = f"repeat≈{settings.target_seconds:g} s {TIMES} {settings.repeats}, median"
    return method_header_line(command, method, now=now)


def method_header_line(command: str, method: str, *, now: dt.datetime | None = None) -> str:
    """When, on what, how the figures were measured, and the command that measured them."""
    when = (now or dt.datetime.now(dt.UTC)).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"{when} · Python {platform.python_version()} ({platform.python_implementation()}) "
        f"· os.cpu_count()={os.cpu_count()} · {method} · `{command}`"
    )


def render(sections: Sequence[Section], header: str) -> str:
    lines = [header, ""]
    for section in sections:
        lines.extend(_render_section(section))
    return "\n".join(lines)


def _render_section(section: Section) -> list[str]:
    columns = f"{'case':<{NAME_WIDTH}} {'per call':>{VALUE_WIDTH}} {'vs base':>{RATIO_WIDTH}}"
    lines = [f"## {section.title}  (baseline: {section.baseline})", f"{columns}  overhead vs peer"]
    lines.extend(_render_row(row) for row in section.rows)
    lines.append("")
    return lines


def _render_row(row: Row) -> str:
    result = row.result
    name = result.case.name + (" *" if result.case.baseline else "")
    if result.per_call is None:
        return f"{name:<{NAME_WIDTH}} {result.note}"
    peers = " · ".join(f"{format_ratio(value)} {label}" for label, value in row.overheads)
    value_text = format_value(result.per_call, result.unit)
    return (
        f"{name:<{NAME_WIDTH}} {value_text:>{VALUE_WIDTH}} {format_ratio(row.ratio):>{RATIO_WIDTH}}  {peers}"
    ).rstrip()


def to_json(sections: Sequence[Section], header: str, command: str) -> dict[str, object]:
    return {
        "header": header,
        "command": command,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "sections": [_section_json(s) for s in sections],
    }


def _section_json(section: Section) -> dict[str, object]:
    return {"title": section.title, "baseline": section.baseline, "rows": [_row_json(row) for row in section.rows]}


def _row_json(row: Row) -> dict[str, object]:
    result = row.result
    return {
        "name": result.case.name,
        "baseline": result.case.baseline,
        "unit": result.unit,
        "per_call": result.per_call,
        "note": result.note,
        "loops": result.loops,
        "samples": list(result.samples),
        "ratio_to_baseline": row.ratio,
        "overhead_vs": dict(row.overheads),
    }
