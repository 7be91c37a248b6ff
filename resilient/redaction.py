"""Mask secrets before they reach a log line, a span attribute or an error message.

Two complementary layers:

- **by name**: `is_secret_key` decides from a field, header or query-parameter name that its
  value is a secret (``password``, ``api_key``, ``Authorization``...), whatever the value.
- **by shape**: `redact_text` finds secrets inside free text whatever the field is called
  (``Bearer …``, JWTs, cloud and SaaS tokens, PEM private keys, ``password=…`` pairs, URLs
  with credentials).

Masking format: a secret becomes ``***``; when it is at least 16 characters long the last 4
are kept (``***wxyz``) so two log lines can be matched to the same credential. Nothing of a
shorter secret is kept, nor of ``Basic`` credentials (their base64 ends with the password). What is public
by construction is kept as a debugging hint: the auth scheme (``Bearer ***``), the user name
of a URL, the fixed type prefix of a vendor token (``ghp_***wxyz``), cookie names.

Every pattern is compiled at import; `redact_text` first checks for a few trigger substrings
so that text without any hint of a secret is returned as is in a few microseconds, and every
pattern is written to stay linear on hostile input (long or repeated lookalikes).
`redact_text` is idempotent: its output redacted again is unchanged.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from itertools import pairwise
from typing import TYPE_CHECKING, Final
from urllib.parse import unquote_plus

if TYPE_CHECKING:
    from structlog.typing import EventDict, WrappedLogger

__all__ = [
    "ALLOWLISTED_EVENT_KEYS",
    "MASK",
    "is_secret_key",
    "redact_event_dict",
    "redact_headers",
    "redact_text",
    "redact_url",
    "redact_value",
]

#: What a secret is replaced with.
MASK: Final = "***"
#: Secrets at least this long keep their last `_KEPT_TAIL` characters after the mask.
_MIN_LENGTH_TO_KEEP_TAIL: Final = 16
_KEPT_TAIL: Final = 4
#: Nested containers deeper than this are masked whole: a cycle or a pathological structure
#: must not make a log call recurse without bound, and unseen content may hold a secret.
_MAX_DEPTH: Final = 10

#: Event-dict keys `redact_event_dict` never inspects: written by the logging setup itself.
#: ``event`` is the exception: it is free text and still goes through `redact_text`.
ALLOWLISTED_EVENT_KEYS: Final = frozenset(
    {"event", "level", "logger", "timestamp", "trace_id", "span_id", "request_id"}
)


# What `_mask` produces. Redaction layers stack (an error message redacted, then logged
# through the processor), so output already in this form is left as is: masking it again
# would drop the kept tail.
_ALREADY_MASKED_RE: Final = re.compile(r"\*\*\*.{0,4}", re.DOTALL)


def _mask(secret: str) -> str:
    """Mask a secret, keeping its last 4 characters only when it is long enough to stay safe."""
    if _ALREADY_MASKED_RE.fullmatch(secret):
        return secret
    if len(secret) >= _MIN_LENGTH_TO_KEEP_TAIL:
        return MASK + secret[-_KEPT_TAIL:]
    return MASK


# --- secret names ------------------------------------------------------------------------

#: A name containing one of these words (after splitting) names a secret.
_SECRET_WORDS: Final = frozenset(
    {
        "password", "passwords", "passwd", "pwd", "passphrase",
        "secret", "secrets", "token", "jwt", "bearer",
        "auth", "authorization", "credential", "credentials", "creds",
        "cookie", "cookies", "session", "csrf", "xsrf",
        # the same names written as one word
        "apikey", "accesskey", "secretkey", "privatekey", "accesstoken", "refreshtoken",
        "idtoken", "authtoken", "csrftoken", "xsrftoken", "clientsecret", "sessionid",
        "jsessionid", "phpsessid", "setcookie",
    }
)  # fmt: skip
#: ``key`` alone is a dict, cache or sort key; after one of these words it is a secret.
_KEY_KINDS: Final = frozenset(
    {
        "api", "access", "private", "secret", "client", "signing", "encryption", "master",
        "account", "subscription", "app", "consumer", "license",
    }
)  # fmt: skip
#: A name with one of these words describes a secret without holding it: ``token_count``,
#: ``max_tokens``, ``session_timeout``, ``password_min_length``, ``token_type``, ``secret_name``.
_DESCRIPTOR_WORDS: Final = frozenset(
    {
        "count", "counts", "num", "number", "max", "min", "limit", "limits", "used", "usage",
        "total", "remaining", "type", "types", "kind", "scheme", "method", "length", "len",
        "size", "ttl", "expiry", "expires", "expiration", "expired", "age", "timeout",
        "duration", "lifetime", "enabled", "required", "name", "path", "file", "url", "uri",
        "endpoint",
    }
)  # fmt: skip
#: Query parameters that carry a secret in URLs although the name alone says little.
_URL_ONLY_SECRET_NAMES: Final = frozenset({"key", "code", "sig", "signature"})

# Words are runs of lower-case letters (with an optional leading capital), runs of capitals
# (an acronym, split before a following capitalised word: "AWSAccessKeyId") or digits.
_WORD_RE: Final = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|[0-9]+")


def _name_words(name: str) -> list[str]:
    """Split a snake, kebab, dotted or camel-case name into lower-case words."""
    return [word.lower() for word in _WORD_RE.findall(name)]


def is_secret_key(name: str) -> bool:
    """Whether a field, header or parameter called `name` holds a secret.

    The name is split into words on ``-``, ``_``, ``.``, spaces and camel case, then:

    1. a word from the descriptor list (``count``, ``max``, ``type``, ``timeout``, ``name``,
       ``url``...) means the name describes a secret rather than holds it: not secret
       (``token_count``, ``max_tokens``, ``session_count``, ``token_type``, ``secret_name``);
    2. a secret word anywhere means secret: ``password``, ``passwd``, ``pwd``, ``secret``,
       ``token``, ``auth``, ``authorization``, ``credential(s)``, ``cookie``, ``session``,
       ``csrf`` and their one-word compounds (``apikey``, ``sessionid``, ``setcookie``);
    3. ``key`` right after ``api``, ``access``, ``private``, ``secret``, ``client``,
       ``signing``, ``account``, ``subscription``... is secret (``api_key``, ``apiKey``,
       ``X-Api-Key``, ``aws_secret_access_key``); ``key`` alone or ``cache_key`` is not.

    Whole words only, so ``secretary``, ``passage``, ``author``, ``keyboard`` and ``monkey``
    are not secrets; the plural ``tokens`` is not either, because it nearly always counts
    model tokens (``input_tokens``).
    """
    return _is_secret_name(name)


# Log events repeat the same few keys on every call; a bounded cache makes the check a lookup
# without letting arbitrary (attacker-chosen) keys grow memory.
@functools.lru_cache(maxsize=4096)
def _is_secret_name(name: str) -> bool:
    """The uncached rule of `is_secret_key`."""
    words = _name_words(name)
    if any(word in _DESCRIPTOR_WORDS for word in words):
        return False
    if any(word in _SECRET_WORDS for word in words):
        return True
    return any(second == "key" and first in _KEY_KINDS for first, second in pairwise(words))


def _is_secret_query_name(raw_name: str) -> bool:
    """Whether a URL query parameter name (still percent-encoded) names a secret."""
    name = unquote_plus(raw_name)
    if is_secret_key(name):
        return True
    words = _name_words(name)
    # "key", "code" (OAuth authorisation code), "sig", and any "...-Signature" (presigned URLs).
    return "".join(words) in _URL_ONLY_SECRET_NAMES or (bool(words) and words[-1] == "signature")


# --- URLs ---------------------------------------------------------------------------------

# Optional scheme, then "//" and the authority; "@" splits userinfo from the host.
_AUTHORITY_RE: Final = re.compile(r"(?:[A-Za-z][A-Za-z0-9+.-]*:)?//(?P<authority>[^/?#]*)")


def redact_url(url: str) -> str:
    """Mask the password in a URL's userinfo and the values of secret query parameters.

    ``https://user:pass@host/p?token=abc&page=2`` becomes ``https://user:***@host/p?token=***&
    page=2``. Query parameters are secret when `is_secret_key` says so or when they are
    ``key``, ``code``, ``sig`` or end in ``signature`` (``X-Amz-Signature``); parameters in
    the fragment are treated alike (OAuth implicit flow). A user name alone is kept unless it
    is a recognisable token (``https://ghp_…@github.com``). Everything else is kept byte for
    byte; the URL is never parsed strictly, so malformed input never raises.
    """
    match = _AUTHORITY_RE.match(url)
    if match is None:
        return _redact_query_and_fragment(url)
    start, end = match.span("authority")
    authority = _redact_userinfo(match["authority"])
    return url[:start] + authority + _redact_query_and_fragment(url[end:])


def _redact_userinfo(authority: str) -> str:
    """Mask the password of ``user:password@host``, or a token used as the user name."""
    userinfo, at, host = authority.rpartition("@")
    if not at:
        return authority
    user, colon, password = userinfo.partition(":")
    if colon and password:
        return f"{user}:{_mask(password)}@{host}"
    return _redact_token_shapes(userinfo) + at + host


def _redact_query_and_fragment(rest: str) -> str:
    """Mask secret parameter values after the ``?`` and after the ``#`` of a URL tail."""
    before_fragment, hash_sign, fragment = rest.partition("#")
    path, question_mark, query = before_fragment.partition("?")
    if question_mark:
        query = _redact_query(query)
    if hash_sign and "=" in fragment:
        fragment = _redact_query(fragment)
    return path + question_mark + query + hash_sign + fragment


def _redact_query(query: str) -> str:
    """Mask the values of secret ``name=value`` pairs in an ``&``-separated query."""
    if "=" not in query:
        return query
    return "&".join(_redact_query_pair(pair) for pair in query.split("&"))


def _redact_query_pair(pair: str) -> str:
    """Mask one ``name=value`` pair when the name looks secret."""
    name, equals, value = pair.partition("=")
    if equals and value and _is_secret_query_name(name):
        return name + equals + _mask(value)
    return pair


# --- free text ----------------------------------------------------------------------------

# Every rule below needs one of these substrings (lower-cased). Checking them with `in` on
# the lower-cased text costs a few microseconds, far less than one regex alternation of them.
_TRIGGERS: Final = (
    "://", "key", "token", "pass", "pwd", "secret", "auth", "bearer", "basic", "digest",
    "negotiate", "cookie", "sess", "credential", "creds", "csrf", "xsrf", "jwt", "eyj",
    "akia", "asia", "ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_", "xox", "k_live_",
    "k_test_", "aiza",
)  # fmt: skip


# One alternation scanned in C, instead of one `in` test per trigger in Python.
_TRIGGER_RE: Final = re.compile("|".join(re.escape(trigger) for trigger in _TRIGGERS))


def _may_hold_secret(text: str) -> bool:
    """Whether any redaction rule could match: the fast path for ordinary text."""
    return _TRIGGER_RE.search(text.lower()) is not None


# PEM private keys (RSA, EC, OPENSSH, ENCRYPTED...), whole block or truncated at the end.
# The body runs to the next "-----" with a possessive loop, so the search stays linear even
# when an END line never comes.
_PEM_RE: Final = re.compile(
    r"(?P<begin>-----BEGIN (?P<kind>[A-Z0-9 ]*)PRIVATE KEY-----)(?!\*\*\*)"
    r"(?:[^-]|-(?!----))*+(?P<end>-----END (?P=kind)PRIVATE KEY-----)?"
)
# URLs inside text, up to whitespace or a quote. The scheme is bounded so that a long dotted
# word ("a.b.c...") cannot make the search quadratic, and optional: a URL glued to a word
# longer than a scheme ("...xyzhttps://user:pw@host") is still found from its "//".
_URL_IN_TEXT_RE: Final = re.compile(
    r"(?:(?<![A-Za-z0-9+.-])[A-Za-z][A-Za-z0-9+.-]{0,31}:)?"  # scheme
    r"//[^\s\"'<>`]+"
)

# Credentials after an auth scheme. Prose such as "the Bearer scheme" must survive, so the
# credential must look machine-made and end the word: 8+ characters with a digit, an inner
# capital or one of "+/=" (base64), or 3+ with a letter and a digit or an inner "." "_" "~"
# (``abc.def``, ``k9x``). "dXNlcjpwYXNz", "abc.def" and "abc123" qualify; "authentication",
# "token.", "512" do not, nor "cache_key=1" (the next key=value pair of a log line).
_TOKEN68: Final = r"[A-Za-z0-9._~+/-]"
_CREDENTIAL: Final = (
    rf"(?:(?={_TOKEN68}*(?:[0-9]|[a-z][A-Z]|[+/=])){_TOKEN68}{{8,}}=*"  # long and machine-made
    rf"|(?={_TOKEN68}*[A-Za-z])(?={_TOKEN68}*(?:[0-9]|[A-Za-z0-9][._~][A-Za-z0-9])){_TOKEN68}{{3,}}=*)"  # short
    r"(?![^\s,;\"')\]}])"  # ends the word
)
_SCHEMES: Final = r"Bearer|Basic|Token|Digest|Negotiate|ApiKey"
_AUTH_SCHEME_RE: Final = re.compile(rf"\b(?P<scheme>(?i:{_SCHEMES}))(?P<space>[ \t]+)(?P<secret>{_CREDENTIAL})")

# "name=value" and "name: value" pairs, also quoted as in dict reprs and JSON. Only a name
# that `is_secret_key` gets its value matched (scheme kept), so the value of any other pair is
# searched again, as in "RuntimeError: token=abc", and no text is scanned twice.
_KEY_SEPARATOR_RE: Final = re.compile(
    r"(?<![\w.-])(?P<key>[A-Za-z_][\w.-]*)"  # a name starting a word: db.password, X-Api-Key
    r"[\"']?[ \t]*[=:][ \t]*"  # closing quote of a JSON or repr key, then = or :
)
_PAIR_VALUE_RE: Final = re.compile(
    rf"(?:(?P<scheme>(?i:{_SCHEMES}))[ \t]+)?"
    r"(?:\"(?P<double>[^\"\n]*)\"|'(?P<single>[^'\n]*)'|(?P<bare>[^\s\"'&,;)}\]]+))"
)

# After a secret-valued name, what says the value was not the value but the next secret's
# name: an ``=`` or ``:`` after it (``credentials: 'api_key': '...'``, ``creds: api_key: ...``).
_NAME_THEN_SEPARATOR_RE: Final = re.compile(r"[\"']?(?P<name>[A-Za-z_][\w.-]*)[\"']?[ \t]*[=:]")
_MAX_NAME: Final = 64  # longer "names" are not names (and would fill the name cache)

# "password hunter2", "token is abc123": a name that holds a secret (password, secret, token,
# an api key...), a space, an optional "is"/"was", then a quoted value or one that looks
# machine-made (5+ characters with a digit, a symbol or an inner capital). Prose such as "the
# password field is required" or "token expired" has no such value and is kept.
_BARE_NAME: Final = r"[A-Za-z_][\w.-]*"
_BARE_PAIR_RE: Final = re.compile(
    r"(?<![\w./-])(?=[\w.-]*?(?i:pass|pwd|secret|token|key))"  # cheap in C: names without a hint are skipped
    rf"(?P<key>{_BARE_NAME})[ \t]+(?:(?:is|was)[ \t]+)?"
    r"(?:\"(?P<double>[^\"\n]+)\"|'(?P<single>[^'\n]+)'"
    r"|(?P<bare>(?=[^\s\"'<>,;:=()\[\]{}*]*(?:[0-9]|[!@#$%^&+/~_?]|[a-z][A-Z]))[^\s\"'<>,;:=()\[\]{}*]{5,}+))"
    r"(?![^\s,;\"')\]}])"  # the value ends the word
)
#: Names whose value may follow without ``=`` or ``:``; ``auth``, ``session`` or ``cookie``
#: followed by a word are nearly always prose ("auth v2 failed").
_BARE_SECRET_WORDS: Final = frozenset(
    {"password", "passwords", "passwd", "pwd", "passphrase", "secret", "token", "apikey", "accesskey",
     "secretkey", "privatekey", "accesstoken", "refreshtoken", "authtoken", "clientsecret"}
)  # fmt: skip

# Vendor tokens as (public prefix, secret body): the prefix names the kind of token and is
# kept, the body is masked. A token must start a word.
_TOKEN_SHAPES: Final = tuple(
    re.compile(rf"(?<![A-Za-z0-9_-])(?P<prefix>{prefix})(?P<secret>{body})")
    for prefix, body in (
        ("eyJ", r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"),  # JWT, 3 base64url parts
        ("AKIA|ASIA", r"[A-Z0-9]{16}(?![A-Za-z0-9])"),  # AWS access key ids
        ("gh[pousr]_|github_pat_", r"[A-Za-z0-9_]{20,}"),  # GitHub
        ("xox[abprs]-", r"[A-Za-z0-9-]{10,}"),  # Slack
        ("[sr]k_(?:live|test)_", r"[A-Za-z0-9]{10,}"),  # Stripe secret and restricted keys
        ("AIza", r"[A-Za-z0-9_-]{35}"),  # Google API keys
    )
)


def redact_text(value: str) -> str:
    """Mask secrets found anywhere inside free text, such as an exception message.

    Rules, applied in this order:

    1. PEM private-key blocks: the body becomes ``***`` (certificates are public and kept);
    2. URLs: through `redact_url` (userinfo password, secret query parameters);
    3. ``name=value`` / ``name: value`` pairs (bare, quoted, JSON or repr) whose name
       `is_secret_key`: the value is masked, an auth scheme in it kept (``password=***``,
       ``'Authorization': 'Bearer ***wxyz'``);
    4. auth schemes (``Bearer``, ``Basic``, ``Token``, ``Digest``, ``Negotiate``, ``ApiKey``)
       followed by a machine-looking credential: ``Bearer ***wxyz``;
    5. token shapes, keeping their public prefix: JWTs (``eyJ…``), AWS access key ids
       (``AKIA``/``ASIA`` + 16), GitHub (``ghp_``, ``gho_``, ``github_pat_``...), Slack
       (``xoxb-``...), Stripe (``sk_live_``, ``sk_test_``, ``rk_live_``), Google (``AIza…``).

    Pairs without ``=`` or ``:`` count when the name holds a password, secret, token or key and
    the value is quoted or looks machine-made (``password hunter2``, ``token is abc123``).

    Text with none of the trigger substrings is returned unchanged without running the rules.
    The rules run again over their own output until nothing changes (twice, nearly always), so
    a mask that brings a secret into one rule's view is caught, and redacting the result again
    changes nothing.
    """
    if not _may_hold_secret(value):
        return value
    for _ in range(_MAX_PASSES):
        redacted = _redact_once(value)
        if redacted == value:
            break
        value = redacted
    return value


#: Passes of `redact_text` before it stops looking for a fixed point (each pass only masks,
#: and a mask is never matched again: two passes nearly always suffice).
_MAX_PASSES: Final = 8


def _redact_once(value: str) -> str:
    """One pass of every rule of `redact_text`, in order."""
    value = _PEM_RE.sub(_mask_pem, value)
    value = _URL_IN_TEXT_RE.sub(_mask_url_match, value)
    value = _mask_key_values(value)
    value = _AUTH_SCHEME_RE.sub(_mask_auth_scheme, value)
    value = _redact_token_shapes(value)
    return _mask_bare_pairs(value)  # last: a token shape keeps its prefix


def _redact_token_shapes(value: str) -> str:
    """Mask vendor tokens and JWTs, keeping their public prefix."""
    for shape in _TOKEN_SHAPES:
        value = shape.sub(_mask_token_shape, value)
    return value


def _mask_pem(match: re.Match[str]) -> str:
    """Replace the body of a PEM private key, keeping its armour lines."""
    return match["begin"] + MASK + (match["end"] or "")


def _mask_url_match(match: re.Match[str]) -> str:
    """Redact one URL found in text."""
    return redact_url(match[0])


def _mask_key_values(text: str) -> str:
    """Mask the values of secret-named pairs; other pairs stay as they were."""
    pieces: list[str] = []
    done = 0  # text before this offset is already copied to `pieces`
    position = 0
    while (pair := _KEY_SEPARATOR_RE.search(text, position)) is not None:
        position = pair.end()
        if not is_secret_key(pair["key"]):
            continue
        if _names_next_secret(text, position):
            continue  # the "value" is the next secret's name: that pair is searched from here
        value = _PAIR_VALUE_RE.match(text, position)
        if value is None:
            continue
        group = next(name for name in ("double", "single", "bare") if value[name] is not None)
        start, end = value.span(group)
        scheme = value["scheme"]
        secret = value[group]
        masked = _mask_keeping_known_scheme(secret) if scheme is None else _mask_credential(scheme, secret)
        pieces += (text[done:start], masked)
        done = position = end
    return "".join(pieces) + text[done:] if pieces else text


def _names_bare_secret(name: str) -> bool:
    """Whether a secret may follow `name` without ``=`` or ``:`` (password, token, api key...)."""
    if not is_secret_key(name):
        return False
    words = _name_words(name)
    return any(word in _BARE_SECRET_WORDS for word in words) or "key" in words


def _mask_bare_pairs(text: str) -> str:
    """Mask the value of ``password hunter2``; other ``word value`` pairs stay as they were.

    A pair whose name holds no secret is searched again from its value, which may be the
    name of the next pair (``the api_key Zq9...``).
    """
    pieces: list[str] = []
    done = position = 0
    while (pair := _BARE_PAIR_RE.search(text, position)) is not None:
        if not _names_bare_secret(pair["key"]):
            position = pair.end("key")
            continue
        group = next(name for name in ("double", "single", "bare") if pair[name] is not None)
        start, end = pair.span(group)
        pieces += (text[done:start], _mask(pair[group]))
        done = position = end
    return "".join(pieces) + text[done:] if pieces else text


def _names_next_secret(text: str, position: int) -> bool:
    """Whether the value at `position` is the name of the next secret pair (``creds: 'api_key': ...``).

    Read only as far as a name goes, so a run of ``password=password=...`` stays linear.
    """
    name = _NAME_THEN_SEPARATOR_RE.match(text, position)
    return name is not None and len(name["name"]) <= _MAX_NAME and is_secret_key(name["name"])


def _mask_auth_scheme(match: re.Match[str]) -> str:
    """Keep the auth scheme, mask its credential."""
    return match["scheme"] + match["space"] + _mask_credential(match["scheme"], match["secret"])


def _mask_credential(scheme: str, secret: str) -> str:
    """`_mask` for what follows an auth scheme: nothing kept of ``Basic`` (its base64 ends with the password)."""
    if scheme.lower() == "basic" and not _ALREADY_MASKED_RE.fullmatch(secret):
        return MASK
    return _mask(secret)


def _mask_token_shape(match: re.Match[str]) -> str:
    """Keep a vendor token's public prefix, mask the rest."""
    return match["prefix"] + _mask(match["secret"])


# --- headers ------------------------------------------------------------------------------

#: Headers always masked, whatever `is_secret_key` says about their names.
_SECRET_HEADERS: Final = frozenset(
    {
        "authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key",
        "x-auth-token", "x-csrf-token", "x-xsrf-token", "x-amz-security-token",
    }
)  # fmt: skip
# "<scheme> <credentials>": the scheme is any token-like first word (Bearer, AWS4-HMAC-SHA256).
_AUTH_VALUE_RE: Final = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9._~+/-]*)(?P<space>[ \t]+)(?P<rest>\S.*)", re.DOTALL)
# The same for a value found under a secret name, where only a well-known scheme is kept.
_KNOWN_SCHEME_VALUE_RE: Final = re.compile(rf"(?P<scheme>(?i:{_SCHEMES}))(?P<space>[ \t]+)(?P<rest>\S.*)", re.DOTALL)
_COOKIE_PAIR_RE: Final = re.compile(r"(?P<name>[^=;\s]+)=(?P<value>[^;]*)")

