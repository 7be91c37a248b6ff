"""Where the configuration comes from: ``$RESILIENT_CONFIG``, ``resilient.toml`` or ``pyproject.toml``.

One file at most is read, the first found in that order; ``[tool.resilient]`` in
``pyproject.toml`` counts only when the table exists. No file is not an error: the
configuration is then empty (environment overrides still apply).
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from resilient.config._errors import ConfigError

__all__ = ["ENV_CONFIG", "FILE_NAME", "Source", "find_source", "read_source"]

ENV_CONFIG: Final = "RESILIENT_CONFIG"
FILE_NAME: Final = "resilient.toml"
PYPROJECT: Final = "pyproject.toml"


@dataclass(frozen=True, slots=True)
class Source:
    """A file read: its label in messages, its path, and its ``resilient`` table."""

    label: str
    path: Path | None
    table: Mapping[str, Any]


def read_source(path: Path, label: str | None = None) -> Source:
    """Read one TOML file; a ``pyproject.toml`` contributes its ``[tool.resilient]`` table."""
    label = label or str(path)
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError([f"{label}: cannot be read ({exc.strerror or exc})"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{label}: is not valid TOML ({exc})"]) from None
    if path.name == PYPROJECT:
        table = document.get("tool", {}).get("resilient", {})
        return Source(f"{label} [tool.resilient]", path, table)
    return Source(label, path, document)


def find_source(cwd: Path, environ: Mapping[str, str]) -> Source | None:
    """The file named by ``$RESILIENT_CONFIG``, else ``./resilient.toml``, else ``./pyproject.toml``."""
    named = environ.get(ENV_CONFIG)
    if named:
        path = Path(named)
        if not path.is_file():
            raise ConfigError([f"{ENV_CONFIG}={named}: no such file"])
        return read_source(path, named)
    if (cwd / FILE_NAME).is_file():
        return read_source(cwd / FILE_NAME, FILE_NAME)
    if (cwd / PYPROJECT).is_file():
        source = read_source(cwd / PYPROJECT, PYPROJECT)
        if source.table:
            return source
    return None
