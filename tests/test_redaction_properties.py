"""Redaction under generated input: idempotent, and planted secrets never survive in any shape.

Also the regression tests of defect 11 and of the redaction traps of issue 18: a secret-named
word before a quoted key, a second pass that changed masked text, ``password hunter2``, a
short ``Bearer abc.def``, and masks that kept the tail of short secrets.
"""

from __future__ import annotations

import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resilient.redaction import MASK, redact_headers, redact_text

EXAMPLES = 300

# Prose around a planted secret: letters only, so a digit-bearing tail can only come from the secret.
PROSE = st.lists(
    st.sampled_from(["the", "request", "failed", "with", "while", "calling", "upstream", "error", "value", "got"]),
    max_size=4,
).map(" ".join)
NAMES = st.sampled_from(
    ["password", "passwd", "api_key", "apiKey", "X-Api-Key", "token", "access_token", "secret", "client_secret"]
)
# Secrets that look machine-made: letters, digits, "-" and "_", always with a digit and mixed case.
SECRETS = st.builds(
    lambda head, body: head + body,
    st.sampled_from(["Zq9", "k7X", "P4s"]),
    st.text(string.ascii_letters + string.digits + "-_", min_size=2, max_size=37),
).filter(lambda secret: secret[-1] not in "-_" and any(ch.isdigit() for ch in secret[-4:]))
SHAPES = [
    "{name}={secret}",
    "{name}: {secret}",
    "{name} = {secret}",
    "'{name}': '{secret}'",
    '"{name}": "{secret}"',
    "{{'{name}': '{secret}'}}",
    "bad credentials: '{name}': '{secret}'",
    'credentials: "{name}": "{secret}"',
    "creds: {name}: {secret}",
    "{name} {secret}",
    "{name} is {secret}",
    "{name} '{secret}'",
    "Authorization: Bearer {secret}",
    "sent Bearer {secret}",
    "Token {secret}",
    "https://user:{secret}@db.example.com/x",
    "https://api.example.com/v1?{name}={secret}&page=2",
    "GET zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzhttps://u:{secret}@h/",
]


def _assert_hidden(secret: str, redacted: str) -> None:
    """The secret is gone; of a secret shorter than 16 characters not even the tail is left."""
    assert secret not in redacted
    assert secret[:-4] not in redacted or len(secret) < 8
    if len(secret) < 16:
        assert secret[-4:] not in redacted
    assert MASK in redacted


@settings(max_examples=EXAMPLES * 3, deadline=None)
@given(prefix=PROSE, suffix=PROSE, name=NAMES, secret=SECRETS, shape=st.sampled_from(SHAPES))
def test_planted_secrets_never_survive(prefix: str, suffix: str, name: str, secret: str, shape: str) -> None:
    """A secret planted in any of the shapes, inside prose, is masked, and the output is stable."""
    text = f"{prefix} {shape.format(name=name, secret=secret)} {suffix}"
    redacted = redact_text(text)
    _assert_hidden(secret, redacted)
    assert redact_text(redacted) == redacted


@settings(max_examples=EXAMPLES, deadline=None)
@given(st.text(max_size=200))
def test_redact_text_is_idempotent_on_any_text(text: str) -> None:
    """Redacting the output of `redact_text` again changes nothing, whatever the input."""
    once = redact_text(text)
    assert redact_text(once) == once


LOG_PIECES = st.sampled_from(
    [
        "password", "token", "api_key", "Bearer ", "Basic ", "'", '"', ": ", "=", " ", "***", "*", "Zq9FdQBdvakwzzzzt1",
        "hunter2", "https://", "u:p@h", "/?token=x", "eyJabc.def.ghi", "ghp_" + "a" * 20, ",", "&", "AKIA" + "A" * 16,
        "\n", "-----BEGIN RSA PRIVATE KEY-----", "-----END RSA PRIVATE KEY-----", "is ", "//", "@", "credentials", "{",
    ]
)  # fmt: skip


@settings(max_examples=EXAMPLES * 2, deadline=None)
@given(st.lists(LOG_PIECES, max_size=16).map("".join))
def test_redact_text_is_idempotent_on_secret_like_text(text: str) -> None:
    """Text built from secret names, schemes, quotes, masks and token shapes: a second pass is a no-op."""
    once = redact_text(text)
    assert redact_text(once) == once


