"""The async library running the current task, and the few primitives that differ on trio.

asyncio is the fast path: every caller tries asyncio first (`asyncio.get_running_loop()`
inside a ``try``, free when it succeeds) and comes here only when the thread has no
running asyncio loop. Then the task is trio's (anyio on trio is trio), or the caller is
not in an async library we support. trio is never imported here: a trio task means the
application imported it already, so it is looked up in `sys.modules` (what `sniffio`
would tell, without the dependency or its thread-local and context-variable reads on
the asyncio path).

On trio a deadline is a `trio.CancelScope`, a wait is `trio.move_on_after` over a
`trio.Event`, and a sleep is `trio.sleep`; the asyncio side keeps its own primitives
(the per-loop `DeadlineWatchdog`, futures, `asyncio.sleep`) where they are used.
"""

from __future__ import annotations

import contextlib
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from types import ModuleType

__all__ = ["TrioEvent", "TrioWaiter", "current_trio", "trio_bounded", "trio_sleep"]

_NO_BACKEND = "resilient's async code needs a running asyncio event loop or trio run (anyio on either), found neither"


def current_trio() -> ModuleType:
    """The `trio` module, when the current thread runs a trio task; else `RuntimeError`."""
    trio = sys.modules.get("trio")
    if trio is not None:
        try:
            trio.lowlevel.current_task()
        except RuntimeError:
            pass
        else:
            return trio
    raise RuntimeError(_NO_BACKEND)


async def trio_sleep(seconds: float) -> None:
    """`asyncio.sleep` for a trio task (also a checkpoint at 0)."""
    await current_trio().sleep(seconds)


async def trio_bounded(
    seconds: float, fn: Callable[..., Awaitable[Any]], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[bool, Any]:
    """Await `fn` under a cancel scope `seconds` long: (False, result), or (True, None) when it ran out.

    A cancellation from outside propagates untouched (`trio.Cancelled`), also when it
    arrives together with our deadline: the outer one wins at the checkpoint below.
    """
    trio = current_trio()
    result = None
    with trio.CancelScope(deadline=trio.current_time() + seconds) as scope:
        result = await fn(*args, **kwargs)
    if scope.cancelled_caught:  # the scope caught its own cancellation: the deadline passed
        await trio.lowlevel.checkpoint_if_cancelled()
        return True, None
    return False, result


class TrioEvent:
    """A one-shot wake-up for a trio task in the same thread: the slice of `asyncio.Future` the ASGI gate uses."""

    __slots__ = ("_event",)

    def __init__(self) -> None:
        self._event = current_trio().Event()

    def done(self) -> bool:
        return bool(self._event.is_set())

    def set_result(self, _result: None) -> None:
        self._event.set()

    async def wait(self, seconds: float) -> bool:
        """Wait at most `seconds` for `set_result`; True when it came (cancellation propagates)."""
        with current_trio().move_on_after(seconds):
            await self._event.wait()
        return self.done()


class TrioWaiter:
    """A bulkhead waiter for a trio task: woken from any thread (`TrioToken.run_sync_soon`)."""

    __slots__ = ("_event", "_token", "granted")

    def __init__(self) -> None:
        trio = current_trio()
        self._token = trio.lowlevel.current_trio_token()
        self._event = trio.Event()
        self.granted = False

    def wake(self) -> None:
        """Hand the slot over (called under the bulkhead's lock, from any thread)."""
        self.granted = True
        with contextlib.suppress(RuntimeError):  # trio.RunFinishedError: the run is over, nobody waits
            self._token.run_sync_soon(self._event.set)

    async def wait(self, seconds: float) -> None:
        """Wait at most `seconds` for `wake`. A cancellation wins even over a slot just handed over."""
        trio = current_trio()
        with trio.move_on_after(seconds):
            await self._event.wait()
        await trio.lowlevel.checkpoint_if_cancelled()
