"""``python -m resilient config check|show [FILE]`` and ``python -m resilient run [--config FILE] -- COMMAND``."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Final, TextIO

from resilient.config._current import load
from resilient.config._errors import ConfigError
from resilient.config._loading import ENV_CONFIG

__all__ = ["RUN_USAGE", "USAGE", "config_main", "run_console", "run_main"]

USAGE: Final = "usage: python -m resilient config check [FILE] | config show [FILE]"
RUN_USAGE: Final = "usage: python -m resilient run [--config FILE] -- COMMAND [ARGS...]"
BOOTSTRAP: Final = Path(__file__).resolve().parent / "_bootstrap"


def config_main(argv: list[str], out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """``config check [FILE]``: 0 when valid, 1 with every error; ``config show [FILE]``: each key and its origin."""
    if len(argv) not in (1, 2) or argv[0] not in ("check", "show"):
        print(USAGE, file=err)
        return 2
    try:
        config = load(argv[1] if len(argv) == 2 else None)
    except ConfigError as exc:
        print(exc, file=err)
        return 1
    source = config.source or "no file (defaults and environment only)"
    if argv[0] == "check":
        names = ", ".join(config.policy_names()) or "none"
        print(f"{source}: ok (policies: {names})", file=out)
        return 0
    print(f"# effective configuration; source: {source}", file=out)
    rows = list(config.entries())
    width = max((len(key) + len(value) for key, value, _ in rows), default=0) + 3
    for key, value, origin in rows:
        print(f"{f'{key} = {value}':<{width}}# {origin}", file=out)
    return 0


def run_main(argv: list[str], err: TextIO = sys.stderr) -> int:
    """Validate the configuration, then replace this process with COMMAND under zero-code mode."""
    config_file = None
    args = list(argv)
    while args and args[0] != "--":
        if args[0] == "--config" and len(args) > 1:
            config_file, args = args[1], args[2:]
        elif args[0].startswith("--config="):
            config_file, args = args[0].split("=", 1)[1], args[1:]
        else:
            break
    if args and args[0] == "--":
        args = args[1:]
    if not args:
        print(RUN_USAGE, file=err)
        return 2
    env = dict(os.environ)
    if config_file is not None:
        env[ENV_CONFIG] = str(Path(config_file).resolve())
    try:
        load(environ=env)
    except ConfigError as exc:
        print(exc, file=err)
        return 1
    env["PYTHONPATH"] = os.pathsep.join([str(BOOTSTRAP), *filter(None, [env.get("PYTHONPATH")])])
    try:
        os.execvpe(args[0], args, env)  # noqa: S606 - running the user's command is the point
    except OSError as exc:
        print(f"resilient run: cannot run {args[0]!r}: {exc.strerror or exc}", file=err)
        return 127


def run_console() -> None:
    """The ``resilient-run`` console script: ``resilient-run [--config FILE] -- COMMAND ...``."""
    sys.exit(run_main(sys.argv[1:]))
