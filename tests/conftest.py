from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.bundle_factory import make_bundle


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 5-class CAM bundle (64 px input): red → Acne, green → Eczema, blue → Moles."""
    return make_bundle(tmp_path_factory.mktemp("bundle"))


@pytest.fixture
def runtime_log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """caplog for the runtime's loggers: once runtime.logs.setup() has run they no longer propagate to the
    root, where caplog listens, so whether a test saw their lines depended on the tests before it."""
    logger = logging.getLogger("runtime")
    logger.addHandler(caplog.handler)
    try:
        yield caplog
    finally:
        logger.removeHandler(caplog.handler)
