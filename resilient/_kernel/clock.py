"""The clock and sleeps every strategy uses, swappable as one unit by `resilient.testing`.

Strategies read `CLOCK.monotonic()` and call `CLOCK.sleep()` / `await CLOCK.asleep()`, so a
test can skip backoff waits (and record them) without patching `time` or `asyncio`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from resilient._kernel.aio import trio_sleep

__all__ = ["CLOCK", "Clock"]


@dataclass(slots=True)
class Clock:
    """Where time comes from; `resilient.testing.no_wait()` flips `skip_waits` and records."""

    skip_waits: bool = False
    recorded: list[float] | None = field(default=None)
    monotonic: Callable[[], float] = time.monotonic
    #: Called instead of sleeping when waits are skipped (a fake clock advances itself here).
    on_skipped_wait: Callable[[float], None] | None = None

    def sleep(self, seconds: float) -> None:
        """Block the thread for `seconds` (a backoff or a rate-limit wait)."""
        if self.recorded is not None:
            self.recorded.append(seconds)
        if self.skip_waits:
            if self.on_skipped_wait is not None:
                self.on_skipped_wait(seconds)
        elif seconds > 0:
            time.sleep(seconds)

    async def asleep(self, seconds: float) -> None:
        """Suspend the task for `seconds`; still a cancellation point when waits are skipped.

        On asyncio or trio (anyio on either): asyncio is looked for first, for free.
        """
        if self.recorded is not None:
            self.recorded.append(seconds)
        if self.skip_waits:
            if self.on_skipped_wait is not None:
                self.on_skipped_wait(seconds)
            seconds = 0.0
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            await trio_sleep(max(seconds, 0.0))  # trio.sleep(0) is a checkpoint too
            return
        await asyncio.sleep(max(seconds, 0.0))


CLOCK = Clock()
