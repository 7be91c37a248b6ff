"""Compare two schemathesis JUnit reports: the failed checks present only in the second one.

``python scripts/schemathesis_diff.py junit-off.xml junit-on.xml`` prints, per operation, the
checks that fail in each run and those that fail only with the middleware; exit status 1 when
there is any of the latter.
"""

from __future__ import annotations

import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

# A failed check's title in schemathesis' failure text: "- Server error", "- Undocumented HTTP status code"...
_CHECK_TITLE = re.compile(r"^- (?P<title>[A-Z][^\n]*?)\s*$", re.MULTILINE)


def failed_checks(report: Path) -> dict[str, set[str]]:
    """Operation name -> titles of the checks that failed on it."""
    failures: dict[str, set[str]] = {}
    for case in ET.parse(report).getroot().iter("testcase"):  # noqa: S314 - reports this script's own run wrote
        titles = failures.setdefault(case.get("name", "?"), set())
        for failure in [*case.iter("failure"), *case.iter("error")]:
            text = (failure.get("message") or "") + "\n" + (failure.text or "")
            titles.update(match["title"] for match in _CHECK_TITLE.finditer(text))
    return failures


def main(bare_report: str, protected_report: str) -> int:
    """Print both runs' failures and the ones only the middleware brings; 1 if there are any."""
    bare, protected = failed_checks(Path(bare_report)), failed_checks(Path(protected_report))
    only_with = {op: checks - bare.get(op, set()) for op, checks in protected.items()}
    only_with = {op: checks for op, checks in only_with.items() if checks}
    lines = []
    for label, table in (("without the middleware", bare), ("with the middleware", protected)):
        lines.append(f"failed checks {label}:")
        lines += [f"  {op}: {', '.join(sorted(table[op])) or 'none'}" for op in sorted(table)]
    lines.append("failed only with the middleware:" + ("" if only_with else " none"))
    lines += [f"  {op}: {', '.join(sorted(only_with[op]))}" for op in sorted(only_with)]
    sys.stdout.write("\n".join(lines) + "\n")
    return 1 if only_with else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
