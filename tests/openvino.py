"""Whether the `openvino` extra (onnxruntime's OpenVINO plugin EP, x86-64 wheels only) is here to test.

`make test` sets SKIN_REQUIRE_OPENVINO=1 on x86-64, where it installs the extra: there these tests run, and
fail if the plugin is missing. Elsewhere (other CPUs, the runtime-only venv) they skip.
"""

from __future__ import annotations

import importlib.util
import os

import pytest

HAVE_PLUGIN = importlib.util.find_spec("onnxruntime_ep_openvino") is not None
needs_openvino = pytest.mark.skipif(
    not HAVE_PLUGIN and not os.environ.get("SKIN_REQUIRE_OPENVINO"),
    reason="the openvino extra is not installed (pip install -e '.[openvino]', x86-64 only)",
)
