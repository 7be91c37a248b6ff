"""The public surface of `resilient`: pinned, complete, and shown under the package name."""

from __future__ import annotations

import importlib.metadata
import types

import pytest

import resilient

EXPORTED = [
    "Bulkhead",
    "BulkheadFullError",
    "CircuitBreaker",
    "CircuitOpenError",
    "DeadlineExceededError",
    "Fallback",
    "Policy",
    "RateLimit",
    "RateLimitedError",
    "ResilienceError",
    "Retry",
    "RetryBudget",
    "Timeout",
    "configure_storage",
    "current_request_id",
    "deadline",
    "resilient",
]

# Names the package namespace holds that are not API: `from __future__ import annotations`
# and the TYPE_CHECKING guard.
NOT_API = {"annotations", "TYPE_CHECKING"}


def test_all_is_pinned() -> None:
    """`resilient.__all__` is exactly the documented list (changing it is a deliberate act)."""
    assert resilient.__all__ == EXPORTED


def test_all_is_sorted() -> None:
    """`__all__` is sorted, classes first by case, as the house style asks."""
    assert resilient.__all__ == sorted(resilient.__all__)


def test_every_public_name_is_exported() -> None:
    """Every public non-module attribute of the package is in `__all__`, and every entry exists."""
    public = {
        name
        for name, value in vars(resilient).items()
        if not name.startswith("_") and name not in NOT_API and not isinstance(value, types.ModuleType)
    }
    assert public <= set(resilient.__all__)
    for name in resilient.__all__:
        assert hasattr(resilient, name), name


def test_star_import_gives_exactly_all() -> None:
    """`from resilient import *` binds exactly the names of `__all__`."""
    namespace: dict[str, object] = {}
    exec("from resilient import *", namespace)  # noqa: S102 - the behaviour under test
    assert sorted(name for name in namespace if name != "__builtins__") == EXPORTED


@pytest.mark.parametrize("name", [name for name in EXPORTED if isinstance(getattr(resilient, name), type)])
def test_public_classes_live_in_resilient(name: str) -> None:
    """Each public class reports `__module__ == "resilient"` (reprs and tracebacks show resilient.X)."""
    assert getattr(resilient, name).__module__ == "resilient"


def test_every_exported_class_is_checked() -> None:
    """The classes among the exports are the configs, Policy and the errors (13 in all)."""
    classes = [name for name in EXPORTED if isinstance(getattr(resilient, name), type)]
    assert len(classes) == 13


def test_errors_share_one_base() -> None:
    """Every error of the library subclasses ResilienceError; the timeout one is a TimeoutError."""
    for error in (
        resilient.BulkheadFullError,
        resilient.CircuitOpenError,
        resilient.DeadlineExceededError,
        resilient.RateLimitedError,
    ):
        assert issubclass(error, resilient.ResilienceError)
    assert issubclass(resilient.DeadlineExceededError, TimeoutError)


def test_version_is_read_lazily_from_the_metadata() -> None:
    """`resilient.__version__` is the installed distribution's version."""
    assert resilient.__version__ == importlib.metadata.version("resilient")


def test_unknown_attribute_raises_attribute_error() -> None:
    """A missing attribute raises AttributeError naming it."""
    with pytest.raises(AttributeError, match="no_such_thing"):
        _ = resilient.no_such_thing


def test_current_request_id_lives_in_resilient() -> None:
    """`resilient.current_request_id` reports `__module__ == "resilient"`, as the classes do."""
    assert resilient.current_request_id.__module__ == "resilient"


def test_current_request_id_is_none_outside_a_request() -> None:
    """`resilient.current_request_id()` is None when no middleware bound an id."""
    assert resilient.current_request_id() is None


def test_current_request_id_reads_the_bound_id() -> None:
    """`resilient.current_request_id()` returns the id the middleware bound for the request."""
    from resilient._kernel.context import REQUEST_ID  # noqa: PLC0415 - the binding under test

    token = REQUEST_ID.set("req-42")
    try:
        assert resilient.current_request_id() == "req-42"
    finally:
        REQUEST_ID.reset(token)


def test_config_surface_is_pinned() -> None:
    """`resilient.config` exports exactly its documented names, shown under `resilient.config`."""
    from resilient import config  # noqa: PLC0415 - the public sub-module under test

    assert config.__all__ == [
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
    assert config.Config.__module__ == config.ConfigError.__module__ == "resilient.config"
