"""`python -m resilient demo`: the protected run beats the naive one, and the CLI checks its input."""

from __future__ import annotations

import subprocess
import sys

import pytest

from resilient import __main__ as entry
from resilient._demo import CACHED, DemoConfig, report, run_demo


@pytest.mark.slow
def test_the_protected_run_does_better_than_the_naive_one() -> None:
    """Every protected call gets an answer, hangs are cut, and the breaker trips during the outage."""
    config = DemoConfig(duration=3.0, workers=4, hang_seconds=0.6)
    naive, protected = run_demo(config)
    assert protected.share("ok", CACHED) == 1.0
    assert naive.share("ok") < 1.0
    assert protected.percentile(0.99) < naive.percentile(0.99)
    assert max(naive.latencies) >= 0.5  # the naive client sat through a hang
    assert protected.events["breaker.opened"] >= 1
    assert protected.events["retry.scheduled"] >= 1
    lines: list[str] = []
    assert report(naive, protected, out=lines.append)
    assert any(line.startswith("breaker trips") for line in lines)


@pytest.mark.parametrize(
    "argv",
    [["--error-rate", "1.5"], ["--duration", "0"], ["--workers", "0"], ["--error-rate", "0.6", "--hang-rate", "0.6"]],
)
def test_bad_options_are_refused_with_a_message(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """Out-of-range options exit with status 2 and name the option."""
    with pytest.raises(SystemExit) as raised:
        entry.main(["resilient", "demo", *argv])
    assert raised.value.code == 2
    assert "--" in capsys.readouterr().err


def test_an_unknown_command_prints_usage() -> None:
    """`python -m resilient` without a known command explains itself and exits 2."""
    done = subprocess.run([sys.executable, "-m", "resilient"], capture_output=True, text=True, check=False)
    assert done.returncode == 2
    assert "usage: python -m resilient demo" in done.stderr
