from __future__ import annotations

from pathlib import Path

import pytest

from tests.bundle_factory import make_bundle


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 5-class CAM bundle (64 px input): red → Acne, green → Eczema, blue → Moles."""
    return make_bundle(tmp_path_factory.mktemp("bundle"))
