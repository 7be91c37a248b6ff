"""Fixtures of the reliability scenarios: where their figures go."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ._measure import Figures


@pytest.fixture(scope="session")
def figures(tmp_path_factory: pytest.TempPathFactory) -> Figures:
    """The session's figures: printed per scenario, collected in one JSON file.

    The file goes to $RESILIENT_FIGURES_DIR when set, else to a fresh pytest temp directory.
    """
    chosen = os.environ.get("RESILIENT_FIGURES_DIR")
    directory = Path(chosen) if chosen else tmp_path_factory.mktemp("figures")
    directory.mkdir(parents=True, exist_ok=True)
    return Figures(directory)
