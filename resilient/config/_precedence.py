"""The one precedence rule: code < file < environment, key by key; and where each value came from.

Sources are merged in that order, each key overriding the same key of the sources before
it: an environment variable overrides one key of the file, the file overrides one key of
what the code set (see `Config.policy`). A layer switched off (``false``) replaces the
layer's table, and a table given later replaces an earlier ``false``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["Origins", "merge"]

Origins = dict[tuple[str, ...], str]


def merge(tree: dict[str, Any], override: Mapping[str, Any], source: str, origins: Origins) -> None:
    """Merge `override` into `tree` in place, recording `source` as the origin of each key it sets."""
    _merge(tree, override, source, origins, ())


def _merge(
    tree: dict[str, Any], override: Mapping[str, Any], source: str, origins: Origins, path: tuple[str, ...]
) -> None:
    for key, value in override.items():
        here = (*path, key)
        current = tree.get(key)
        if isinstance(value, Mapping) and isinstance(current, dict):
            origins.setdefault(here, source)
            _merge(current, value, source, origins, here)
            continue
        for known in [p for p in origins if p[: len(here)] == here]:
            del origins[known]
        tree[key] = _copy(value)
        _record(tree[key], source, origins, here)


def _copy(value: object) -> Any:
    return {key: _copy(item) for key, item in value.items()} if isinstance(value, Mapping) else value


def _record(value: object, source: str, origins: Origins, path: tuple[str, ...]) -> None:
    origins[path] = source
    if isinstance(value, Mapping):
        for key, item in value.items():
            _record(item, source, origins, (*path, key))
