"""Environment overrides: ``RESILIENT_POLICIES__PAYMENTS__RETRY__ATTEMPTS=5`` sets one key.

A variable overrides a key when its name is ``RESILIENT_`` followed by at least two levels
joined by ``__`` (every key lives in a section, so one level is never a key; this leaves
``RESILIENT_CONFIG``, ``RESILIENT_DISABLED`` and ``RESILIENT_STORAGE`` alone). Levels are
matched to the file's keys without regard to case (``PAYMENTS`` finds ``[policies.Payments]``),
else taken lower-case. The value is read as a TOML value (``5``, ``2.5``, ``true``,
``"100/second"``, ``["OSError"]``); text that is not TOML is taken as a string (``100/second``).
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from typing import Any, Final

__all__ = ["PREFIX", "overrides", "parse_value"]

PREFIX: Final = "RESILIENT_"
SEPARATOR: Final = "__"


def parse_value(raw: str) -> object:
    """A TOML value, or the text itself when it is not one."""
    try:
        return tomllib.loads(f"value = {raw}")["value"]
    except tomllib.TOMLDecodeError:
        return raw


def overrides(environ: Mapping[str, str], file_tree: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """One ``(variable name, one-key tree)`` per override, sorted by variable name."""
    found = []
    for name in sorted(environ):
        if not name.startswith(PREFIX) or SEPARATOR not in name[len(PREFIX) :]:
            continue
        levels = list(name[len(PREFIX) :].split(SEPARATOR))
        if any(not level for level in levels):
            continue
        found.append((name, _one_key_tree(levels, parse_value(environ[name]), file_tree)))
    return found


def _one_key_tree(levels: list[str], value: object, file_tree: Mapping[str, Any]) -> dict[str, Any]:
    keys = []
    node: object = file_tree
    for level in levels:
        key = _match(level, node)
        keys.append(key)
        node = node.get(key) if isinstance(node, Mapping) else None
    tree: dict[str, Any] = {keys[-1]: value}
    for key in reversed(keys[:-1]):
        tree = {key: tree}
    return tree


def _match(level: str, node: object) -> str:
    if isinstance(node, Mapping):
        for key in node:
            if isinstance(key, str) and key.lower() == level.lower():
                return key
    return level.lower()