_HeaderText = str | bytes
# Mapping keys are invariant, hence one member per key type (httpx and Starlette headers are
# Mapping[str, str]; ASGI scopes carry lists of (bytes, bytes) pairs).
_Headers = (
    Mapping[str, _HeaderText]
    | Mapping[bytes, _HeaderText]
    | Mapping[_HeaderText, _HeaderText]
    | Iterable[tuple[_HeaderText, _HeaderText]]
)


def redact_headers(headers: _Headers) -> dict[str, str]:
    """Return a copy of HTTP headers safe to log, names as given and bytes decoded as latin-1.

    ``Authorization``, ``Proxy-Authorization``, ``X-Api-Key``, ``X-Auth-Token``,
    ``X-CSRF-Token`` and every header whose name `is_secret_key` are masked, keeping an auth
    scheme (``Bearer ***``). ``Cookie`` keeps the cookie names (``session=***; theme=***``),
    ``Set-Cookie`` its name and attributes. Other values go through `redact_text` (a
    ``Location`` with a token in its query). Repeated names are joined with ``", "``.
    """
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    redacted: dict[str, str] = {}
    for raw_name, raw_value in pairs:
        name, value = _decode_header(raw_name), _decode_header(raw_value)
        masked = _redact_header_value(name.lower(), value)
        redacted[name] = f"{redacted[name]}, {masked}" if name in redacted else masked
    return redacted


