"""Named policies and edge options from a file, tuned by the environment, with no code change.

    # resilient.toml
    [policies.payments]
    timeout = { total = 5.0, attempt = 2.0 }
    retry = { attempts = 3, on = ["ConnectionError", "TimeoutError"] }

    @resilient("payments")          # or Policy.named("payments")
    def charge(order): ...

Sources, precedence (code < file < environment, key by key), every key, the CLI
(``python -m resilient config check|show``) and zero-code mode (``resilient-run``) are in
docs/configuration.md.
"""

from __future__ import annotations

from typing import Any

from resilient._engine.policy import Policy
from resilient.config._current import current, load, use
from resilient.config._errors import ConfigError
from resilient.config._model import Config
from resilient.config._reload import reload, watch_file, watch_sighup

__all__ = [
    "Config",
    "ConfigError",
    "current",
    "httpx_options",
    "load",
    "middleware_options",
    "policy",
    "reload",
    "use",
    "watch_file",
    "watch_sighup",
]


def policy(name: str, /, **code: Any) -> Policy:
    """The named policy of the current configuration (`code` options are overridden by the file)."""
    return current().policy(name, **code)


def middleware_options(**code: Any) -> dict[str, Any]:
    """Keyword options for the middlewares from ``[middleware]`` (overriding `code`)."""
    return current().middleware_options(**code)


def httpx_options(host: str | None = None, /, **code: Any) -> dict[str, Any]:
    """Keyword options for the httpx transports from ``[httpx]`` and ``[httpx.hosts."<host>"]``."""
    return current().httpx_options(host, **code)
