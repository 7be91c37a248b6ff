"""Sources, environment overrides, the precedence rule (code < file < env) and use by name."""

from __future__ import annotations

import pytest

from resilient import Bulkhead, Policy, Retry, Timeout, config, resilient
from resilient.config import ConfigError, load
from tests.config.conftest import Writer

PAYMENTS = "[policies.payments]\ntimeout = 5.0\nretry = { attempts = 3 }\n"


def test_resilient_toml_in_the_working_directory_is_read(write: Writer) -> None:
    """With no RESILIENT_CONFIG, ./resilient.toml is the source."""
    write("resilient.toml", PAYMENTS)
    assert load().source == "resilient.toml"
    assert load().policy_names() == ("payments",)


def test_pyproject_tool_resilient_is_read_when_no_resilient_toml(write: Writer) -> None:
    """``[tool.resilient]`` in ./pyproject.toml is the source when there is no resilient.toml."""
    write("pyproject.toml", "[project]\nname = 'x'\n[tool.resilient.policies.api]\nretry = 2\n")
    assert load().source == "pyproject.toml [tool.resilient]"
    assert load().policy("api").retry == Retry(attempts=2)


def test_resilient_config_names_the_file_and_wins(write: Writer, monkeypatch: pytest.MonkeyPatch) -> None:
    """RESILIENT_CONFIG is read instead of ./resilient.toml; a missing file is an error."""
    write("resilient.toml", PAYMENTS)
    other = write("other.toml", "[policies.other]\nretry = 2\n")
    monkeypatch.setenv("RESILIENT_CONFIG", str(other))
    assert load().policy_names() == ("other",)
    monkeypatch.setenv("RESILIENT_CONFIG", "missing.toml")
    with pytest.raises(ConfigError, match=r"RESILIENT_CONFIG=missing\.toml: no such file"):
        load()


def test_no_file_is_an_empty_configuration() -> None:
    """Without any file the configuration defines nothing (and is not an error)."""
    assert load().source is None
    assert load().policy_names() == ()


def test_invalid_toml_names_the_file(write: Writer) -> None:
    """A TOML syntax error is a ConfigError naming the file."""
    write("resilient.toml", "[policies\n")
    with pytest.raises(ConfigError, match=r"resilient\.toml: is not valid TOML"):
        load()


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("5", 5), ("2.5", 2.5), ("true", True), ('"100/second"', "100/second"), ("100/second", "100/second")],
)
def test_environment_values_are_toml_scalars(raw: str, expected: object) -> None:
    """An override's value is read as TOML; text that is not TOML stays a string."""
    from resilient.config._env import parse_value  # noqa: PLC0415 - the unit under test

    assert parse_value(raw) == expected


def test_environment_overrides_one_key_of_the_file(write: Writer) -> None:
    """RESILIENT_POLICIES__PAYMENTS__RETRY__ATTEMPTS=5 changes attempts and nothing else."""
    write("resilient.toml", PAYMENTS)
    loaded = load(environ={"RESILIENT_POLICIES__PAYMENTS__RETRY__ATTEMPTS": "5"})
    policy = loaded.policy("payments")
    assert policy.retry == Retry(attempts=5)
    assert policy.timeout == Timeout(total=5.0)
    assert (
        loaded.origins[("policies", "payments", "retry", "attempts")] == "RESILIENT_POLICIES__PAYMENTS__RETRY__ATTEMPTS"
    )
    assert loaded.origins[("policies", "payments", "timeout", "total")] == "resilient.toml"


def test_environment_alone_defines_keys_and_matches_names_without_case(write: Writer) -> None:
    """Overrides work without a file, and PAYMENTS finds [policies.Payments]."""
    env = {"RESILIENT_MIDDLEWARE__MAX_IN_FLIGHT": "9", "RESILIENT_POLICIES__X__BULKHEAD": "2"}
    assert load(environ=env).middleware_options() == {"max_in_flight": 9}
    assert load(environ=env).policy("x").bulkhead == Bulkhead(max_concurrent=2)
    write("resilient.toml", "[policies.Payments]\nretry = 3\n")
    assert load(environ={"RESILIENT_POLICIES__PAYMENTS__RETRY": "false"}).policy("Payments").retry is None


def test_variables_without_two_levels_are_not_overrides() -> None:
    """RESILIENT_STORAGE, RESILIENT_DISABLED and RESILIENT_CONFIG-like names are left alone."""
    assert load(environ={"RESILIENT_STORAGE": "memory://", "RESILIENT_DISABLED": "1"}).tree == {}


