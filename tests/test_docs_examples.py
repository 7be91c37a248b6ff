"""The ```python blocks of README.md and docs/*.md run, and the docs' defaults match the code.

Convention: every ```python block is executed unless the nearest non-blank line before its
opening fence is ``<!-- not-executed: reason -->``. The README is not edited from here, so
its blocks (and other pages' blocks not edited from here) that cannot run as written are
listed in `KNOWN_SKIPS` with the reason.

Each executed block gets a fresh namespace and runs inside `resilient.testing.no_wait()`
(backoff and rate-limit waits return at once); named breakers are forgotten afterwards and
the logging configuration is restored. A block with a top-level ``await`` is compiled as a
coroutine (`ast.PyCF_ALLOW_TOP_LEVEL_AWAIT`, like ``python -m asyncio``) and run with
`asyncio.run`, so its names still land in the block's namespace.
"""

from __future__ import annotations

import ast
import asyncio
import dataclasses
import inspect
import itertools
import linecache
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import resilient
from resilient import testing

ROOT = Path(__file__).resolve().parent.parent
SOURCES = (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")))

_FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<info>[^`]*)$")
_NOT_EXECUTED = re.compile(r"^\s*<!--\s*not-executed:\s*(?P<reason>.+?)\s*-->\s*$")

#: Blocks that cannot run as written, in files this test does not own (the README, other
#: engineers' pages), by (file, index among its python blocks). Pages should prefer the
#: ``<!-- not-executed: reason -->`` marker; an entry here is for text not edited from here.
KNOWN_SKIPS: dict[tuple[str, int], str] = {
    ("docs/redis.md", 0): (
        "names a Redis host (cache.internal) and imports `configure_storage` from `resilient`, "
        "which `resilient/__init__.py` does not export"
    ),
}


@dataclass(frozen=True, slots=True)
class Block:
    """One fenced python block: where it is, its code, and why it is not run (if it is not)."""

    path: str
    index: int
    line: int
    source: str
    skip: str | None

    @property
    def id(self) -> str:
        """A stable test id: file and index among that file's python blocks."""
        return f"{self.path}#{self.index}"


def _python_blocks(path: Path) -> Iterator[Block]:
    """Yield the ```python blocks of a Markdown file, in order."""
    lines = path.read_text(encoding="utf-8").splitlines()
    relative = path.relative_to(ROOT).as_posix()
    index = 0
    number = 0
    while number < len(lines):
        opening = _FENCE.match(lines[number])
        number += 1
        if opening is None:
            continue
        indent, info = opening["indent"], opening["info"].strip()
        start = number
        while number < len(lines) and not re.match(rf"^{re.escape(indent)}```\s*$", lines[number]):
            number += 1
        body = [line.removeprefix(indent) for line in lines[start:number]]
        number += 1
        if info.split(" ", 1)[0] != "python":
            continue
        yield Block(relative, index, start, "\n".join(body) + "\n", _skip_reason(relative, index, lines, start - 1))
        index += 1


def _skip_reason(path: str, index: int, lines: list[str], fence: int) -> str | None:
    """The not-executed marker's reason before the fence at `fence`, or a known skip."""
    before = next((line for line in reversed(lines[:fence]) if line.strip()), "")
    marker = _NOT_EXECUTED.match(before)
    if marker is not None:
        return marker["reason"]
    return KNOWN_SKIPS.get((path, index))


BLOCKS = [block for source in SOURCES for block in _python_blocks(source)]


@pytest.fixture
def _restore_logging() -> Iterator[None]:
    """Undo what a block does to logging (``resilient.logging.configure`` edits the root)."""
    loggers = [logging.getLogger(), logging.getLogger("resilient")]
    saved = [(logger, list(logger.handlers), logger.level, logger.propagate) for logger in loggers]
    yield
    for logger, handlers, level, propagate in saved:
        logger.handlers[:] = handlers
        logger.setLevel(level)
        logger.propagate = propagate


def _run(block: Block) -> dict[str, Any]:
    """Execute a block in a fresh namespace; a top-level ``await`` makes it a coroutine."""
    filename = f"<{block.path} python block {block.index} (line {block.line + 1})>"
    linecache.cache[filename] = (len(block.source), None, block.source.splitlines(True), filename)
    code = compile(block.source, filename, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, dont_inherit=True)
    namespace: dict[str, Any] = {"__name__": "docs_example"}
    with testing.no_wait():
        try:
            result = eval(code, namespace)  # noqa: S307 - the docs' own examples, by design
            if inspect.iscoroutine(result):
                asyncio.run(result)
        finally:
            testing.forget_breakers()
    return namespace


EXECUTED = [block for block in BLOCKS if block.skip is None]


@pytest.mark.usefixtures("_restore_logging")
@pytest.mark.parametrize("block", EXECUTED, ids=[block.id for block in EXECUTED])
def test_python_block_runs(block: Block) -> None:
    """Each executable python block of the README and docs runs without error."""
    _run(block)


def test_every_block_left_out_says_why() -> None:
    """A block is left out only with a stated reason (collected, not skipped, so CI skips nothing)."""
    left_out = [block for block in BLOCKS if block.skip is not None]
    assert all(block.skip.strip() for block in left_out if block.skip is not None)
    assert len(left_out) < len(EXECUTED)


def test_docs_have_python_blocks() -> None:
    """The collector finds the docs' examples (a broken fence regex would silently skip all)."""
    executed = [block for block in BLOCKS if block.skip is None and block.path.startswith("docs/")]
    assert len(executed) >= 30


def test_known_skips_name_existing_blocks() -> None:
    """Every known skip points at a python block that exists, so stale entries are noticed."""
    assert set(KNOWN_SKIPS) <= {(block.path, block.index) for block in BLOCKS}


# ------------------------------------------------------------------ pages and defaults tables

STRATEGY_PAGES: dict[str, type[Any]] = {
    "docs/timeout.md": resilient.Timeout,
    "docs/retry.md": resilient.Retry,
    "docs/circuit-breaker.md": resilient.CircuitBreaker,
    "docs/rate-limit.md": resilient.RateLimit,
    "docs/bulkhead.md": resilient.Bulkhead,
    "docs/fallback.md": resilient.Fallback,
}
SECTIONS = ("## About", "## Usage", "## Defaults", "## Semantics", "## Telemetry", "## Anti-patterns")
_ROW = re.compile(r"^\|\s*`(?P<option>\w+)`\s*\|\s*(?P<default>[^|]+?)\s*\|")
#: Defaults that are objects rather than literals, spelled as in the docs' tables.
_OBJECT_DEFAULTS: dict[str, object] = {"`RetryBudget()`": resilient.RetryBudget(), "`Exception`": Exception}


def _defaults_table(page: str) -> dict[str, str]:
    """The option → default cells of the first table under a page's ``## Defaults`` heading."""
    text = (ROOT / page).read_text(encoding="utf-8")
    lines = text.split("\n## Defaults\n", 1)[1].splitlines()
    start = next(number for number, line in enumerate(lines) if line.startswith("|"))
    table = itertools.takewhile(lambda line: line.startswith("|"), lines[start:])
    return {match["option"]: match["default"] for line in table if (match := _ROW.match(line))}


def _documented_default(cell: str) -> object:
    """A table cell as a value: ``required``, a known object, or a backticked literal."""
    if cell == "required":
        return dataclasses.MISSING
    if cell in _OBJECT_DEFAULTS:
        return _OBJECT_DEFAULTS[cell]
    return ast.literal_eval(cell.strip("`"))


def _code_default(field: dataclasses.Field[Any]) -> object:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return dataclasses.MISSING


@pytest.mark.parametrize("page", sorted(STRATEGY_PAGES))
def test_strategy_page_follows_the_template(page: str) -> None:
    """Each strategy page has the template's sections, in order."""
    text = (ROOT / page).read_text(encoding="utf-8")
    positions = [text.find(f"\n{heading}\n") for heading in SECTIONS]
    assert -1 not in positions, f"{page} lacks one of {SECTIONS}"
    assert positions == sorted(positions)


@pytest.mark.parametrize("page", sorted(STRATEGY_PAGES))
def test_defaults_table_matches_the_code(page: str) -> None:
    """Every option of the config class is in the page's table, with the code's default."""
    fields = {field.name: field for field in dataclasses.fields(STRATEGY_PAGES[page])}
    table = _defaults_table(page)
    assert set(table) == set(fields), f"{page}: table options differ from the dataclass fields"
    for name, cell in table.items():
        assert _documented_default(cell) == _code_default(fields[name]), f"{page}: default of {name}"
