"""The Makefile's user-facing targets on a clean clone, nothing built (no pip install is ever run here)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def _make(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["make", "--no-print-directory", "-C", str(ROOT), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_help_names_the_documented_targets() -> None:
    done = _make("help")
    assert done.returncode == 0
    # README names test-fast too (the suite without the slow tests); help left it out.
    assert [line.split()[1] for line in done.stdout.splitlines()] == ["demo", "test", "test-fast", "serve"]


def test_serve_without_a_bundle_says_what_to_do_before_installing(tmp_path: Path) -> None:
    # PYTHON=false: were the environment made first, it would fail at once instead of installing for minutes.
    venv, bundle = tmp_path / "venv", tmp_path / "no-bundle"
    done = _make("serve", f"VENV={venv}", f"BUNDLE={bundle}", "PYTHON=false")
    assert done.returncode != 0
    assert done.stderr.splitlines()[0] == (
        f"make serve: no bundle at '{bundle}': build one with 'make demo', or pass BUNDLE=DIR"
    )
    assert not venv.exists()
