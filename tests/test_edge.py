"""What both middlewares share: option checks, request ids, client keys, routes, rate-limit headers."""

from __future__ import annotations

import os
import re
import uuid
from typing import Any

import pytest

from resilient._edge.core import (
    ClientResolver,
    RateDecision,
    Router,
    accept_request_id,
    content_length_verdict,
    effective_timeout,
    error_body,
    new_request_id,
    rate_limit_headers,
)
from resilient._edge.options import EdgeOptions, RouteOptions, build_options
from resilient._edge.telemetry import (
    display_target,
    loggable,
)
from resilient.asgi import ResilientMiddleware
from resilient.wsgi import ResilientWSGIMiddleware

# --- options ---------------------------------------------------------------------------------

BAD_OPTIONS: list[tuple[dict[str, Any], type[Exception], str]] = [
    ({"rate_limt": "1/second"}, TypeError, "unknown middleware option 'rate_limt'; allowed: access_log"),
    ({"rate_limit": "lots"}, ValueError, "rate_limit must be limits notation such as '100/minute'"),
    ({"rate_limit": 100}, TypeError, "rate_limit must be limits notation"),
    ({"rate_limit_algorithm": "token-bucket"}, ValueError, "rate_limit_algorithm must be one of"),
    ({"rate_limit_key": "ip"}, TypeError, "rate_limit_key must be a callable or None, got 'ip'"),
    ({"max_in_flight": 0}, ValueError, "max_in_flight must be >= 1, got 0"),
    ({"max_in_flight_wait": -1}, ValueError, "max_in_flight_wait must be a finite number of seconds >= 0"),
    ({"timeout": 0}, ValueError, "timeout must be a finite number of seconds > 0, got 0"),
    ({"max_body_size": -5}, ValueError, "max_body_size must be >= 0, got -5"),
    ({"request_id_header": "X Request\r\nID"}, ValueError, "request_id_header must be an HTTP header name"),
    ({"tracing": "yes"}, TypeError, "tracing must be True or False, got 'yes'"),
    ({"trusted_proxies": "10.0.0.0/8"}, TypeError, "trusted_proxies must be a sequence of CIDR strings"),
    ({"trusted_proxies": ["10.0.0.0/33"]}, ValueError, "trusted_proxies entries must be IP addresses or CIDR"),
    ({"routes": {"api": RouteOptions()}}, ValueError, "routes keys must be path prefixes starting with '/'"),
    ({"routes": {"/api": {"timeout": 1}}}, TypeError, "routes['/api'] must be a RouteOptions"),
    ({"storage": "memory"}, ValueError, "storage must be"),
    ({"storage": "nosuch://x"}, ValueError, "storage must be"),
    ({"storage": 3}, TypeError, "storage must be a URI string"),
]


@pytest.mark.parametrize("middleware", [ResilientMiddleware, ResilientWSGIMiddleware])
@pytest.mark.parametrize(("options", "error", "message"), BAD_OPTIONS)
def test_bad_options_fail_at_construction_naming_the_field(
    middleware: Any, options: dict[str, Any], error: type[Exception], message: str
) -> None:
    """Each bad option fails when the middleware is built, naming the field, value and rule."""
    with pytest.raises(error, match=re.escape(message)):
        middleware(lambda *_: None, **options)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"timeout": -1.0}, "RouteOptions.timeout must be a finite number of seconds > 0, got -1.0"),
        ({"rate_limit": "often"}, "RouteOptions.rate_limit must be limits notation"),
        ({"max_in_flight": 0}, "RouteOptions.max_in_flight must be >= 1, got 0"),
        ({"max_body_size": -1}, "RouteOptions.max_body_size must be >= 0, got -1"),
    ],
)
def test_bad_route_options_fail_at_construction(options: dict[str, Any], message: str) -> None:
    """RouteOptions validate their own fields when created."""
    with pytest.raises(ValueError, match=re.escape(message)):
        RouteOptions(**options)


def test_defaults_switch_every_limit_off_and_every_observation_on() -> None:
    """By default nothing is limited and ids, spans and access logs are on."""
    options = build_options({})
    assert (options.rate_limit, options.max_in_flight, options.timeout, options.max_body_size) == (None,) * 4
    assert all((options.request_id, options.tracing, options.access_log, options.error_shield))
    assert options.storage == "memory://"


# --- request ids -----------------------------------------------------------------------------


@pytest.mark.parametrize("good", [b"abc", b"0f8fad5b-d9cb-469f-a165-70867728950e", b"svc:req.42_x", b"a" * 128])
def test_well_formed_request_ids_are_kept(good: bytes) -> None:
    """Ids of 1-128 safe characters are accepted as they are, from bytes or text."""
    assert accept_request_id(good) == good.decode()
    assert accept_request_id(good.decode("latin-1")) == good.decode()


