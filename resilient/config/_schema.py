"""The schema of a configuration file, derived from the Python configs' own fields.

A file's keys are the fields of `Timeout`, `Retry`, `RetryBudget`, `CircuitBreaker`,
`RateLimit`, `Bulkhead` (read with `dataclasses.fields`), of the middlewares' `EdgeOptions`
and `RouteOptions`, and of the httpx transports' `TransportOptions`; only fields that hold
code (callables, objects) are left out, and are named as code-only when a file sets them.
`canonical` turns one source's raw tree into the canonical form every later step reads:
each layer is ``False`` (switched off) or a table of fields, shorthands expanded, exception
names resolved to classes; shape errors and unknown keys are recorded, not raised.
"""

from __future__ import annotations

import builtins
import dataclasses
import difflib
import importlib
from collections.abc import Mapping
from typing import Any, Final

from resilient._edge.options import EdgeOptions, RouteOptions
from resilient._strategies.breaker import CircuitBreaker
from resilient._strategies.budget import RetryBudget
from resilient._strategies.bulkhead import Bulkhead
from resilient._strategies.ratelimit import RateLimit
from resilient._strategies.retry import Retry
from resilient._strategies.timeout import Timeout
from resilient.config._errors import Problems, dotted
from resilient.httpx._options import OPTION_NAMES as HTTPX_OPTION_NAMES

__all__ = [
    "LAYERS",
    "SECTIONS",
    "canonical",
    "exception_name",
    "file_fields",
]

#: The policy layers a file can set, by key, with the config class each key builds.
LAYERS: Final[dict[str, type]] = {
    "timeout": Timeout,
    "retry": Retry,
    "breaker": CircuitBreaker,
    "rate_limit": RateLimit,
    "bulkhead": Bulkhead,
}
#: The field a scalar shorthand sets: ``timeout = 2.0`` is ``timeout = { total = 2.0 }``.
SHORTHAND_FIELD: Final = {
    "timeout": "total",
    "retry": "attempts",
    "breaker": "name",
    "rate_limit": "limit",
    "bulkhead": "max_concurrent",
}
#: Fields that hold code (callables, objects): settable in Python only.
CODE_ONLY: Final[dict[type, frozenset[str]]] = {
    Retry: frozenset({"on_result", "wait", "stop", "retry_after"}),
    CircuitBreaker: frozenset({"listeners", "pybreaker"}),
    RateLimit: frozenset({"key"}),
    EdgeOptions: frozenset({"rate_limit_key"}),
}
#: Fields whose file value is a list of exception names, resolved to classes at load.
EXCEPTION_FIELDS: Final = {(Retry, "on"), (CircuitBreaker, "exclude")}
SECTIONS: Final = ("policies", "middleware", "httpx")
_HTTPX_LAYERS: Final = ("timeout", "retry", "breaker", "rate_limit", "bulkhead")


def file_fields(cls: type) -> tuple[str, ...]:
    """The fields of a config class that a file may set, in declaration order."""
    hidden = CODE_ONLY.get(cls, frozenset())
    return tuple(f.name for f in dataclasses.fields(cls) if f.name not in hidden)


def exception_name(cls: type) -> str:
    """How a file names an exception class: builtins bare, others by dotted path."""
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


