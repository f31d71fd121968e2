"""Whether the `openvino` extra (onnxruntime's OpenVINO plugin EP, x86-64 wheels only) is here to test.

`make test` sets SKIN_REQUIRE_OPENVINO=1 on x86-64, where it installs the extra: there these tests run, and
fail if the plugin is missing. Elsewhere (other CPUs, the runtime-only venv) they skip, and so they do where
the plugin is installed but offers no device for this CPU (it takes Intel CPUs only: an AMD EPYC gets none).
"""

from __future__ import annotations

import importlib.util
import os

import pytest

HAVE_PLUGIN = importlib.util.find_spec("onnxruntime_ep_openvino") is not None


def _devices() -> int:
    from runtime.bundle import BundleError
    from runtime.engine import openvino_devices

    try:
        return len(openvino_devices())
    except BundleError:  # a broken install: the tests that need it run and say so
        return -1


PLUGIN_DEVICES = _devices() if HAVE_PLUGIN else 0
needs_openvino = pytest.mark.skipif(
    (not HAVE_PLUGIN and not os.environ.get("SKIN_REQUIRE_OPENVINO"))
    or (HAVE_PLUGIN and PLUGIN_DEVICES == 0),
    reason="the openvino extra is not installed (pip install -e '.[openvino]', x86-64 only)"
    if not HAVE_PLUGIN
    else "the OpenVINO plugin EP offers no device on this CPU (it takes Intel CPUs only)",
)
