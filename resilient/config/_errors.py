"""`ConfigError` and the collector that gathers every problem of a load into it."""

from __future__ import annotations

__all__ = ["ConfigError", "Problems", "dotted"]


class ConfigError(ValueError):
    """A configuration that cannot be used; `problems` lists every error found, one per line."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(problems))


ConfigError.__module__ = "resilient.config"


def dotted(path: tuple[str, ...]) -> str:
    """A key path as TOML writes it: ``policies.payments.retry``, ``middleware.routes."/api"``."""
    return ".".join(key if key.replace("_", "").replace("-", "").isalnum() else f'"{key}"' for key in path)


class Problems:
    """Errors collected while loading, each prefixed with where the value came from."""

    __slots__ = ("items",)

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, source: str, message: str) -> None:
        """Record one error: ``<source>: <message>``."""
        self.items.append(f"{source}: {message}")

    def raise_if_any(self) -> None:
        """Raise one `ConfigError` holding every error recorded."""
        if self.items:
            raise ConfigError(self.items)
