"""Post-import hooks: run a patch right after a module is first executed, or now if it already was.

A `sys.meta_path` finder that steps in only for the hooked names: it asks the other finders
for the spec and wraps the loader so the hook runs after the module's code. Nothing else is
touched; a module never imported is never patched (and never imported by us).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

__all__ = ["when_imported"]

Hook = Callable[[ModuleType], None]
_HOOKS: dict[str, list[Hook]] = {}
_BUSY: set[str] = set()


class _HookedLoader(importlib.abc.Loader):
    """Delegates to the real loader, then runs the hooks on the executed module."""

    def __init__(self, inner: importlib.abc.Loader, name: str) -> None:
        self._inner = inner
        self._name = name

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._inner.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._inner.exec_module(module)
        for hook in _HOOKS.get(self._name, ()):
            hook(module)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class _HookFinder(importlib.abc.MetaPathFinder):
    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,  # noqa: ARG002 - the protocol's signature
        target: ModuleType | None = None,  # noqa: ARG002
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in _HOOKS or fullname in _BUSY:
            return None
        _BUSY.add(fullname)
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            _BUSY.discard(fullname)
        if spec is None or spec.loader is None:
            return None
        spec.loader = _HookedLoader(spec.loader, fullname)
        return spec


_FINDER = _HookFinder()


def when_imported(name: str, hook: Hook) -> None:
    """Run `hook(module)` once `name` is imported (at once if it already is)."""
    _HOOKS.setdefault(name, []).append(hook)
    if _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)
    module = sys.modules.get(name)
    if module is not None:
        hook(module)
