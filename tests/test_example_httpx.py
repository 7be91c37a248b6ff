"""The httpx example runs and shows the resilient client beating the plain one."""

from __future__ import annotations

import pytest

from examples import httpx_client


def test_the_httpx_example(capsys: pytest.CaptureFixture[str]) -> None:
    """Every request succeeds through retries, at the cost of extra upstream calls; plain httpx does not."""
    summaries = httpx_client.main()  # the fault sequence is seeded, so the figures are stable
    plain, protected = summaries["plain"], summaries["resilient"]
    requests = httpx_client.REQUESTS
    assert plain.upstream_calls == requests
    assert plain.successes < requests
    assert protected.successes == requests
    assert requests < protected.upstream_calls <= requests * 5
    assert len(protected.waits) == protected.upstream_calls - requests
    assert any(wait >= 1.0 for wait in protected.waits)  # Retry-After: 1 was honoured
    assert "resilient.httpx" in capsys.readouterr().out
