"""What a layer is: the shared types between the engine (`_engine`) and the strategies.

A *step* is one layer's callable, sync or async, with the one signature every layer has::

    step(cp, label, fn, args, kwargs, obs, now=None) -> result   (async: an awaitable of it)

`cp` is the compiled policy, `label` the policy's name for telemetry, `fn(*args, **kwargs)`
the protected call, `obs` its telemetry (None when nobody listens) and `now` the clock
reading handed down by the layer above (None: read it yourself).

A `Layer` is one row of the engine's table (`_engine/layers.py`): `compile` builds the
strategy's runtime objects once per policy and sets them on the compiled policy;
`link`, given the compiled policy and the next configured layer (a `Link`), returns this
layer's `Link`, or None when the policy leaves the strategy out, so an absent layer costs
no call. A strategy module defines its `LAYER`; the engine never names one.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

__all__ = [
    "AFn",
    "Args",
    "Fn",
    "Kwargs",
    "Layer",
    "Link",
    "Now",
    "Obs",
    "Observation",
    "Step",
    "call_async",
    "call_sync",
]

Args = tuple[Any, ...]
Kwargs = dict[str, Any]
Fn = Callable[..., Any]
AFn = Callable[..., Awaitable[Any]]
Now = float | None


class Observation(Protocol):
    """What a layer sees of a call's telemetry (`instrumentation._otel.CallObservation`)."""

    def attempt_finished(self, duration: float, ok: bool) -> None: ...


Obs = Observation | None
#: One layer's callable (see the module's docstring for its signature).
Step = Callable[..., Any]


class Link(NamedTuple):
    """One configured layer, linked to the next: its sync and async steps."""

    sync: Step
    async_: Step
    #: True for the attempt layer only: while its breaker is quiet and nobody observes the
    #: call, it does nothing but call the function (bounded) and hear of a failure, so the
    #: layer above (retry) may do that itself, one call fewer per attempt.
    skippable: bool = False


@dataclass(frozen=True, slots=True)
class Layer:
    """One row of the layer table: a strategy's compile step and its linker."""

    #: The row's name (`register_layer(..., before=name)` places a new row by it).
    name: str
    #: Given the compiled policy and the next configured layer: this layer's link, or None
    #: when the policy leaves it out. None for a strategy run by the wrapper (fallback).
    link: Callable[[Any, Link], Link | None] | None
    #: Once per policy: build the runtime objects from the options (the configs by `Policy`
    #: keyword) and set them on the compiled policy. None when there is nothing to build.
    compile: Callable[[Any, Mapping[str, Any]], None] | None = None


def call_sync(_cp: object, _label: str, fn: Fn, args: Args, kwargs: Kwargs, _obs: Obs, _now: Now = None) -> Any:
    """The end of the chain: the protected call itself."""
    return fn(*args, **kwargs)


async def call_async(_cp: object, _label: str, fn: AFn, args: Args, kwargs: Kwargs, _obs: Obs, _now: Now = None) -> Any:
    """The end of the chain, async."""
    return await fn(*args, **kwargs)