class _Reader:
    """Reads one source's raw tree into canonical form, recording problems under its label."""

    def __init__(self, source: str, problems: Problems) -> None:
        self.source = source
        self.problems = problems

    def error(self, path: tuple[str, ...], message: str) -> None:
        self.problems.add(self.source, f"{dotted(path)} {message}")

    def table(self, path: tuple[str, ...], value: object) -> Mapping[str, Any] | None:
        if isinstance(value, Mapping):
            return value
        self.error(path, f"must be a table, got {value!r}")
        return None

    def known(
        self, path: tuple[str, ...], table: Mapping[str, Any], allowed: tuple[str, ...], cls: type | None
    ) -> bool:
        """Record every unknown key of `table` (with the closest valid key); True if there were none."""
        ok = True
        for key in table:
            if key in allowed:
                continue
            ok = False
            if cls is not None and key in CODE_ONLY.get(cls, frozenset()):
                self.error((*path, key), "holds code (a callable or an object): set it in Python, not in a file")
                continue
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            self.error((*path, key), f"is not a known key; {hint}known keys: {', '.join(allowed)}")
        return ok

    # -- sections -------------------------------------------------------------------------

    def root(self, raw: Mapping[str, Any]) -> dict[str, Any]:
        self.known((), raw, SECTIONS, None)
        tree: dict[str, Any] = {}
        if (policies := raw.get("policies")) is not None and (table := self.table(("policies",), policies)):
            tree["policies"] = {
                name: self.policy(("policies", name), value) for name, value in table.items() if value is not None
            }
        if (middleware := raw.get("middleware")) is not None and (table := self.table(("middleware",), middleware)):
            tree["middleware"] = self.middleware(("middleware",), table)
        if (hx := raw.get("httpx")) is not None and (table := self.table(("httpx",), hx)):
            tree["httpx"] = self.httpx(("httpx",), table, hosts=True)
        return tree

    def policy(self, path: tuple[str, ...], raw: object) -> dict[str, Any]:
        table = self.table(path, raw)
        if table is None:
            return {}
        if "fallback" in table:
            self.error((*path, "fallback"), "holds code (a value or a handler): set it in Python, not in a file")
            table = {key: value for key, value in table.items() if key != "fallback"}
        self.known(path, table, tuple(LAYERS), None)
        return {key: self.layer((*path, key), key, value) for key, value in table.items() if key in LAYERS}

    def layer(self, path: tuple[str, ...], kind: str, raw: object) -> dict[str, Any] | bool:
        """``False`` (off) or the layer's fields; ``true`` is every default, a scalar the shorthand."""
        if raw is False:
            return False
        if raw is True:
            return {}
        if not isinstance(raw, Mapping):
            return {SHORTHAND_FIELD[kind]: raw}
        cls = LAYERS[kind]
        self.known(path, raw, file_fields(cls), cls)
        fields = {key: value for key, value in raw.items() if key in file_fields(cls)}
        for key, value in fields.items():
            if (cls, key) in EXCEPTION_FIELDS:
                fields[key] = self.exceptions((*path, key), value)
        if cls is Retry and isinstance(budget := fields.get("budget"), Mapping):
            self.known((*path, "budget"), budget, file_fields(RetryBudget), RetryBudget)
            fields["budget"] = {key: value for key, value in budget.items() if key in file_fields(RetryBudget)}
        return fields

    def exceptions(self, path: tuple[str, ...], raw: object) -> tuple[type[BaseException], ...]:
        names = [raw] if isinstance(raw, str) else raw
        if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
            self.error(path, f'must be a list of exception names such as ["ConnectionError"], got {raw!r}')
            return ()
        found = []
        for name in names:
            cls = resolve_exception(name)
            if cls is None:
                self.error(
                    path,
                    f"names {name!r}, which is neither a builtin exception nor an importable "
                    "dotted path to one (module.Name)",
                )
            else:
                found.append(cls)
        return tuple(found)

    def middleware(self, path: tuple[str, ...], raw: Mapping[str, Any]) -> dict[str, Any]:
        allowed = file_fields(EdgeOptions)
        self.known(path, raw, allowed, EdgeOptions)
        tree = {key: value for key, value in raw.items() if key in allowed and key != "routes"}
        if (routes := raw.get("routes")) is not None and (table := self.table((*path, "routes"), routes)):
            tree["routes"] = {}
            for prefix, route in table.items():
                route_path = (*path, "routes", prefix)
                if (options := self.table(route_path, route)) is not None:
                    self.known(route_path, options, file_fields(RouteOptions), RouteOptions)
                    # TOML has no null: `false` switches a feature off for the route (None in Python).
                    tree["routes"][prefix] = {
                        key: None if value is False else value
                        for key, value in options.items()
                        if key in file_fields(RouteOptions)
                    }
        return tree

    def httpx(self, path: tuple[str, ...], raw: Mapping[str, Any], *, hosts: bool) -> dict[str, Any]:
        allowed = tuple(sorted(HTTPX_OPTION_NAMES | ({"hosts"} if hosts else set())))
        self.known(path, raw, allowed, None)
        tree: dict[str, Any] = {}
        for key, value in raw.items():
            if key not in allowed:
                continue
            if key in _HTTPX_LAYERS:
                tree[key] = self.layer((*path, key), key, value)
            elif key == "hosts":
                table = self.table((*path, key), value)
                tree[key] = {
                    host: self.httpx((*path, key, host), options, hosts=False)
                    for host, options in (table or {}).items()
                    if self.table((*path, key, host), options) is not None
                }
            elif key in ("retry_statuses", "retry_methods") and not isinstance(value, list):
                self.error((*path, key), f"must be a list, got {value!r}")
            else:
                tree[key] = value
        return tree


def canonical(source: str, raw: Mapping[str, Any], problems: Problems) -> dict[str, Any]:
    """One source's tree in canonical form; its problems are recorded under `source`."""
    return _Reader(source, problems).root(raw)


def resolve_exception(name: str) -> type[BaseException] | None:
    """A builtin exception by name, or ``module.Name`` / ``module:Name`` imported."""
    candidate: object = getattr(builtins, name, None)
    if candidate is None and ("." in name or ":" in name):
        module_name, _, attribute = name.replace(":", ".").rpartition(".")
        try:
            candidate = getattr(importlib.import_module(module_name), attribute, None)
        except ImportError:
            candidate = None
    if isinstance(candidate, type) and issubclass(candidate, BaseException):
        return candidate
    return None
