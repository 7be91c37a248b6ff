"""Section 14: a policy taken by name from a file costs what the same policy written in code costs."""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from benchmarks._harness import Case, SyncBench
from benchmarks._support import abind, awork, bind, raw_case, resilient_api, work

if TYPE_CHECKING:
    from contextlib import ExitStack

SECTION = "14. named policy from a file vs the same in code"
POLICY_TOML = """
[policies.bench-file]
timeout = 5.0
retry = { attempts = 3 }
breaker = { failure_threshold = 5 }
"""


def _in_code(_stack: ExitStack, *, is_async: bool) -> SyncBench:
    policy = resilient_api("Policy")(
        name="bench-code", timeout=5.0, retry=3, breaker=resilient_api("CircuitBreaker")(name="bench-code")
    )
    return abind(policy(awork)) if is_async else bind(policy(work))


def _from_file(stack: ExitStack, *, is_async: bool) -> SyncBench:
    folder = Path(stack.enter_context(tempfile.TemporaryDirectory()))
    (folder / "resilient.toml").write_text(POLICY_TOML, encoding="utf-8")
    config = resilient_api("load", "resilient.config")(folder / "resilient.toml", environ={})
    policy = config.policy("bench-file")
    return abind(policy(awork)) if is_async else bind(policy(work))


def cases() -> list[Case]:
    rows: list[Case] = []
    for mode in ("sync", "async"):
        section, is_async = f"{SECTION} · {mode}", mode == "async"
        rows += [
            raw_case(section, is_async=is_async),
            Case(
                section=section,
                name="Policy(timeout=5.0, retry=3, breaker) in code",
                tag="code",
                is_async=is_async,
                setup=functools.partial(_in_code, is_async=is_async),
            ),
            Case(
                section=section,
                name='Policy.named("bench-file") from resilient.toml',
                is_async=is_async,
                peers=("code",),
                setup=functools.partial(_from_file, is_async=is_async),
            ),
        ]
    return rows
