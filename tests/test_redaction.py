"""Tests for resilient.redaction: secrets masked by name and by shape, lookalikes untouched."""

from __future__ import annotations

import copy
import time
from typing import TYPE_CHECKING, NamedTuple

import pytest
from hypothesis import given
from hypothesis import strategies as st

from resilient.redaction import (
    MASK,
    is_secret_key,
    redact_event_dict,
    redact_headers,
    redact_text,
    redact_url,
    redact_value,
)

if TYPE_CHECKING:
    from collections.abc import Callable

# Vendor prefixes are split from their bodies so that secret scanners do not flag this file.
GITHUB_BODY = "0123456789abcdefghijklmnopqrstuvWXYZ"
JWT = (
    "eyJ" + "hbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9"
    ".eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4ifQ"
    ".SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
)
PEM_BODY = "MIIEowIBAAKCAQEAx4fak3b0dyLinesOfBase64==\nQWxhZGRpbjpvcGVuIHNlc2FtZQ=="


def _text(value: str) -> str:
    return redact_text(value)


def _url(value: str) -> str:
    return redact_url(value)


def _header(name: str) -> Callable[[str], str]:
    def redact(value: str) -> str:
        return redact_headers([(name.encode(), value.encode())])[name]

    return redact


def _field(key: str) -> Callable[[str], str]:
    def redact(value: str) -> str:
        return str(redact_value(key, value))

    return redact


