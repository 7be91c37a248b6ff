"""Fuzz the redaction functions: any text, header or structure in, no exception, and stable output."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from resilient.redaction import (
    is_secret_key,
    redact_event_dict,
    redact_headers,
    redact_text,
    redact_url,
    redact_value,
)
from tests.fuzz._strategies import budget, header_values

# Text weighted towards what the rules look for, then anything.
PIECES = st.sampled_from(
    [
        "password", "token", "api_key", "secret", "Bearer ", "Basic ", "Token ", "'", '"', ": ", "=", " ", "***",
        "https://", "u:p@h", "?token=", "&", "#", "//", "eyJ", ".", "ghp_", "AKIA", "sk_live_", "xoxb-",
        "-----BEGIN RSA PRIVATE KEY-----", "-----END RSA PRIVATE KEY-----", "\n", "is ", "Zq9FdQBdvakwzzzzt1", "1",
    ]
)  # fmt: skip
TEXTS = st.text(max_size=300) | st.lists(PIECES | st.text(max_size=5), max_size=25).map("".join)
LEAVES = st.none() | st.booleans() | st.integers() | st.floats() | TEXTS
STRUCTURES = st.recursive(
    LEAVES,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(TEXTS, inner, max_size=4)
        | st.tuples(inner, inner)
        | st.frozensets(st.text(max_size=8), max_size=3)
    ),
    max_leaves=20,
)


@budget(200)
@given(TEXTS)
def test_redact_text(text: str) -> None:
    """`redact_text`: never raises, returns text, and a second pass changes nothing."""
    once = redact_text(text)
    assert isinstance(once, str)
    assert redact_text(once) == once


@budget(100)
@given(TEXTS)
def test_redact_url(url: str) -> None:
    """`redact_url`: never raises on malformed URLs, and is stable."""
    once = redact_url(url)
    assert redact_url(once) == once


@budget(100)
@given(
    st.lists(st.tuples(header_values(30) | st.sampled_from([b"authorization", b"cookie"]), header_values()), max_size=6)
)
def test_redact_headers(headers: list[tuple[bytes, bytes]]) -> None:
    """`redact_headers`: any bytes as names and values give a dict of text, one entry per distinct name."""
    redacted = redact_headers(headers)
    assert set(redacted) == {name.decode("latin-1") for name, _ in headers}
    assert all(isinstance(value, str) for value in redacted.values())


@budget(100)
@given(TEXTS, STRUCTURES)
def test_redact_value_and_event_dict(key: str, value: Any) -> None:
    """`redact_value`, `redact_event_dict`, `is_secret_key`: any name and nested structure, no exception."""
    assert isinstance(is_secret_key(key), bool)
    redact_value(key, value)
    event: dict[str, Any] = {"event": key, key: value, "nested": {"k": value}}
    assert set(redact_event_dict(None, "info", event)) >= {"event", "nested"}
