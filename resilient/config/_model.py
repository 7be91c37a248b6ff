"""`Config`: a loaded configuration, validated, that builds policies and options from it.

Building applies the precedence rule's last step: what the code passes is the base, the
file and the environment override it key by key (``dataclasses.replace`` on the code's
config object). Errors raised by the configs' own checks are prefixed with the key path and
with the source of the offending key (the file, or the environment variable's name).
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from resilient._edge.options import UNSET, EdgeOptions, RouteOptions
from resilient._edge.options import build_options as build_edge_options
from resilient._engine.policy import Policy, _as_breaker, _as_bulkhead, _as_rate_limit, _as_retry, _as_timeout
from resilient._strategies.budget import RetryBudget
from resilient.config._errors import ConfigError, Problems, dotted
from resilient.config._precedence import merge
from resilient.config._schema import LAYERS, exception_name, file_fields
from resilient.httpx._options import build_options as build_httpx_options

__all__ = ["CODE", "DEFAULT", "Config", "validate"]

DEFAULT = "default"
CODE = "code"
_AS_LAYER: dict[str, Callable[[Any], Any]] = {
    "timeout": _as_timeout,
    "retry": _as_retry,
    "breaker": _as_breaker,
    "rate_limit": _as_rate_limit,
    "bulkhead": _as_bulkhead,
}


@dataclass(frozen=True, slots=True, eq=False)
class Config:
    """A validated configuration: the merged tree, the origin of each key, the file it came from."""

    source: str | None
    tree: Mapping[str, Any]
    origins: Mapping[tuple[str, ...], str]
    _shared: dict[str, Policy] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def policy_names(self) -> tuple[str, ...]:
        """The names of the policies defined, sorted."""
        return tuple(sorted(self.tree.get("policies", {})))

    def policy(self, name: str, /, **code: Any) -> Policy:
        """The policy `name`: what `code` passes, overridden key by key by the file and environment.

        Without code options the policy is built once and shared by every caller (one rate
        limiter, bulkhead and retry budget for the name); with code options each call builds
        a new one. An undefined name without code options is an error listing the defined names.
        """
        defined = name in self.tree.get("policies", {})
        if not defined and not code:
            raise ConfigError([f"policy {_undefined(name, self)}"])
        if code:
            return self._build_policy(name, code)
        with self._lock:
            policy = self._shared.get(name)
            if policy is None:
                policy = self._shared[name] = self._build_policy(name, {})
            return policy

    def _build_policy(self, name: str, code: Mapping[str, Any]) -> Policy:
        unknown = sorted(set(code) - {*LAYERS, "fallback"})
        if unknown:
            raise TypeError(
                f"unknown policy option(s) {', '.join(unknown)}; allowed: {', '.join([*LAYERS, 'fallback'])}"
            )
        problems = Problems()
        layers = self._policy_layers(name, code, problems)
        problems.raise_if_any()
        return Policy(name=name, fallback=code.get("fallback"), **layers)

    def _policy_layers(self, name: str, code: Mapping[str, Any], problems: Problems) -> dict[str, Any]:
        path = ("policies", name)
        spec = self.tree.get("policies", {}).get(name, {})
        layers: dict[str, Any] = {}
        for kind, convert in _AS_LAYER.items():
            base = convert(code.get(kind))
            layers[kind] = self._layer(path, kind, spec.get(kind), base, name, problems)
        return layers

    def _layer(
        self, path: tuple[str, ...], kind: str, spec: object, base: Any, default_name: str, problems: Problems
    ) -> Any:
        if spec is None:
            return base
        if spec is False:
            return None
        assert isinstance(spec, dict)  # noqa: S101 - the schema made it a table
        values = dict(spec)
        try:
            if "budget" in values:
                values["budget"] = _budget(values["budget"], getattr(base, "budget", None))
            if base is not None:
                return dataclasses.replace(base, **values)
            if kind == "breaker":
                values.setdefault("name", default_name)
            return LAYERS[kind](**values)
        except (TypeError, ValueError) as exc:
            self._failed(problems, (*path, kind), kind, str(exc))
            return None

    def _failed(self, problems: Problems, path: tuple[str, ...], strip: str, message: str) -> None:
        """Record a config's own error as ``<source>: <key path> <rule>``."""
        token, _, rest = message.partition(" ")
        if token.startswith(f"{strip}."):
            keys = tuple(token[len(strip) + 1 :].split("."))
            origin = self.origins.get((*path, *keys)) or self.origins.get(path) or CODE
            problems.add(origin, f"{dotted((*path, *keys))} {rest}")
        else:
            problems.add(self.origins.get(path) or CODE, f"{dotted(path)}: {message}")

    # -- middleware and httpx ------------------------------------------------------------

    def middleware_options(self, **code: Any) -> dict[str, Any]:
        """Keyword options for `ResilientMiddleware` / `ResilientWSGIMiddleware`: `code`, overridden by the file."""
        problems = Problems()
        options = self._middleware_options(code, problems)
        problems.raise_if_any()
        return options

    def _middleware_options(self, code: Mapping[str, Any], problems: Problems) -> dict[str, Any]:
        spec = self.tree.get("middleware", {})
        options = {**code, **{key: value for key, value in spec.items() if key != "routes"}}
        if "trusted_proxies" in options:
            options["trusted_proxies"] = tuple(options["trusted_proxies"])
        routes: dict[str, RouteOptions] = dict(code.get("routes", {}))
        for prefix, values in spec.get("routes", {}).items():
            path = ("middleware", "routes", prefix)
            try:
                base = routes.get(prefix)
                routes[prefix] = dataclasses.replace(base, **values) if base else RouteOptions(**values)
            except (TypeError, ValueError) as exc:
                self._failed(problems, path, "RouteOptions", str(exc))
        if routes:
            options["routes"] = routes
        try:
            build_edge_options(options)
        except (TypeError, ValueError) as exc:
            self._failed(problems, ("middleware",), "", f".{exc}")
        return options

    def httpx_options(self, host: str | None = None, /, **code: Any) -> dict[str, Any]:
        """Keyword options for the httpx transports: `code`, overridden by ``[httpx]`` (and the host's table)."""
        problems = Problems()
        options = self._httpx_options(host, code, problems)
        problems.raise_if_any()
        return options

    def httpx_hosts(self) -> tuple[str, ...]:
        """The hosts with a table of their own under ``[httpx.hosts]``."""
        return tuple(sorted(self.tree.get("httpx", {}).get("hosts", {})))

    def _httpx_options(self, host: str | None, code: Mapping[str, Any], problems: Problems) -> dict[str, Any]:
        spec: dict[str, Any] = {}
        merge(spec, {key: value for key, value in self.tree.get("httpx", {}).items() if key != "hosts"}, "", {})
        path: tuple[str, ...] = ("httpx",)
        if host is not None:
            merge(spec, self.tree.get("httpx", {}).get("hosts", {}).get(host, {}), "", {})
            path = ("httpx", "hosts", host)
        options = dict(code)
        name = spec.get("name", code.get("name", "httpx"))
        for key, value in spec.items():
            if key in LAYERS:
                base = code.get(key)
                if key != "breaker" or isinstance(base, bool):  # a template is a CircuitBreaker or a flag
                    base = _AS_LAYER[key](base) if not isinstance(base, bool) else None
                options[key] = self._layer(path, key, value, base, name, problems)
            elif key == "policy":
                options[key] = self._named_for_httpx(value, problems)
            else:
                options[key] = value
        try:
            build_httpx_options(options)  # type: ignore[arg-type]
        except (TypeError, ValueError) as exc:
            self._failed(problems, path, "", f".{exc}")
        return options

    def _named_for_httpx(self, name: object, problems: Problems) -> Policy | None:
        if not isinstance(name, str) or name not in self.tree.get("policies", {}):
            problems.add(
                self.origins.get(("httpx", "policy"), CODE), f"httpx.policy: policy {_undefined(str(name), self)}"
            )
            return None
        return self.policy(name)

    # -- show ------------------------------------------------------------------------------

    def entries(self) -> Iterator[tuple[str, str, str]]:
        """Every effective key as ``(key path, value, origin)``; origin is a file, a variable or "default"."""
        for name in self.policy_names():
            layers = self._policy_layers(name, {}, Problems())
            spec = self.tree["policies"][name]
            yield from self._layer_entries(("policies", name), spec, layers)
        if "middleware" in self.tree:
            options = build_edge_options(self._middleware_options({}, Problems()))
            for key in file_fields(EdgeOptions):
                if key == "routes":
                    for prefix, route in options.routes.items():
                        for rkey in file_fields(RouteOptions):
                            yield self._entry(("middleware", "routes", prefix, rkey), getattr(route, rkey))
                else:
                    yield self._entry(("middleware", key), getattr(options, key))
        for host in (None, *self.httpx_hosts()) if "httpx" in self.tree else ():
            path = ("httpx",) if host is None else ("httpx", "hosts", host)
            built = self._httpx_options(host, {}, Problems())
            layers = {key: built.get(key) for key in LAYERS}
            yield from self._layer_entries(path, {key: built[key] for key in LAYERS if key in built}, layers)
            for key, value in built.items():
                if key not in LAYERS:
                    shown = value.name if isinstance(value, Policy) else value
                    yield self._entry((*path, key), shown)

    def _layer_entries(
        self, path: tuple[str, ...], spec: Mapping[str, Any], layers: Mapping[str, Any]
    ) -> Iterator[tuple[str, str, str]]:
        for kind in LAYERS:
            if kind not in spec:
                continue
            layer = layers.get(kind)
            if layer is None or layer is False:
                yield self._entry((*path, kind), value=False)
                continue
            for key in file_fields(type(layer)):
                value = getattr(layer, key)
                if isinstance(value, RetryBudget):
                    for bkey in file_fields(RetryBudget):
                        yield self._entry((*path, kind, key, bkey), getattr(value, bkey))
                else:
                    yield self._entry((*path, kind, key), value)

    def _entry(self, path: tuple[str, ...], value: object) -> tuple[str, str, str]:
        return dotted(path), _show(value), self.origins.get(path, DEFAULT)