# (redaction function, input, the secret that must disappear, the hint that must remain)
SECRET_CASES = [
    pytest.param(
        _text,
        "401 with Authorization: Bearer abcdefghij0123456789wxyz",
        "abcdefghij0123456789wxyz",
        "Bearer ***wxyz",
        id="bearer-in-text",
    ),
    pytest.param(_text, "sent bearer 9f8e7d6c5b4a", "9f8e7d6c5b4a", "bearer ***", id="short-bearer"),
    pytest.param(
        _text,
        "Basic dXNlcjpwYXNzd29yZA== sent",
        "dXNlcjpwYXNzd29yZA",
        "Basic *** ",  # nothing kept: the base64 ends with the password ("ZA==" is its "d")
        id="basic-auth",
    ),
    pytest.param(_text, f"token was {JWT}", JWT[3:-4], "eyJ***sw5c", id="jwt"),
    pytest.param(_text, "key AKIA" + "IOSFODNN7EXAMPLE used", "IOSFODNN7EXA", "AKIA***MPLE", id="aws-id"),
    pytest.param(_text, "ASIA" + "Y34FZKBOKMUTVV7A", "Y34FZKBOKMUT", "ASIA***VV7A", id="aws-session-id"),
    pytest.param(
        _text,
        "aws_secret_access_key=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        "wJalrXUtnFEMI/K7MDENG",
        "aws_secret_access_key=***EKEY",
        id="aws-secret",
    ),
    pytest.param(_text, "ghp_" + GITHUB_BODY, GITHUB_BODY[:-4], "ghp_***WXYZ", id="github-classic"),
    pytest.param(_text, "gho_" + GITHUB_BODY, GITHUB_BODY[:-4], "gho_***WXYZ", id="github-oauth"),
    pytest.param(
        _text,
        "github_pat_" + "11ABCDEFG0_" + GITHUB_BODY,
        "11ABCDEFG0_" + GITHUB_BODY[:-4],
        "github_pat_***WXYZ",
        id="github-fine-grained",
    ),
    pytest.param(
        _text,
        "xoxb-" + "123456789012-1234567890123-AbCdEfGhIjKl",
        "1234567890123-AbCdEfGh",
        "xoxb-***IjKl",
        id="slack-bot",
    ),
    pytest.param(
        _text,
        "xoxp-" + "1234567890-abcdefghijklmn",
        "1234567890-abcdefghij",
        "xoxp-***klmn",
        id="slack-user",
    ),
    pytest.param(
        _text,
        "stripe: sk_live_" + "4eC39HqLyjWDarjtT1zdp7dc",
        "4eC39HqLyjWDarjtT1zd",
        "sk_live_***p7dc",
        id="stripe-live",
    ),
    pytest.param(
        _text,
        "sk_test_" + "51Habcdefghijklmnopqrstu",
        "51Habcdefghijklmnopq",
        "sk_test_***rstu",
        id="stripe-test",
    ),
    pytest.param(
        _text,
        "rk_live_" + "51Hzyxwvutsrqponmlkjihgf",
        "51Hzyxwvutsrqponmlkj",
        "rk_live_***ihgf",
        id="stripe-restricted",
    ),
    pytest.param(
        _text,
        "AIza" + "SyA-1234567890abcdefghijklmnopqrstu",
        "SyA-1234567890abcdefghijklmnopq",
        "AIza***rstu",
        id="google-api-key",
    ),
    pytest.param(
        _text,
        f"-----BEGIN RSA PRIVATE KEY-----\n{PEM_BODY}\n-----END RSA PRIVATE KEY-----",
        "MIIEowIBAAKCAQEA",
        "-----BEGIN RSA PRIVATE KEY-----***-----END RSA PRIVATE KEY-----",
        id="pem-rsa",
    ),
    pytest.param(
        _text,
        f"key: -----BEGIN OPENSSH PRIVATE KEY-----\n{PEM_BODY}",
        "QWxhZGRpbjpvcGVu",
        "-----BEGIN OPENSSH PRIVATE KEY-----***",
        id="pem-truncated",
    ),
    pytest.param(_text, "login failed password=hunter2 user=bob", "hunter2", "password=***", id="password-kv"),
    pytest.param(_text, "retry with token=abc123def", "abc123def", "token=***", id="token-kv"),
    pytest.param(
        _text,
        '{"api_key": "0123456789abcdefXYZW"}',
        "0123456789abcdef",
        '"api_key": "***XYZW"',
        id="api-key-json",
    ),
    pytest.param(
        _text,
        "{'client_secret': 'correct horse battery'}",
        "correct horse",
        "'client_secret': '***tery'",
        id="secret-in-repr",
    ),
    pytest.param(
        _text,
        "could not connect to postgres://admin:s3cr3t-pass@db:5432/app",
        "s3cr3t-pass",
        "postgres://admin:***@db:5432/app",
        id="url-userinfo-in-text",
    ),
    pytest.param(_url, "redis://:s3cr3t@cache:6379/0", "s3cr3t", "redis://:***@cache:6379/0", id="redis-url"),
    pytest.param(
        _url,
        "https://ghp_" + GITHUB_BODY + "@github.com/org/repo.git",
        GITHUB_BODY[:-4],
        "https://ghp_***WXYZ@github.com/org/repo.git",
        id="token-as-url-user",
    ),
    pytest.param(
        _url,
        "https://app.example.com/callback#access_token=0123456789abcdefQRST&state=xyz",
        "0123456789abcdef",
        "#access_token=***QRST&state=xyz",
        id="token-in-fragment",
    ),
    pytest.param(
        _header("Authorization"),
        "Bearer abcdefghijklmnop1234",
        "abcdefghijklmnop",
        "Bearer ***1234",
        id="authorization-header",
    ),
    pytest.param(
        _header("Proxy-Authorization"),
        "Basic dXNlcjpwYXNz",
        "dXNlcjpwYXNz",
        "Basic ***",
        id="proxy-authorization-header",
    ),
    pytest.param(
        _header("Cookie"),
        "session=abcdef123; theme=dark",
        "abcdef123",
        "session=***; theme=***",
        id="cookie-header",
    ),
    pytest.param(
        _header("Set-Cookie"),
        "sid=31d4d96e407aad42; Path=/; HttpOnly",
        "31d4d96e407aad42",
        "sid=***ad42; Path=/; HttpOnly",
        id="set-cookie-header",
    ),
    pytest.param(_header("X-Api-Key"), "k-123456", "k-123456", MASK, id="x-api-key-header"),
    pytest.param(_header("X-Auth-Token"), "abc.def", "abc.def", MASK, id="x-auth-token-header"),
    pytest.param(_header("X-CSRF-Token"), "f00dface", "f00dface", MASK, id="csrf-header"),
    pytest.param(_header("X-Service-Secret"), "plain-value", "plain-value", MASK, id="secret-named-header"),
    pytest.param(
        _field("db_password"),
        "correct horse battery staple",
        "correct horse",
        "***aple",
        id="secret-field",
    ),
    pytest.param(
        _field("accessToken"),
        "Bearer 0123456789abcdefghij",
        "0123456789abcdef",
        "Bearer ***ghij",
        id="camel-case-field-keeps-scheme",
    ),
]


