"""`reload()`: swap the current configuration for a freshly loaded one, or keep it and say why.

A bad file changes nothing but a log line (``config.rejected`` with the reason); a good one
replaces the configuration in one assignment and logs ``config.reloaded`` with the keys that
changed. Policies taken by name *after* the reload get the new settings; functions decorated
before keep theirs until the decorator's wrapper reads its compiled policy through a
swappable reference (see docs/configuration.md, "Reload").
"""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from typing import Final

from resilient.config import _current
from resilient.config._errors import ConfigError
from resilient.config._model import Config
from resilient.instrumentation._hub import HUB

__all__ = ["EVENT_REJECTED", "EVENT_RELOADED", "reload", "watch_file", "watch_sighup"]

EVENT_RELOADED: Final = "config.reloaded"
EVENT_REJECTED: Final = "config.rejected"
_reload_lock = threading.Lock()


def _values(config: Config | None) -> dict[str, str]:
    return {} if config is None else {key: value for key, value, _ in config.entries()}


def reload() -> bool:
    """Load the sources again; True if the new configuration is now current."""
    with _reload_lock:
        old = _current._current[0]
        try:
            new = _current.load()
        except ConfigError as exc:
            HUB.logger.log(logging.WARNING, EVENT_REJECTED, {"reason": str(exc), "kept": old.source if old else None})
            return False
        before, after = _values(old), _values(new)
        changed = sorted(key for key in before.keys() | after.keys() if before.get(key) != after.get(key))
        _current.use(new)
        HUB.logger.log(logging.INFO, EVENT_RELOADED, {"source": new.source, "changed": changed})
        return True


def watch_sighup() -> None:
    """Reload on SIGHUP (opt-in; main thread only, as Python's signal handlers are)."""
    signal.signal(signal.SIGHUP, lambda _signum, _frame: reload())


def watch_file(path: str | Path, *, interval: float = 2.0) -> threading.Event:
    """Reload whenever `path`'s modification time changes (polled every `interval` s); set the event to stop."""
    stop = threading.Event()
    target = Path(path)

    def poll() -> None:
        seen = _mtime(target)
        while not stop.wait(interval):
            now = _mtime(target)
            if now != seen:
                seen = now
                reload()

    threading.Thread(target=poll, name="resilient-config-watch", daemon=True).start()
    return stop


def _mtime(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None