def _decode_header(value: str | bytes) -> str:
    """Decode a header name or value the way ASGI and WSGI carry them (latin-1)."""
    return value.decode("latin-1") if isinstance(value, bytes) else value


def _redact_header_value(lower_name: str, value: str) -> str:
    """Mask one header value according to its (lower-case) name."""
    if lower_name == "cookie":
        return _COOKIE_PAIR_RE.sub(_mask_cookie_pair, value)
    if lower_name == "set-cookie":
        return _COOKIE_PAIR_RE.sub(_mask_cookie_pair, value, count=1)
    if lower_name in _SECRET_HEADERS or is_secret_key(lower_name):
        return _mask_credentials(value)
    return redact_text(value)


def _mask_credentials(value: str) -> str:
    """Mask a credential, keeping a leading auth scheme such as ``Bearer``."""
    match = _AUTH_VALUE_RE.fullmatch(value.strip())
    if match is None:
        return _mask(value)
    return match["scheme"] + match["space"] + _mask_credential(match["scheme"], match["rest"])


def _mask_cookie_pair(match: re.Match[str]) -> str:
    """Keep a cookie's name, mask its value."""
    return f"{match['name']}={_mask(match['value'])}"


# --- structured values and structlog --------------------------------------------------------


def redact_value(key: str, value: object) -> object:
    """Return `value` safe to log under the name `key`, never modifying the value itself.

    - a secret `key` (`is_secret_key`) masks the whole value, whatever its type, except
      ``None`` and booleans, which say whether a secret was given without revealing it;
    - otherwise strings go through `redact_text`, dicts, lists, tuples and sets are walked
      (their keys are names too) and rebuilt only when something inside changed; other
      objects are returned as they are;
    - containers nested deeper than 10 levels are masked whole.
    """
    return _redact_named(key, value, 0)


