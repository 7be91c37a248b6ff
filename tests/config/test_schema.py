"""The file's schema: every key, shorthands, exception names, unknown keys, errors collected."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import httpx
import pytest

from resilient import Bulkhead, CircuitBreaker, RateLimit, Retry, RetryBudget, Timeout
from resilient.config import ConfigError, load
from resilient.config._schema import CODE_ONLY, LAYERS, file_fields
from tests.config.conftest import Writer

FULL = """
[policies.payments]
timeout = { total = 5.0, attempt = 2.0, sync_mode = "thread", max_threads = 4 }
breaker = { name = "pay", failure_threshold = 4, failure_rate = 0.5, window = 20, minimum_calls = 5, \
slow_call_duration = 1.5, reset_timeout = 10.0, half_open_max_calls = 2, success_threshold = 2, \
exclude = ["KeyError"], storage = "memory://" }
rate_limit = { limit = "100/second", algorithm = "fixed-window", max_wait = 0.5, storage = "memory://", \
max_keys = 10, name = "pay" }
bulkhead = { max_concurrent = 10, max_wait = 0.05 }

[policies.payments.retry]
attempts = 3
on = ["ConnectionError", "httpx.ConnectError"]
initial_delay = 0.2
max_delay = 2.0
exp_base = 3.0
jitter = false
budget = { ratio = 0.1, min_per_second = 1.0, window = 5.0 }
"""


def _layers(path: Path) -> dict[str, object]:
    return load(path).policy("payments").describe()


def test_every_policy_key_reaches_its_config(write: Writer) -> None:
    """Each key of each layer table sets the same-named field of the Python config."""
    policy = _layers(write("resilient.toml", FULL))
    assert policy["timeout"] == Timeout(total=5.0, attempt=2.0, sync_mode="thread", max_threads=4)
    assert policy["retry"] == Retry(
        attempts=3,
        on=(ConnectionError, httpx.ConnectError),
        initial_delay=0.2,
        max_delay=2.0,
        exp_base=3.0,
        jitter=False,
        budget=RetryBudget(ratio=0.1, min_per_second=1.0, window=5.0),
    )
    assert policy["breaker"] == CircuitBreaker(
        name="pay",
        failure_threshold=4,
        failure_rate=0.5,
        window=20,
        minimum_calls=5,
        slow_call_duration=1.5,
        reset_timeout=10.0,
        half_open_max_calls=2,
        success_threshold=2,
        exclude=(KeyError,),
        storage="memory://",
    )
    assert policy["rate_limit"] == RateLimit(
        "100/second", algorithm="fixed-window", max_wait=0.5, storage="memory://", max_keys=10, name="pay"
    )
    assert policy["bulkhead"] == Bulkhead(max_concurrent=10, max_wait=0.05)


def test_the_full_example_sets_every_file_field() -> None:
    """The test file above names every field a file may set (the schema is the dataclasses' fields)."""
    for kind, cls in LAYERS.items():
        for name in file_fields(cls):
            assert f"{name} =" in FULL or f"{name} = " in FULL.replace("\\\n", " "), (kind, name)
    assert {f.name for f in dataclasses.fields(Retry)} - set(file_fields(Retry)) == CODE_ONLY[Retry]


@pytest.mark.parametrize(
    ("text", "layer", "expected"),
    [
        ("timeout = 2.5", "timeout", Timeout(total=2.5)),
        ("retry = 4", "retry", Retry(attempts=4)),
        ("retry = true", "retry", Retry()),
        ('breaker = "shared"', "breaker", CircuitBreaker(name="shared")),
        ("breaker = true", "breaker", CircuitBreaker(name="payments")),
        ('rate_limit = "5/second"', "rate_limit", RateLimit("5/second")),
        ("bulkhead = 7", "bulkhead", Bulkhead(max_concurrent=7)),
    ],
)
def test_shorthands_read_as_in_python(write: Writer, text: str, layer: str, expected: object) -> None:
    """A scalar is the same shorthand `Policy` takes (``retry = 4`` is ``Retry(attempts=4)``)."""
    assert _layers(write("resilient.toml", f"[policies.payments]\n{text}\n"))[layer] == expected


def test_false_switches_a_layer_off_and_budget_false_is_none(write: Writer) -> None:
    """``retry = false`` leaves the layer out; ``budget = false`` is ``budget=None``."""
    path = write("resilient.toml", "[policies.a]\nretry = false\n[policies.b.retry]\nbudget = false\n")
    config = load(path)
    assert "retry" not in config.policy("a").describe()
    assert config.policy("b").describe()["retry"] == Retry(budget=None)


def test_a_bad_value_names_file_key_path_value_and_rule(write: Writer) -> None:
    """The error reads ``resilient.toml: policies.payments.retry.attempts must be >= 1, got 0``."""
    write("resilient.toml", "[policies.payments]\nretry = { attempts = 0 }\n")
    with pytest.raises(ConfigError) as info:
        load()
    assert str(info.value) == "resilient.toml: policies.payments.retry.attempts must be >= 1, got 0"


def test_an_unknown_key_names_the_closest_valid_one(write: Writer) -> None:
    """A misspelt key is an error suggesting the key meant."""
    path = write("resilient.toml", "[policies.payments]\nretry = { atempts = 2 }\n")
    with pytest.raises(
        ConfigError, match=r"policies\.payments\.retry\.atempts is not a known key; did you mean 'attempts'"
    ):
        load(path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[policy.x]\n", "policy is not a known key; did you mean 'policies'"),
        ("[policies.x]\ntimout = 1.0\n", "policies.x.timout is not a known key; did you mean 'timeout'"),
        ("[policies.x]\nretry = { on_result = 1 }\n", "policies.x.retry.on_result holds code"),
        ("[policies.x]\nfallback = 1\n", "policies.x.fallback holds code"),
        ("[policies.x]\nretry = { budget = { ration = 0.1 } }\n", "did you mean 'ratio'"),
        (
            "[middleware]\nmax_inflight = 3\n",
            "middleware.max_inflight is not a known key; did you mean 'max_in_flight'",
        ),
        ("[middleware]\nrate_limit_key = 3\n", "middleware.rate_limit_key holds code"),
        ('[middleware.routes."/a"]\nrate_limt = "1/second"\n', "did you mean 'rate_limit'"),
        ("[httpx]\nretries = 3\n", "httpx.retries is not a known key; did you mean 'retry'"),
        ('[httpx.hosts."a.example"]\nhosts = {}\n', 'httpx.hosts."a.example".hosts is not a known key'),
    ],
)
def test_unknown_keys_everywhere_are_errors(write: Writer, text: str, message: str) -> None:
    """Unknown keys are errors in every section, with the closest key or the reason."""
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("(", r"\(")):
        load(write("resilient.toml", text))