@pytest.mark.parametrize(("redact", "raw", "secret", "hint"), SECRET_CASES)
def test_secret_is_masked_and_hint_kept(redact: Callable[[str], str], raw: str, secret: str, hint: str) -> None:
    """Each secret shape disappears from the output while its scheme, prefix or tail stays."""
    redacted = redact(raw)

    assert secret not in redacted
    assert hint in redacted


@pytest.mark.parametrize(("redact", "raw", "secret", "hint"), SECRET_CASES)
def test_redaction_is_idempotent(redact: Callable[[str], str], raw: str, secret: str, hint: str) -> None:
    """Redacting already redacted output changes nothing, so the kept hint survives layers."""
    once = redact(raw)

    assert redact(once) == once


@pytest.mark.parametrize(
    "name",
    [
        "token", "access_token", "refresh_token", "id_token", "api_key", "apikey", "key",
        "secret", "client_secret", "password", "passwd", "pwd", "signature", "sig", "auth",
        "session", "code", "X-Amz-Signature", "X-Amz-Credential", "X-Amz-Security-Token",
        "ACCESS_TOKEN", "api%5Fkey",
    ],
)  # fmt: skip
def test_secret_query_parameter_is_masked(name: str) -> None:
    """Every secret-looking query parameter has its value masked and its neighbours kept."""
    url = f"https://api.example.com/v1/items?page=2&{name}=0123456789abcdefWXYZ&sort=asc"

    assert redact_url(url) == f"https://api.example.com/v1/items?page=2&{name}=***WXYZ&sort=asc"


LOOKALIKES = [
    "usage: max_tokens=512 input_tokens=20 tokens_used=532 token_count=7",
    "https://example.com/search?q=token",
    "author=alice keyboard=us monkey=3 secretary=bob passage=12",
    "request_id=0f8fad5b-d9cb-469f-a165-70867728950e",
    "sha256=e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "fixed in commit 9fceb02d0ae598e95dc970b74767f19372d61af8",
    "The Bearer scheme is defined in RFC 6750; send a Bearer token.",
    "Basic usage: call the function with Basic authentication",
    "https://example.com/docs/auth/tokens?page=2&sort=asc#section-3",
    "session_count=3 token_type=bearer cache_key=user:42 key=value",
    "https://user@example.com/path",
    "publishable key pk_live_abcdefghijklmnopqrstuvwx is public",
    "connection refused (host=db, port=5432) after 3 attempts",
    "ghp_short and AKIA alone are not tokens",
    "token_url=https://auth.example.com/oauth/token secret_name=prod/db",
]


@pytest.mark.parametrize("text", LOOKALIKES)
def test_lookalike_is_left_byte_identical(text: str) -> None:
    """Text that only resembles a secret comes out exactly as it went in."""
    assert redact_text(text) == text


@pytest.mark.parametrize(
    "name",
    [
        "password", "PASSWORD", "db-password", "passwd", "secret", "client_secret", "token",
        "access_token", "api_key", "apiKey", "X-Api-Key", "authorization", "Cookie",
        "Set-Cookie", "session", "session_id", "sessionid", "private_key", "credentials",
        "aws_secret_access_key", "AWSAccessKeyId", "Ocp-Apim-Subscription-Key",
    ],
)  # fmt: skip
def test_secret_names_are_recognised(name: str) -> None:
    """Names that hold secrets are flagged whatever their case and separators."""
    assert is_secret_key(name)


@pytest.mark.parametrize(
    "name",
    [
        "max_tokens", "input_tokens", "tokens_used", "token_count", "token_type", "secretary",
        "passage", "author", "keyboard", "monkey", "session_count", "session_timeout", "key",
        "cache_key", "secret_name", "token_url", "request_id", "",
    ],
)  # fmt: skip
def test_lookalike_names_are_not_secret(name: str) -> None:
    """Names that describe or merely resemble a secret are not flagged."""
    assert not is_secret_key(name)