def _redact_named(key: str, value: object, depth: int) -> object:
    """Redact a value whose name is `key`, `depth` containers down."""
    if is_secret_key(key):
        return _mask_whole(value)
    return _redact_unnamed(value, depth)


def _mask_whole(value: object) -> object:
    """Mask a value known to be secret; None and booleans reveal nothing and are kept."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return _mask_keeping_known_scheme(value)
    return MASK


def _mask_keeping_known_scheme(value: str) -> str:
    """Mask a secret string, keeping a leading well-known auth scheme (``Bearer ***``).

    Only known schemes are kept: the first word of a pass phrase is part of the secret.
    """
    match = _KNOWN_SCHEME_VALUE_RE.fullmatch(value)
    if match is None:
        return _mask(value)
    return match["scheme"] + match["space"] + _mask_credential(match["scheme"], match["rest"])


def _redact_unnamed(value: object, depth: int) -> object:
    """Redact by shape: text through `redact_text`, containers walked, the rest untouched."""
    if isinstance(value, str):
        return redact_text(value)
    if not isinstance(value, Mapping | list | tuple | set | frozenset):
        return value
    if depth >= _MAX_DEPTH:
        return MASK
    if isinstance(value, Mapping):
        return _redact_mapping(value, depth + 1)
    return _redact_collection(value, depth + 1)


def _redact_mapping(mapping: Mapping[object, object], depth: int) -> object:
    """Redact a mapping's values by their keys; the original is returned when nothing changed."""
    redacted = {key: _redact_named(str(key), item, depth) for key, item in mapping.items()}
    unchanged = all(redacted[key] is item for key, item in mapping.items())
    return mapping if unchanged else redacted


