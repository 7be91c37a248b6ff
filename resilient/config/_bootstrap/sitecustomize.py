"""Run by Python at start-up in programs launched by `resilient run`: patch, then chain.

Installs the zero-code patches (`resilient.config._zero_code`) unless ``RESILIENT_DISABLED``
is set, then runs the `sitecustomize` this one hides, if any, as Python would have.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))  # noqa: PTH100, PTH120 - runs before anything else


def _install() -> None:
    try:
        from resilient.config._zero_code import install  # noqa: PLC0415

        install()
    except Exception as exc:  # a broken install must not stop the program
        print(f"resilient: zero-code mode failed to start: {exc!r}", file=sys.stderr)  # noqa: T201


def _chain() -> None:
    """Run the next `sitecustomize` on the path (one of a virtualenv or a distribution)."""
    others = [entry for entry in sys.path if os.path.abspath(entry or ".") != _HERE]  # noqa: PTH100
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", others)
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)


_install()
_chain()
