"""The layer table: which strategies a call runs through, outer to inner. Data, not code.

Each row is a strategy module's `LAYER` (`resilient._kernel.layer.Layer`): its compile step
(runtime objects, once per policy) and its linker (this layer's steps, given the next
configured one; None when the policy leaves the strategy out). `CompiledPolicy` compiles
every row and links them from the innermost out, so an absent layer costs no call. Adding
a strategy is one module with its `LAYER` and one row here (or `register_layer`).

Order, outer to inner: telemetry and fallback (the wrapper itself), rate limit, bulkhead,
total timeout (deadline), retry (+ budget), one attempt (circuit breaker, attempt timeout),
the function.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from resilient._strategies import attempt, bulkhead, fallback, ratelimit, retry, timeout

if TYPE_CHECKING:
    from resilient._kernel.layer import Layer

__all__ = ["BUILT_IN", "LAYERS", "register_layer", "unregister_layer"]

#: The built-in rows, outer to inner.
BUILT_IN: tuple[Layer, ...] = (
    fallback.LAYER,  # compile only: the wrapper runs it (outermost, with telemetry)
    ratelimit.LAYER,
    bulkhead.LAYER,
    timeout.LAYER,  # the deadline; it also compiles the attempt bounds the attempt layer reads
    retry.LAYER,
    attempt.LAYER,  # innermost: calls the function
)

#: The table in force: policies compiled from now on read it.
LAYERS: tuple[Layer, ...] = BUILT_IN


def register_layer(layer: Layer, *, before: str) -> None:
    """Add a row just outside the row named `before` (affects policies compiled afterwards).

    Errors: ValueError when the name is taken or `before` names no row.
    """
    global LAYERS  # noqa: PLW0603 - the table is replaced whole, never mutated
    names = [row.name for row in LAYERS]
    if layer.name in names:
        raise ValueError(f"layer.name {layer.name!r} is already in the layer table {names}; pick another name")
    if before not in names:
        raise ValueError(f"before={before!r} names no layer; expected one of {names}")
    at = names.index(before)
    LAYERS = (*LAYERS[:at], layer, *LAYERS[at:])


def unregister_layer(name: str) -> None:
    """Remove a row added by `register_layer` (the built-in rows stay)."""
    global LAYERS  # noqa: PLW0603 - see register_layer
    if any(row.name == name for row in BUILT_IN):
        raise ValueError(f"layer {name!r} is built in and cannot be removed")
    LAYERS = tuple(row for row in LAYERS if row.name != name)