def _redact_collection(
    items: list[object] | tuple[object, ...] | set[object] | frozenset[object], depth: int
) -> object:
    """Redact a sequence or set, rebuilt only when an item changed.

    The copy has the builtin type the original derives from: a subclass such as a named tuple
    may not accept a single iterable in its constructor.
    """
    redacted = [_redact_unnamed(item, depth) for item in items]
    if all(new is old for new, old in zip(redacted, items, strict=True)):
        return items
    builtin = next(kind for kind in (list, tuple, set, frozenset) if isinstance(items, kind))
    return builtin(redacted)


def redact_event_dict(_logger: WrappedLogger, _method_name: str, event_dict: EventDict) -> EventDict:
    """A structlog processor that masks secrets in every field of a log event.

    Each field goes through `redact_value` under its own name, so ``password=...`` is masked
    and strings, dicts and lists are searched for secret shapes. The keys written by the
    logging setup (``level``, ``logger``, ``timestamp``, ``trace_id``, ``span_id``,
    ``request_id``) are left alone; ``event`` is free text and goes through `redact_text`.
    Changed fields are replaced in the event dict, which structlog builds per call; nested
    objects the caller passed in are copied, never modified.
    """
    for key, value in list(event_dict.items()):
        if key == "event" and isinstance(value, str):
            event_dict[key] = redact_text(value)
        elif key not in ALLOWLISTED_EVENT_KEYS:
            event_dict[key] = _redact_named(key, value, 0)
    return event_dict