Config.__module__ = "resilient.config"


def validate(config: Config, problems: Problems) -> None:
    """Build every policy and option set once (without code); raise one error listing every problem."""
    for name in config.policy_names():
        config._policy_layers(name, {}, problems)
    if "middleware" in config.tree:
        config._middleware_options({}, problems)
    if "httpx" in config.tree:
        for host in (None, *config.httpx_hosts()):
            config._httpx_options(host, {}, problems)
    problems.raise_if_any()


def _budget(spec: object, base: RetryBudget | None) -> RetryBudget | None:
    if spec is False:
        return None
    if spec is True:
        return RetryBudget()
    if not isinstance(spec, Mapping):
        raise TypeError(f"retry.budget must be a table of budget fields or false, got {spec!r}")
    return dataclasses.replace(base, **spec) if base is not None else RetryBudget(**spec)


def _undefined(name: str, config: Config) -> str:
    names = config.policy_names()
    where = f" in {config.source}" if config.source else " (no configuration file was found)"
    defined = f"defined: {', '.join(names)}" if names else "no policy is defined"
    return f"{name!r} is not defined{where}; {defined}"


def _show(value: object) -> str:  # noqa: PLR0911 - one return per kind of value
    if isinstance(value, tuple) and all(isinstance(item, type) for item in value):
        return "[" + ", ".join(f'"{exception_name(item)}"' for item in value) + "]"
    if isinstance(value, type):
        return f'"{exception_name(value)}"'
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "(none)"
    if value is UNSET:
        return "(inherited)"
    return repr(value)