def test_a_bad_environment_value_names_the_variable(write: Writer) -> None:
    """An invalid override's error starts with the variable's name, not the file's."""
    write("resilient.toml", PAYMENTS)
    with pytest.raises(ConfigError) as info:
        load(environ={"RESILIENT_POLICIES__PAYMENTS__RETRY__ATTEMPTS": "0"})
    assert str(info.value) == (
        "RESILIENT_POLICIES__PAYMENTS__RETRY__ATTEMPTS: policies.payments.retry.attempts must be >= 1, got 0"
    )
    with pytest.raises(ConfigError, match=r"RESILIENT_POLICIES__PAYMENTS__RETRI: policies\.payments\.retri is not"):
        load(environ={"RESILIENT_POLICIES__PAYMENTS__RETRI": "2"})


def test_precedence_code_then_file_then_environment(write: Writer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Code sets the base, the file overrides its keys, the environment overrides the file's."""
    write("resilient.toml", "[policies.payments]\nretry = { attempts = 4 }\ntimeout = { attempt = 1.0 }\n")
    monkeypatch.setenv("RESILIENT_POLICIES__PAYMENTS__TIMEOUT__ATTEMPT", "0.5")
    policy = Policy.named("payments", retry=Retry(attempts=2, initial_delay=0.3), timeout=9.0, bulkhead=3)
    assert policy.retry == Retry(attempts=4, initial_delay=0.3)  # file over code, key by key
    assert policy.timeout == Timeout(total=9.0, attempt=0.5)  # env over file, code's total kept
    assert policy.bulkhead == Bulkhead(max_concurrent=3)  # only code set it


def test_the_file_can_switch_off_what_the_code_set(write: Writer) -> None:
    """``retry = false`` in the file removes the code's retry."""
    write("resilient.toml", "[policies.payments]\nretry = false\n")
    assert Policy.named("payments", retry=5).retry is None


def test_decorating_by_name_takes_the_named_policy(write: Writer) -> None:
    """``@resilient("payments")`` wraps the function in the file's policy."""
    write(
        "resilient.toml", "[policies.payments]\nretry = { attempts = 3, on = ['ConnectionError'], initial_delay = 0 }\n"
    )
    calls = []

    @resilient("payments")
    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError
        return "ok"

    assert flaky() == "ok"
    assert len(calls) == 3
    assert flaky.__resilient_policy__ is Policy.named("payments")  # type: ignore[attr-defined]


def test_an_undefined_name_fails_at_decoration_listing_the_defined_ones(write: Writer) -> None:
    """The error names the missing policy, the file, and the names that are defined."""
    write("resilient.toml", PAYMENTS + "[policies.search]\nretry = 2\n")
    with pytest.raises(
        ConfigError, match=r"policy 'paymnts' is not defined in resilient.toml; defined: payments, search"
    ):
        resilient("paymnts")


def test_an_undefined_name_without_a_file_says_no_file_was_found() -> None:
    """With no configuration file, the error says so."""
    with pytest.raises(ConfigError, match=r"policy 'x' is not defined \(no configuration file was found\)"):
        Policy.named("x")


def test_a_name_with_code_options_needs_no_file_entry() -> None:
    """Code options define the policy; the file may override it later."""
    assert resilient("local", retry=2).retry == Retry(attempts=2)


def test_resilient_by_name_rejects_a_second_name() -> None:
    """``resilient("a", name="b")`` is a TypeError."""
    with pytest.raises(TypeError, match="names the policy already"):
        resilient("a", name="b")  # type: ignore[call-overload]


def test_the_current_configuration_is_loaded_once_and_replaceable(write: Writer) -> None:
    """`current()` caches the load; `use()` swaps it; the named policy is shared per configuration."""
    write("resilient.toml", PAYMENTS)
    first = config.current()
    assert config.current() is first
    assert config.policy("payments") is config.policy("payments")
    config.use(load(environ={"RESILIENT_POLICIES__PAYMENTS__RETRY__ATTEMPTS": "7"}))
    assert config.policy("payments").retry == Retry(attempts=7)


def test_a_named_policy_compiles_to_the_same_layers_as_code(write: Writer) -> None:
    """A policy from the file is an ordinary `Policy` with the same layers as the one written in code."""
    write("resilient.toml", "[policies.p]\ntimeout = 5.0\nretry = 3\nbreaker = { failure_threshold = 5 }\n")
    from resilient import CircuitBreaker  # noqa: PLC0415 - only this test needs it

    named = Policy.named("p")
    in_code = Policy(name="p", timeout=5.0, retry=3, breaker=CircuitBreaker(name="p"))
    assert type(named) is Policy
    assert named.describe() == in_code.describe()
