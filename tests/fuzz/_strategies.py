"""Hypothesis strategies for hostile header values, and the example budget of the fuzz job.

Arbitrary bytes rarely hit the interesting cases (a superscript digit next to ASCII digits,
an exponent, a zone id), so every value is drawn from raw bytes, latin-1 text, or a string of
atoms that each parser treats specially.
"""

from __future__ import annotations

import os
from typing import Final

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

#: Examples per fuzz test: the default keeps the whole job to a few thousand examples (well
#: under a minute on a loaded machine); ``RESILIENT_FUZZ_EXAMPLES=100000`` runs longer.
_OVERRIDE: Final = int(os.environ.get("RESILIENT_FUZZ_EXAMPLES", "0") or 0)


def budget(default: int) -> settings:
    """Hypothesis settings for one fuzz test: `default` examples unless the environment says more."""
    return settings(
        max_examples=_OVERRIDE or default,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )


ATOMS: Final = (
    b"0", b"1", b"7", b"9", b"12", b"999999999999", b"9" * 40, b"0" * 30,
    b"\xb2", b"\xb3", b"\xb9", b"\xa0", b"\x85", b"\xff", b"\x00", b"\r", b"\n",
    "\u0661\u0662".encode(), "\uff11".encode(), b" ", b"\t", b"-", b"+", b".", b"e", b"E", b"e306", b"e-5",
    b"inf", b"nan", b"Infinity", b"_", b",", b";", b"=", b'"', b"'", b"[", b"]", b":", b"%", b"%25",
    b"for=", b"by=", b"proto=", b"unknown", b"::1", b"::ffff:", b"10.1.2.3", b"203.0.113.9", b"fe80::1",
    b"1.2.3.4:80", b"[2001:db8::1]:443", b"_hidden", b"%eth0", b"%\n",
    b"00-", b"-01", b"ff-", b"0af7651916cd43dd8448eb211c80319c", b"b7ad6b7169203331", b"0" * 32,
    b"Mon, 01 Jan 9999 00:00:00 GMT", b"Wed, 21 Oct 2015 07:28:00 GMT", b"+2359", b"-0000",
    b"req-1", b"a" * 129, b"\xc3\xa9",
)  # fmt: skip


def header_values(max_size: int = 80) -> st.SearchStrategy[bytes]:
    """A header value as a server may hand it over: any bytes, weighted towards parser corner cases."""
    return st.one_of(
        st.binary(max_size=max_size),
        st.lists(st.sampled_from(ATOMS), max_size=8).map(b"".join),
        # Numbers as parsers see them: ASCII digits among latin-1 digits, spaces, signs, dots.
        st.text("0123456789\u00b2\u00b3\u00b9\u00bc \t.-+e", max_size=16).map(lambda text: text.encode("latin-1")),
        st.text(st.characters(max_codepoint=0xFF), max_size=max_size).map(lambda text: text.encode("latin-1")),
    )


def header_texts(max_size: int = 80) -> st.SearchStrategy[str]:
    """The same values as text: latin-1 decoded (as WSGI servers do) or any Unicode."""
    return st.one_of(
        header_values(max_size).map(lambda raw: raw.decode("latin-1")),
        st.text(max_size=max_size),
    )