# --- defect 11 -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "bad credentials: 'api_key': 'Zq9FdQBdvakwzzzzt1'",
        'bad credentials: "api_key": "Zq9FdQBdvakwzzzzt1"',
        "creds: api_key: Zq9FdQBdvakwzzzzt1",
        "secret: 'password': 'Zq9FdQBdvakwzzzzt1'",
    ],
)
def test_secret_after_a_secret_named_word_and_a_quoted_key_is_masked(text: str) -> None:
    """A secret-named word whose "value" is the next secret's key no longer shields that key's value."""
    assert "Zq9FdQBdvakw" not in redact_text(text)


@pytest.mark.parametrize(
    "text",
    [
        "ghp_aaaaaaaaaaaaaaaaaaaaZq9FdQBdvakwzzzzt1https://u:p4ss@h/?token=x",
        "eyJabc.def.ghieyJabc.def.ghihttps://u:p4ss@h/?token=x",
    ],
)
def test_second_pass_changes_nothing(text: str) -> None:
    """Inputs whose second redaction used to mask more (a URL glued to a long token): stable now, and masked."""
    once = redact_text(text)
    assert redact_text(once) == once
    assert "p4ss" not in once


def test_url_glued_to_a_long_word_is_redacted() -> None:
    """A URL glued to a word longer than a scheme still has its password masked."""
    assert redact_text("x" * 40 + "https://user:p4ssw0rd@db/") == "x" * 40 + "https://user:***@db/"


# --- traps ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("password hunter2", "password ***"),
        ("login failed: password is hunter2", "login failed: password is ***"),
        ("api_key Zq9FdQBdva", "api_key ***"),
        ("token 'opaque'", "token '***'"),
        ("bad password hunter2, retrying", "bad password ***, retrying"),
    ],
)
def test_secret_after_a_secret_name_without_separator_is_masked(text: str, expected: str) -> None:
    """``password hunter2`` (no ``=`` or ``:``) masks the machine-looking or quoted word after the name."""
    assert redact_text(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Bearer abc.def", "Bearer ***"),
        ("Authorization: Bearer k9x", "Authorization: Bearer ***"),
        ("sent token a1b2c3", "sent token ***"),
    ],
)
def test_short_bearer_credentials_are_masked(text: str, expected: str) -> None:
    """A short credential after an auth scheme is masked when it looks machine-made (a digit or an inner dot)."""
    assert redact_text(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "the password field is required",
        "your password must be at least 8 characters",
        "password reset email sent to the user",
        "token expired, please log in again",
        "send a Bearer token in the Authorization header",
        "invalid api key format",
        "session timeout after 30 minutes",
        "the secret sauce of the recipe",
        "token 512 used",
        "Basic usage: call the function",
    ],
)
def test_prose_about_secrets_is_left_alone(text: str) -> None:
    """Ordinary sentences about passwords and tokens come out byte-identical."""
    assert redact_text(text) == text


@pytest.mark.parametrize(
    "secret",
    ["hunter2", "Zq9FdQBdvakw", "k7X-abcdefghij5"],  # 7, 12 and 15 characters
)
@pytest.mark.parametrize(
    "shape", ["password={}", "Bearer {}", "https://u:{}@h/", "'api_key': '{}'", "password {}", "Token {}"]
)
def test_nothing_of_a_short_secret_is_kept(shape: str, secret: str) -> None:
    """A secret shorter than 16 characters becomes a bare ``***``: no tail, no length."""
    redacted = redact_text(shape.format(secret))
    assert redacted == shape.format(MASK)


def test_basic_credentials_keep_no_tail() -> None:
    """``Basic`` base64 ends with the password: nothing of it is kept, in text and in headers."""
    encoded = "dXNlcjpwYXNzd29yZA=="  # user:password
    assert redact_text(f"Basic {encoded}") == "Basic ***"
    assert redact_text(f"Authorization: Basic {encoded}") == "Authorization: Basic ***"
    assert redact_text(f"{{'Authorization': 'Basic {encoded}'}}") == "{'Authorization': 'Basic ***'}"
    assert redact_headers({"Authorization": f"Basic {encoded}"})["Authorization"] == "Basic ***"


def test_long_secrets_keep_their_last_four() -> None:
    """A secret of 16 characters or more keeps its last four, to match two log lines to one credential."""
    assert redact_text("password=Zq9FdQBdvakwzzzzt1") == "password=***zzt1"
