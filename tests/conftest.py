from __future__ import annotations

import logging
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.bundle_factory import make_bundle

# Every server the tests start listens on 127.0.0.1: an http_proxy from the environment (a corporate machine)
# would get the tests' requests, and servers that are up would read as not ready.
for _name in ("no_proxy", "NO_PROXY"):
    os.environ[_name] = ",".join(filter(None, [os.environ.get(_name), "127.0.0.1", "localhost"]))

# The runtime's settings from the developer's shell (SKIN_TOP_K=3 in a .bashrc, WEB_CONCURRENCY=2) reached
# Settings.from_env() and every server the tests start: tests set what they mean to try themselves.
# SKIN_REQUIRE_OPENVINO is the suite's own switch (make test), not a runtime setting.
for _name in [k for k in os.environ if k.startswith("SKIN_") and k != "SKIN_REQUIRE_OPENVINO"]:
    del os.environ[_name]
for _name in ("WEB_CONCURRENCY", "PROMETHEUS_MULTIPROC_DIR"):
    os.environ.pop(_name, None)


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


@pytest.fixture
def sighup_heard() -> Iterator[None]:
    """SIGHUP handled as a terminal's command has it, for the test: under nohup (a CI job may run so) it is
    ignored, and the commands rightly leave an ignored SIGHUP ignored, so a test of their SIGHUP line
    failed."""
    before = signal.signal(signal.SIGHUP, signal.SIG_DFL)
    try:
        yield
    finally:
        signal.signal(signal.SIGHUP, before)