@pytest.mark.parametrize(
    "bad", [None, b"", b"a" * 129, b"abc\r\nSet-Cookie: x=1", b"a b", b'"quoted"', b"caf\xe9", "caf\u20ac"]
)
def test_malformed_request_ids_are_replaced(bad: bytes | str | None) -> None:
    """Anything else (too long, CR/LF, spaces, quotes, non-ASCII) gets a fresh uuid4 hex id."""
    assert re.fullmatch(r"[0-9a-f]{32}", accept_request_id(bad))


def test_generated_request_ids_are_distinct_uuid4s_across_batches() -> None:
    """Ids come from batches of random bytes: each is a version-4 UUID, none repeats."""
    ids = [new_request_id() for _ in range(1000)]  # several batches
    assert len(set(ids)) == len(ids)
    for text in ids:
        parsed = uuid.UUID(text)
        assert (parsed.version, parsed.variant) == (4, uuid.RFC_4122)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_never_reuses_the_parents_request_ids() -> None:
    """A worker forked after the parent started a batch (gunicorn --preload) draws its own."""
    new_request_id()  # the parent has a batch in hand
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        os.write(write_end, new_request_id().encode())
        os._exit(0)
    os.waitpid(pid, 0)
    child_id = os.read(read_end, 64).decode()
    os.close(read_end)
    os.close(write_end)
    assert child_id != new_request_id()


# --- client address --------------------------------------------------------------------------

TRUSTED = ClientResolver(["10.0.0.0/8", "2001:db8::/32"])


def test_forwarded_headers_are_ignored_from_untrusted_peers() -> None:
    """A peer outside the trusted networks cannot choose its key with a header."""
    assert not TRUSTED.peer_is_trusted("203.0.113.9")
    assert not TRUSTED.peer_is_trusted("not-an-ip")
    assert not ClientResolver([]).peer_is_trusted("10.0.0.1")


@pytest.mark.parametrize(
    ("forwarded", "xff", "client"),
    [
        (None, "198.51.100.7", "198.51.100.7"),
        (None, "1.1.1.1, 198.51.100.7, 10.0.0.2", "198.51.100.7"),  # rightmost untrusted hop wins
        (None, "10.0.0.3, 10.0.0.2", "10.0.0.3"),  # every hop trusted: the leftmost
        (None, "garbage, 10.0.0.2", "10.0.0.2"),  # unparsable hop: the nearest trusted proxy
        (None, "198.51.100.7:4711", "198.51.100.7"),
        ('for="[2001:db8:cafe::17]:4711"', None, "2001:db8:cafe::17"),  # trusted v6 proxy chain
        ("for=192.0.2.60;proto=http;by=203.0.113.43", None, "192.0.2.60"),
        ("for=192.0.2.43, for=198.51.100.17", "6.6.6.6", "198.51.100.17"),  # Forwarded wins over XFF
        ("for=unknown", None, "10.0.0.1"),
        (None, None, "10.0.0.1"),
    ],
)
def test_trusted_proxies_reveal_the_client(forwarded: str | None, xff: str | None, client: str) -> None:
    """Behind trusted proxies the client is the first untrusted hop, walking from the right."""
    assert TRUSTED.peer_is_trusted("10.0.0.1")
    assert TRUSTED.resolve("10.0.0.1", forwarded, xff) == client


# --- routes ----------------------------------------------------------------------------------


def _router(**options: Any) -> Router[tuple[int, float]]:
    edge_options = EdgeOptions(**options)
    return Router(edge_options, lambda size, wait: (size, wait))


def test_longest_prefix_wins_at_segment_boundaries() -> None:
    """``/api/admin`` beats ``/api``; ``/apix`` matches neither; the rest gets the default plan."""
    router = _router(
        timeout=10.0,
        routes={"/api": RouteOptions(timeout=2.0), "/api/admin/": RouteOptions(timeout=1.0)},
    )
    assert router.plan_for("/api").timeout == 2.0
    assert router.plan_for("/api/users").timeout == 2.0
    assert router.plan_for("/api/admin/users").timeout == 1.0
    assert router.plan_for("/apix").timeout == 10.0
    assert router.plan_for("/").label == "default"


def test_route_overrides_replace_and_none_switches_off() -> None:
    """A route inherits unset options, replaces set ones, and None turns a protection off."""
    router = _router(
        rate_limit="10/second",
        max_in_flight=5,
        max_body_size=100,
        routes={"/upload": RouteOptions(max_body_size=None, max_in_flight=2), "/health": RouteOptions(rate_limit=None)},
    )
    default, upload, health = router.default, router.plan_for("/upload"), router.plan_for("/health")
    assert upload.max_body_size is None
    assert upload.gate == (2, 0.0)
    assert upload.limiter is default.limiter  # inherited: shares the default buckets
    assert health.limiter is None
    assert health.gate is default.gate