@pytest.mark.parametrize(
    "url",
    [
        "", "://", "?", "#", "@", "http://[::1", "http://@", "http://:@host", "%zz?token=%",
        "https://h/?=&&=x&token", "\x00\uffff?password", "http://a:b:c@@d?&=&#&=",
        "//user:pass@host", "mailto:a@b?subject=hi",
    ],
)  # fmt: skip
def test_malformed_url_does_not_raise(url: str) -> None:
    """Malformed or odd URLs are handled without an exception."""
    assert isinstance(redact_url(url), str)


def test_url_keeps_everything_but_the_secrets() -> None:
    """Redacting a URL changes only the password and the secret values, byte for byte."""
    url = "https://u%40x:p%40ss@h.example:8443/a%20b;p?x=1&token=t0k3n&y=%2F#top"

    assert redact_url(url) == "https://u%40x:***@h.example:8443/a%20b;p?x=1&token=***&y=%2F#top"


def test_headers_accept_bytes_pairs_and_join_repeats() -> None:
    """Bytes header pairs are decoded as latin-1, masked, and repeated names joined."""
    headers = [
        (b"Authorization", b"Bearer 0123456789abcdefWXYZ"),
        (b"Accept", b"application/json"),
        (b"Set-Cookie", b"a=1; Path=/"),
        (b"Set-Cookie", b"b=2; Secure"),
        (b"X-Note", "caf\xe9".encode("latin-1")),
    ]

    assert redact_headers(headers) == {
        "Authorization": "Bearer ***WXYZ",
        "Accept": "application/json",
        "Set-Cookie": "a=***; Path=/, b=***; Secure",
        "X-Note": "caf\xe9",
    }


def test_headers_accept_a_mapping_and_redact_other_values_by_shape() -> None:
    """A header mapping works too, and a secret inside a non-secret header is still masked."""
    headers = {"Location": "https://app.example.com/cb?code=0123456789abcdefWXYZ", "X-Id": "7"}

    assert redact_headers(headers) == {
        "Location": "https://app.example.com/cb?code=***WXYZ",
        "X-Id": "7",
    }


def test_value_walks_nested_containers_without_mutating_them() -> None:
    """Nested dicts, lists and tuples are redacted in copies; the originals stay as they were."""
    value = {"items": [{"api_key": "k1", "n": 1}], "pair": ("token=abc", 2), "ok": "fine"}
    original = copy.deepcopy(value)

    redacted = redact_value("payload", value)

    assert redacted == {
        "items": [{"api_key": MASK, "n": 1}],
        "pair": ("token=***", 2),
        "ok": "fine",
    }
    assert value == original


def test_value_returns_unchanged_containers_as_is() -> None:
    """A container with nothing to redact is returned itself, not copied."""
    value = {"a": [1, "two", {"b": None}]}

    assert redact_value("payload", value) is value


def test_secret_key_masks_any_type_but_keeps_none_and_booleans() -> None:
    """A secret name masks numbers and containers, while None and booleans reveal nothing."""
    assert redact_value("pin_password", 1234) == MASK
    assert redact_value("credentials", {"user": "bob"}) == MASK
    assert redact_value("password", None) is None
    assert redact_value("token", True) is True


def test_value_too_deep_is_masked() -> None:
    """Containers nested beyond the depth bound are masked whole instead of walked."""
    value: object = "leaf"
    for _ in range(20):
        value = [value]

    assert MASK in repr(redact_value("deep", value))


def test_cyclic_value_does_not_recurse_forever() -> None:
    """A self-referencing list is cut at the depth bound."""
    cyclic: list[object] = ["token=abc"]
    cyclic.append(cyclic)

    redacted = redact_value("loop", cyclic)

    assert isinstance(redacted, list)
    assert redacted[0] == "token=***"


class _Credentials(NamedTuple):
    user: str
    note: str


def test_named_tuple_is_rebuilt_as_a_plain_tuple() -> None:
    """A named tuple holding a secret comes back as a plain tuple rather than failing."""
    value = _Credentials(user="bob", note="password=hunter2")

    assert redact_value("creds_of", value) == MASK
    assert redact_value("login", value) == ("bob", "password=***")


def _best_time(text: str) -> float:
    """The fastest of three redactions of `text` (the minimum is the least noisy estimate)."""
    timings = []
    for _ in range(3):
        started = time.perf_counter()
        redact_text(text)
        timings.append(time.perf_counter() - started)
    return min(timings)


