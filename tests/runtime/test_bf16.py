"""When bf16 may serve a model (runtime/bf16.py), without OpenVINO itself: CPU flags and report.json."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from runtime import bf16, bundle, cpuflags

SAFE = {"measured": True, "safe": True, "agreement": 0.998, "min_agreement": 0.99}


@pytest.mark.parametrize(
    ("words", "units"),
    [
        pytest.param({"avx512f", "avx512_bf16"}, True, id="avx512-bf16"),
        pytest.param({"avx2", "amx_bf16", "amx_tile"}, True, id="amx"),
        pytest.param({"avx2", "avx512_vnni"}, False, id="none"),
        pytest.param(None, None, id="cpuinfo-unreadable"),
    ],
)
def test_bf16_units_from_the_cpu_flags(
    monkeypatch: pytest.MonkeyPatch, words: set[str] | None, units: bool | None
) -> None:
    monkeypatch.setattr(cpuflags, "_words", lambda: None if words is None else frozenset(words))
    assert bf16.cpu_has_bf16() is units


@pytest.mark.parametrize("cpu", [True, None])
def test_a_measured_safe_model_is_no_concern_unless_the_cpu_lacks_bf16(
    monkeypatch: pytest.MonkeyPatch, cpu: bool | None
) -> None:
    # A CPU that cannot be read (no /proc/cpuinfo) is not known to lack bf16: export's measurement decides.
    monkeypatch.setattr(bf16, "cpu_has_bf16", lambda: cpu)
    assert bf16.concern(SAFE) is None
    monkeypatch.setattr(bf16, "cpu_has_bf16", lambda: False)
    assert "lacks AVX-512 BF16 and AMX" in (bf16.concern(SAFE) or "")


@pytest.mark.parametrize("safe", ["true", 1, None])
def test_only_a_json_true_is_safe(monkeypatch: pytest.MonkeyPatch, safe: object) -> None:
    # report.json is a file people edit: "safe": "true" or 1 is not export's verdict
    monkeypatch.setattr(bf16, "cpu_has_bf16", lambda: True)
    assert "below the agreement bound" in (bf16.concern({**SAFE, "safe": safe}) or "")


def test_no_bundle_reads_no_report_from_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(  # as if openvino were installed, whatever this machine has
        importlib.util, "find_spec", lambda name, *a: object() if name == "openvino" else real(name, *a)
    )
    monkeypatch.setattr(bf16, "cpu_has_bf16", lambda: True)
    (tmp_path / bundle.REPORT_FILE).write_text(json.dumps({bf16.REPORT_KEY: SAFE}))
    monkeypatch.chdir(tmp_path)
    assert bf16.choose(".")[0] == "bf16"  # the check itself: this report is read when it is the bundle's
    mode, why = bf16.choose("")
    assert mode == "off" and "did not measure" in why