# --- rate-limit headers ----------------------------------------------------------------------


def test_rejection_headers_follow_draft_11_and_draft_06() -> None:
    """A 429 carries RateLimit-Policy/RateLimit, the legacy trio and Retry-After rounded up."""
    decision = RateDecision(admitted=False, name="default", limit=100, remaining=0, reset_after=16.2)
    headers = dict(rate_limit_headers(decision, b'"default";q=100;w=60', legacy=True))
    assert headers == {
        b"ratelimit-policy": b'"default";q=100;w=60',
        b"ratelimit": b'"default";r=0;t=17',
        b"ratelimit-limit": b"100",
        b"ratelimit-remaining": b"0",
        b"ratelimit-reset": b"17",
        b"retry-after": b"17",
    }


def test_success_headers_skip_retry_after_and_legacy_when_off() -> None:
    """An admitted request reports its state without Retry-After; legacy headers can be dropped."""
    decision = RateDecision(admitted=True, name="default", limit=100, remaining=42, reset_after=0.0)
    headers = dict(rate_limit_headers(decision, b"p", legacy=False))
    assert headers == {b"ratelimit-policy": b"p", b"ratelimit": b'"default";r=42;t=0'}


def test_retry_after_is_at_least_one_second() -> None:
    """A window resetting in a few milliseconds still asks the client to wait one second."""
    decision = RateDecision(admitted=False, name="default", limit=1, remaining=0, reset_after=0.0001)
    assert dict(rate_limit_headers(decision, b"p", legacy=False))[b"retry-after"] == b"1"


def test_policy_header_names_each_window_of_a_multi_limit() -> None:
    """Several limits become several named policies, quota and window in seconds."""
    router = _router(rate_limit="10/second;1000/hour")
    assert router.default.limiter is not None
    assert router.default.limiter.policy_header == b'"default-1second";q=10;w=1, "default-1hour";q=1000;w=3600'


def test_limiter_admits_its_quota_then_rejects_with_state() -> None:
    """The limiter counts per key and reports the limit that rejected."""
    limiter = _router(rate_limit="2/minute", rate_limit_algorithm="fixed-window").default.limiter
    assert limiter is not None
    assert limiter.hit("a", want_state=False) is None
    state = limiter.hit("a", want_state=True)
    assert state is not None
    assert (state.admitted, state.remaining, state.limit) == (True, 0, 2)
    rejected = limiter.hit("a", want_state=False)
    assert rejected is not None
    assert not rejected.admitted
    assert 0 < rejected.reset_after <= 60
    assert limiter.hit("b", want_state=False) is None


# --- small helpers ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "verdict"), [(None, None), (b"10", None), (b"11", 413), (b"abc", 400), (b"-1", 400), ("\u0661", 400)]
)
def test_content_length_verdict(value: bytes | str | None, verdict: int | None) -> None:
    """A declared length over the limit is 413, a malformed one 400, anything else passes."""
    assert content_length_verdict(value, 10) == verdict


def test_caller_deadline_only_shortens_the_local_timeout() -> None:
    """The deadline header can lower the local timeout, never raise it."""
    assert effective_timeout(10.0, 2.0) == 2.0
    assert effective_timeout(1.0, 2.0) == 1.0
    assert effective_timeout(None, 2.0) == 2.0
    assert effective_timeout(5.0, None) == 5.0


def test_error_body_is_json_with_only_the_code_and_id() -> None:
    """Error bodies carry the code and the request id, nothing else."""
    assert error_body(429, "abc") == b'{"error":"rate_limited","request_id":"abc"}'
    assert error_body(500, None) == b'{"error":"internal_error"}'


def test_logged_text_is_printable_bounded_and_redacted() -> None:
    """Paths in logs have control characters escaped, are cut to 1 KiB and lose secret parameters."""
    assert loggable("/a\r\nb\udcff") == "/a\\r\\nb\\\\udcff"
    assert len(loggable("/" + "x" * 5000)) == 1024 + 3
    assert display_target("/p", "token=abc&page=2") == "/p?token=***&page=2"
    assert display_target("/p", "") == "/p"


@pytest.mark.parametrize(
    ("path", "shown"),
    [
        ("/plain/path", "/plain/path"),
        ("//user:secret@host/p", "//user:***@host/p"),  # a decoded path can look like a URL
        ("/a#access_token=abc", "/a#access_token=***"),
        ("/a?token=abc", "/a?token=***"),  # %3F decoded into the path
    ],
)
def test_paths_without_a_query_are_still_redacted_when_they_could_hide_a_secret(path: str, shown: str) -> None:
    """The shortcut for plain paths never skips what `redact_url` would mask."""
    assert display_target(path, "") == shown
