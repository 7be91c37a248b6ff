"""Each configuration test runs in an empty directory with no configuration in the environment."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from resilient import config


@pytest.fixture(autouse=True)
def _no_ambient_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No file, no RESILIENT_* variable, and no configuration cached from an earlier test."""
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith("RESILIENT_"):
            monkeypatch.delenv(name)
    config.use(None)
    yield
    config.use(None)


Writer = Callable[[str, str], Path]


@pytest.fixture
def write(tmp_path: Path) -> Writer:
    """Write a file in the working directory: ``write("resilient.toml", text)``."""

    def _write(name: str, text: str) -> Path:
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        return path

    return _write
