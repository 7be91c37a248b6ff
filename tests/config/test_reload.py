"""`reload()`: a good file replaces the configuration and says what changed; a bad one changes nothing."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import pytest

from resilient import Retry, config
from tests.config.conftest import Writer


def _events(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == "resilient"]


def test_a_good_reload_swaps_the_configuration_and_logs_what_changed(
    write: Writer, caplog: pytest.LogCaptureFixture
) -> None:
    """New named policies take the new file; ``config.reloaded`` lists the changed keys."""
    write("resilient.toml", "[policies.p]\nretry = 2\n")
    assert config.policy("p").retry == Retry(attempts=2)
    write("resilient.toml", "[policies.p]\nretry = 4\n")
    with caplog.at_level(logging.INFO, logger="resilient"):
        assert config.reload() is True
    assert config.policy("p").retry == Retry(attempts=4)
    (line,) = [event for event in _events(caplog) if "config.reloaded" in event]
    assert "policies.p.retry.attempts" in line
    assert "policies.p.retry.max_delay" not in line


def test_a_bad_reload_keeps_the_running_configuration(write: Writer, caplog: pytest.LogCaptureFixture) -> None:
    """A bad file is rejected with the reason; the previous configuration stays current."""
    write("resilient.toml", "[policies.p]\nretry = 2\n")
    before = config.current()
    write("resilient.toml", "[policies.p]\nretry = 0\n")
    with caplog.at_level(logging.INFO, logger="resilient"):
        assert config.reload() is False
    assert config.current() is before
    (line,) = [event for event in _events(caplog) if "config.rejected" in event]
    assert "policies.p.retry.attempts must be >= 1, got 0" in line


def test_16_threads_never_see_a_half_applied_policy(write: Writer, tmp_path: Path) -> None:
    """While the file flips between two versions and reloads run, every policy taken is one version whole."""
    versions = ("[policies.p]\nretry = 2\ntimeout = 1.0\n", "[policies.p]\nretry = 4\ntimeout = 2.0\n")
    write("resilient.toml", versions[0])
    seen: set[tuple[object, object]] = set()
    stop = threading.Event()
    barrier = threading.Barrier(17)

    def take() -> None:
        barrier.wait()
        while not stop.is_set():
            policy = config.policy("p")
            retry, timeout = policy.retry, policy.timeout
            seen.add((retry and retry.attempts, timeout and timeout.total))

    threads = [threading.Thread(target=take) for _ in range(16)]
    for thread in threads:
        thread.start()
    barrier.wait()
    for n in range(40):
        staged = tmp_path / "staged.toml"
        staged.write_text(versions[n % 2], encoding="utf-8")
        staged.replace(tmp_path / "resilient.toml")  # atomic: a reader sees one version or the other
        assert config.reload() is True
    stop.set()
    for thread in threads:
        thread.join(timeout=30)
    assert seen
    assert seen <= {(2, 1.0), (4, 2.0)}
