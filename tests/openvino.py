"""Whether the `openvino` extra (OpenVINO's runtime, offered on x86-64) is here to test.

`make test` sets SKIN_REQUIRE_OPENVINO=1 on x86-64, where it installs the extra: there these tests run, and
fail if it is missing. Elsewhere (other CPUs, the runtime-only venv) they skip.
"""

from __future__ import annotations

import importlib.util
import os

import pytest

HAVE_OPENVINO = importlib.util.find_spec("openvino") is not None
needs_openvino = pytest.mark.skipif(
    not HAVE_OPENVINO and not os.environ.get("SKIN_REQUIRE_OPENVINO"),
    reason="the openvino extra is not installed (pip install -e '.[openvino]', x86-64 only)",
)
