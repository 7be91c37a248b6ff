"""The decorators example runs and each safeguard does what the example says."""

from __future__ import annotations

import pytest

from examples import decorators


def test_the_decorator_tour(capsys: pytest.CaptureFixture[str]) -> None:
    """Flaky calls succeed through retries, hangs are cut, the dead service fails fast."""
    tally = decorators.main()
    assert tally.outcomes["fetch_price"] == ["20/20 succeeded"]
    assert tally.calls["fetch_price"] > 20  # some calls needed retries
    assert tally.outcomes["load_profile"][0].startswith(("10 loaded", "9 loaded", "8 loaded"))
    assert tally.calls["recommendations"] == 3  # then the breaker opened: no more calls
    assert tally.outcomes["recommendations"] == ["10 answers, all ['bestsellers']"]
    assert "fetch_price" in capsys.readouterr().out
