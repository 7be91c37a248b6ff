"""`python -m resilient demo`: see what the safeguards do, in ten seconds."""

from __future__ import annotations

import sys

USAGE = "usage: python -m resilient demo [--duration SECONDS] [--workers N] [--error-rate R] [--hang-rate R] ..."


def main(argv: list[str]) -> int:
    """Dispatch the sub-command."""
    if len(argv) < 2 or argv[1] != "demo":
        print(USAGE, file=sys.stderr)  # noqa: T201 - a command-line program
        return 2
    from resilient._demo import main as demo  # noqa: PLC0415 - load httpx only when asked

    return demo(argv[2:])


if __name__ == "__main__":
    sys.exit(main(sys.argv))
