"""``python -m resilient demo | config check|show [FILE] | run [--config FILE] -- COMMAND``."""

from __future__ import annotations

import sys

USAGE = (
    "usage: python -m resilient demo [--duration SECONDS] [--workers N] [--error-rate R] [--hang-rate R] ...\n"
    "       python -m resilient config check [FILE] | config show [FILE]\n"
    "       python -m resilient run [--config FILE] -- COMMAND [ARGS...]"
)


def main(argv: list[str]) -> int:
    """Dispatch the sub-command."""
    command = argv[1] if len(argv) > 1 else None
    if command == "config":
        from resilient.config._cli import config_main  # noqa: PLC0415 - load the config wing only when asked

        return config_main(argv[2:])
    if command == "run":
        from resilient.config._cli import run_main  # noqa: PLC0415

        return run_main(argv[2:])
    if command != "demo":
        print(USAGE, file=sys.stderr)  # noqa: T201 - a command-line program
        return 2
    from resilient._demo import main as demo  # noqa: PLC0415 - load httpx only when asked

    return demo(argv[2:])


if __name__ == "__main__":
    sys.exit(main(sys.argv))