def test_exception_names_resolve_or_fail(write: Writer) -> None:
    """Builtins and dotted paths resolve; a name that resolves to nothing is an error naming it."""
    path = write("resilient.toml", '[policies.p]\nretry = { on = ["OSError", "resilient.CircuitOpenError", "Nope"] }\n')
    with pytest.raises(ConfigError, match=r"policies\.p\.retry\.on names 'Nope'"):
        load(path)
    ok = write("ok.toml", '[policies.p]\nretry = { on = ["OSError", "httpx:TimeoutException"] }\n')
    assert load(ok).policy("p").describe()["retry"].on == (OSError, httpx.TimeoutException)


def test_every_error_is_collected_into_one_exception(write: Writer) -> None:
    """Three bad keys in three sections give one ConfigError with three lines."""
    write(
        "resilient.toml",
        "[policies.p]\nbulkhead = 0\ntimeout = -1\n[middleware]\nmax_in_flight = 0\n[httpx]\nmax_hosts = 0\n",
    )
    with pytest.raises(ConfigError) as info:
        load()
    assert info.value.problems == (
        "resilient.toml: policies.p.timeout.total must be a finite number of seconds > 0, got -1",
        "resilient.toml: policies.p.bulkhead.max_concurrent must be >= 1, got 0",
        "resilient.toml: middleware.max_in_flight must be >= 1, got 0",
        "resilient.toml: httpx.max_hosts must be >= 1, got 0",
    )
    assert isinstance(info.value, ValueError)


def test_middleware_and_httpx_sections_give_the_options(write: Writer) -> None:
    """``[middleware]``, its routes, ``[httpx]`` and a host's table become keyword options."""
    path = write(
        "resilient.toml",
        '[middleware]\nrate_limit = "100/minute"\nmax_in_flight = 200\ntrusted_proxies = ["10.0.0.0/8"]\n'
        '[middleware.routes."/health"]\nrate_limit = false\n'
        '[httpx]\nretry = 3\nretry_statuses = [503]\n[httpx.hosts."api.example.com"]\ntimeout = 1.0\n',
    )
    config = load(path)
    middleware = config.middleware_options()
    assert middleware["rate_limit"] == "100/minute"
    assert middleware["max_in_flight"] == 200
    assert middleware["trusted_proxies"] == ("10.0.0.0/8",)
    assert middleware["routes"]["/health"].rate_limit is None
    assert config.httpx_options() == {"retry": Retry(attempts=3), "retry_statuses": [503]}
    host = config.httpx_options("api.example.com")
    assert host["timeout"] == Timeout(total=1.0)
    assert host["retry"] == Retry(attempts=3)


def test_httpx_policy_names_a_defined_policy(write: Writer) -> None:
    """``[httpx] policy = "name"`` takes that policy; an undefined one is a load error."""
    config = load(write("resilient.toml", '[policies.api]\nretry = 2\n[httpx]\npolicy = "api"\n'))
    assert config.httpx_options()["policy"] is config.policy("api")
    with pytest.raises(ConfigError, match=r"httpx\.policy: policy 'nope' is not defined"):
        load(write("bad.toml", '[httpx]\npolicy = "nope"\n'))