@pytest.mark.parametrize(
    ("unit", "tail"),
    [
        ("password=", ""),
        ("a=", ""),
        ("x.", "://"),
        ("a.", ""),
        ("-----BEGIN PRIVATE KEY-----", ""),
        ("Bearer ", ""),
        ("'token': '", ""),
        ("a@", "?token="),
    ],
    ids=lambda part: part[:12],
)
def test_hostile_input_is_redacted_in_linear_time(unit: str, tail: str) -> None:
    """Eight times the input takes well under 64 times as long: no quadratic regex (a ratio, not a clock)."""
    small = unit * 600 + tail
    large = unit * 4800 + tail
    ratio = _best_time(large) / max(_best_time(small), 1e-7)
    # Linear work scales by ~8, quadratic by ~64; 32 leaves room for noise on a busy machine.
    assert ratio < 32, f"redacting 8x the input took {ratio:.1f}x as long"


def test_event_dict_is_redacted_without_mutating_nested_input() -> None:
    """The processor masks secret fields and shapes while the caller's objects stay intact."""
    nested = {"headers": {"Authorization": "Bearer 0123456789abcdefWXYZ"}, "n": 3}
    event_dict: dict[str, object] = {
        "event": "calling https://u:pw@api.example.com",
        "password": "hunter2",
        "request": nested,
        "count": 3,
    }
    before = copy.deepcopy(nested)

    result = redact_event_dict(None, "info", event_dict)

    assert result == {
        "event": "calling https://u:***@api.example.com",
        "password": MASK,
        "request": {"headers": {"Authorization": "Bearer ***WXYZ"}, "n": 3},
        "count": 3,
    }
    assert nested == before


def test_event_dict_allowlisted_keys_are_untouched() -> None:
    """Keys written by the logging setup itself are never inspected."""
    fields = {
        "level": "info",
        "logger": "token=abc",
        "timestamp": "2026-01-01T00:00:00Z",
        "trace_id": "0af7651916cd43dd8448eb211c80319c",
        "span_id": "b7ad6b7169203331",
        "request_id": "password=not-really",
    }

    assert redact_event_dict(None, "info", {"event": "hello", **fields}) == {
        "event": "hello",
        **fields,
    }


@given(st.text())
def test_redact_url_never_raises(url: str) -> None:
    """Any string at all goes through redact_url and comes back a string."""
    assert isinstance(redact_url(url), str)


@given(st.text().filter(lambda s: "@" not in s and "=" not in s))
def test_url_without_userinfo_or_parameters_is_unchanged(url: str) -> None:
    """Without an ``@`` or an ``=`` there is nothing to mask, so the URL comes back identical."""
    assert redact_url(url) == url


_URL_CHARS = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-._~%", min_size=1, max_size=12)
_PLAIN_PARAM_NAMES = st.sampled_from(
    ["q", "page", "sort", "lang", "max_tokens", "token_type", "author", "session_count", "id"]
)


@given(
    scheme=st.sampled_from(["http", "https", "ftp", "redis"]),
    host=_URL_CHARS,
    path=st.lists(_URL_CHARS, max_size=4),
    params=st.lists(st.tuples(_PLAIN_PARAM_NAMES, _URL_CHARS | st.just("")), max_size=5),
    fragment=st.none() | _URL_CHARS,
)
def test_url_with_only_plain_parameters_is_unchanged(
    scheme: str, host: str, path: list[str], params: list[tuple[str, str]], fragment: str | None
) -> None:
    """A URL whose parameters are all ordinary comes back byte-identical."""
    url = f"{scheme}://{host}/{'/'.join(path)}"
    if params:
        url += "?" + "&".join(f"{name}={value}" for name, value in params)
    if fragment is not None:
        url += "#" + fragment

    assert redact_url(url) == url


@given(value=st.text(alphabet=st.characters(exclude_characters="&#"), min_size=1))
def test_secret_parameter_value_never_survives(value: str) -> None:
    """Whatever the value of a secret parameter, only the mask and at most 4 characters remain."""
    redacted = redact_url(f"https://h.example/p?client_secret={value}&x=1")

    masked = redacted.removeprefix("https://h.example/p?client_secret=").removesuffix("&x=1")
    assert masked in {MASK, MASK + value[-4:]}
