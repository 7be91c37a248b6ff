"""The process's current configuration: loaded on first use, replaced by `use` or `reload`."""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from pathlib import Path

from resilient.config._env import overrides
from resilient.config._errors import Problems
from resilient.config._loading import Source, find_source, read_source
from resilient.config._model import Config, validate
from resilient.config._precedence import Origins, merge
from resilient.config._schema import canonical

__all__ = ["current", "load", "use"]

_lock = threading.Lock()
_current: list[Config | None] = [None]


def load(path: str | os.PathLike[str] | None = None, *, environ: Mapping[str, str] | None = None) -> Config:
    """Read, merge and validate: the file (`path`, else the one found), then the environment overrides.

    Raises `ConfigError` listing every problem (file, key path, value, rule).
    """
    environ = os.environ if environ is None else environ
    source = read_source(Path(path), str(path)) if path is not None else find_source(Path.cwd(), environ)
    return from_source(source, environ)


def from_source(source: Source | None, environ: Mapping[str, str]) -> Config:
    """Merge one source and the environment into a validated `Config`."""
    problems = Problems()
    tree: dict[str, object] = {}
    origins: Origins = {}
    raw = source.table if source is not None else {}
    if source is not None:
        merge(tree, canonical(source.label, raw, problems), source.label, origins)
    for name, one_key in overrides(environ, raw):
        merge(tree, canonical(name, one_key, problems), name, origins)
    config = Config(source.label if source is not None else None, tree, origins)
    validate(config, problems)
    return config


def current() -> Config:
    """The configuration in use; loaded from the sources on first use."""
    config = _current[0]
    if config is None:
        with _lock:
            config = _current[0]
            if config is None:
                config = _current[0] = load()
    return config


def use(config: Config | None) -> None:
    """Make `config` the current configuration (None: load it again from the sources on next use)."""
    with _lock:
        _current[0] = config
