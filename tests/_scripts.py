"""A scripted dependency that one test table drives through sync and async policies."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from resilient import Policy, Retry

MODES = ("sync", "async")

#: A protected function called the same way in both modes: ``await call(...)``.
Call = Callable[..., Awaitable[Any]]


class Script:
    """Returns or raises the scripted outcomes in order; the last one repeats."""

    def __init__(self, *outcomes: object) -> None:
        self.outcomes = list(outcomes) or [None]
        self.calls = 0

    def step(self) -> Any:
        outcome = self.outcomes[min(self.calls, len(self.outcomes) - 1)]
        self.calls += 1
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome


def protect(mode: str, script: Script, **options: Any) -> Callable[[], Any]:
    """A zero-argument caller of `script` under `Policy(**options)`, sync or async."""
    policy = Policy(**options)
    if mode == "sync":

        @policy
        def dependency() -> Any:
            return script.step()

        return dependency

    @policy
    async def adependency() -> Any:
        await asyncio.sleep(0)
        return script.step()

    return lambda: asyncio.run(adependency())


def quick(attempts: int, **options: Any) -> Retry:
    """A Retry with no backoff and no budget, for tests about *what* is retried."""
    options.setdefault("budget", None)
    return Retry(attempts=attempts, initial_delay=0.0, max_delay=0.0, **options)


def protect_awaitable(policy: Policy, body: Callable[..., Any], mode: str) -> Call:
    """`body` decorated by `policy` as a sync or an async function, called uniformly with await."""
    if mode == "sync":
        wrapped: Callable[..., Any] = policy(body)

        async def call_sync(*args: Any, **kwargs: Any) -> Any:
            return wrapped(*args, **kwargs)

        return call_sync

    async def body_async(*args: Any, **kwargs: Any) -> Any:
        return body(*args, **kwargs)

    wrapped_async = policy(body_async)

    async def call_async(*args: Any, **kwargs: Any) -> Any:
        return await wrapped_async(*args, **kwargs)

    return call_async
