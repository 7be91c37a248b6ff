"""Zero-code mode: patches installed at process start by `resilient run` (via `sitecustomize`).

Exactly these, each applied when its module is first imported and marked so it is applied
once (see docs/configuration.md, "What is patched"):

- ``uvicorn.config.Config.load``: the loaded ASGI application (after uvicorn's own adapters,
  so WSGI apps run under ``--interface wsgi`` too) is wrapped in `ResilientMiddleware`.
- ``waitress.server.create_server``: the WSGI application is wrapped in `ResilientWSGIMiddleware`
  (``waitress-serve`` and ``waitress.serve`` both go through it).
- ``werkzeug.serving.run_simple``: the same, for ``flask run`` and ``app.run()``.
- ``gunicorn.app.wsgiapp.WSGIApplication.load``: the same, unless the worker is uvicorn's
  (then uvicorn's patch wraps the app, once).
- ``httpx.Client.__init__`` / ``httpx.AsyncClient.__init__``: the client's transport is wrapped
  in `ResilientTransport` / `AsyncResilientTransport`, and each ``[httpx.hosts."<host>"]`` gets a
  mount of its own; a client whose transport is resilient already is left alone.

Options come from ``[middleware]`` and ``[httpx]``. ``RESILIENT_DISABLED=1`` turns it all off.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any, Final

from resilient.config._current import current
from resilient.config._errors import ConfigError
from resilient.config._hooks import when_imported

__all__ = ["ENV_DISABLED", "PATCHED", "disabled", "install", "wrap_asgi", "wrap_wsgi"]

ENV_DISABLED: Final = "RESILIENT_DISABLED"
_MARK: Final = "__resilient_patch__"
#: What was patched in this process, in order (``"uvicorn.config.Config.load"``, ...).
PATCHED: list[str] = []
_installed: list[bool] = [False]


def disabled(environ: dict[str, str] | os._Environ[str] | None = None) -> bool:
    """True when ``RESILIENT_DISABLED`` is set to anything but ``""``, ``0`` or ``false``."""
    value = (os.environ if environ is None else environ).get(ENV_DISABLED, "")
    return value.strip().lower() not in {"", "0", "false", "no"}


def install() -> bool:
    """Register every patch (idempotent); False when disabled or the configuration is invalid."""
    if disabled() or _installed[0]:
        return False
    try:
        current()
    except ConfigError as exc:
        print(f"resilient: zero-code mode is off, the configuration is invalid:\n{exc}", file=sys.stderr)  # noqa: T201
        return False
    _installed[0] = True
    when_imported("uvicorn.config", _patch_uvicorn)
    when_imported("waitress.server", _patch_waitress)
    when_imported("werkzeug.serving", _patch_werkzeug)
    when_imported("gunicorn.app.wsgiapp", _patch_gunicorn)
    when_imported("httpx", _patch_httpx)
    return True


# -- applications ----------------------------------------------------------------------------


def _is_resilient(app: object) -> bool:
    from resilient.asgi import ResilientMiddleware  # noqa: PLC0415 - the edge loads only when an app does
    from resilient.wsgi import ResilientWSGIMiddleware  # noqa: PLC0415

    return isinstance(app, ResilientMiddleware | ResilientWSGIMiddleware)


def wrap_asgi(app: Any) -> Any:
    """`app` in `ResilientMiddleware` with the ``[middleware]`` options (unless it already is)."""
    from resilient.asgi import ResilientMiddleware  # noqa: PLC0415

    return app if _is_resilient(app) else ResilientMiddleware(app, **current().middleware_options())


def wrap_wsgi(app: Any) -> Any:
    """`app` in `ResilientWSGIMiddleware` with the ``[middleware]`` options (unless it already is)."""
    from resilient.wsgi import ResilientWSGIMiddleware  # noqa: PLC0415

    return app if _is_resilient(app) else ResilientWSGIMiddleware(app, **current().middleware_options())


def _replace(owner: Any, attribute: str, make: Callable[[Any], Any], label: str) -> None:
    """Set ``owner.attribute = make(original)`` once; later calls see the mark and do nothing."""
    original = getattr(owner, attribute, None)
    if original is None or getattr(original, _MARK, False):
        return
    patched = functools.wraps(original)(make(original))
    setattr(patched, _MARK, True)
    setattr(owner, attribute, patched)
    PATCHED.append(label)


def _patch_uvicorn(module: ModuleType) -> None:
    def make(original: Callable[[Any], None]) -> Callable[[Any], None]:
        def load(self: Any) -> None:
            original(self)
            self.loaded_app = wrap_asgi(self.loaded_app)

        return load

    _replace(module.Config, "load", make, "uvicorn.config.Config.load")


def _wrap_app_argument(position: int, wrap: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """A patch maker wrapping the application passed at `position` (or as ``application=``)."""

    def make(original: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            if len(args) > position:
                args = (*args[:position], wrap(args[position]), *args[position + 1 :])
            elif "application" in kwargs:
                kwargs["application"] = wrap(kwargs["application"])
            return original(*args, **kwargs)

        return call

    return make


def _patch_waitress(module: ModuleType) -> None:
    _replace(module, "create_server", _wrap_app_argument(0, wrap_wsgi), "waitress.server.create_server")


def _patch_werkzeug(module: ModuleType) -> None:
    _replace(module, "run_simple", _wrap_app_argument(2, wrap_wsgi), "werkzeug.serving.run_simple")


def _patch_gunicorn(module: ModuleType) -> None:
    def make(original: Callable[[Any], Any]) -> Callable[[Any], Any]:
        def load(self: Any) -> Any:
            app = original(self)
            worker = str(getattr(self.cfg, "worker_class_str", ""))
            return app if "uvicorn" in worker.lower() else wrap_wsgi(app)

        return load

    _replace(module.WSGIApplication, "load", make, "gunicorn.app.wsgiapp.WSGIApplication.load")


# -- httpx -----------------------------------------------------------------------------------


def _patch_httpx(module: ModuleType) -> None:
    from resilient.httpx import AsyncResilientTransport, ResilientTransport  # noqa: PLC0415

    for cls, transport_cls in ((module.Client, ResilientTransport), (module.AsyncClient, AsyncResilientTransport)):
        _replace(cls, "__init__", _client_init(transport_cls), f"httpx.{cls.__name__}.__init__")


def _client_init(transport_cls: type) -> Callable[[Callable[..., None]], Callable[..., None]]:
    def make(original: Callable[..., None]) -> Callable[..., None]:
        def init(self: Any, *args: Any, **kwargs: Any) -> None:
            original(self, *args, **kwargs)
            _protect_client(self, transport_cls)

        return init

    return make


def _protect_client(client: Any, transport_cls: type) -> None:
    """Wrap the client's transport, and mount one per configured host, unless already resilient."""
    from resilient.httpx import AsyncResilientTransport, ResilientTransport  # noqa: PLC0415

    inner = client._transport
    if isinstance(inner, ResilientTransport | AsyncResilientTransport):
        return
    config = current()
    client._transport = transport_cls(inner, **config.httpx_options())
    hosts = config.httpx_hosts()
    if hosts:
        import httpx  # noqa: PLC0415 - loaded already: this runs inside httpx.Client.__init__

        for host in hosts:
            pattern = httpx._utils.URLPattern(f"all://{host}")
            client._mounts[pattern] = transport_cls(inner, **config.httpx_options(host))
        client._mounts = dict(sorted(client._mounts.items()))
