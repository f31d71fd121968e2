"""Whether bf16 may serve this model here: the CPU's bf16 units and what export measured (report.json).

``SKIN_OPENVINO=bf16`` serves bf16 whatever this says and logs the concern at start-up; ``SKIN_OPENVINO=auto``
serves it only where there is none, and onnxruntime fp32 everywhere else. Stdlib only: settings use it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from runtime import bundle, cpuflags, int8

REPORT_KEY = "openvino_bf16"  # written by export/bf16.py


def cpu_has_bf16() -> bool | None:
    """Whether this CPU computes in bf16 (AVX-512 BF16 or AMX); None where /proc/cpuinfo cannot tell.
    Without them OpenVINO quietly runs f32 (or emulates bf16), so a bf16 measurement there says little."""
    return cpuflags.any_of(("avx512_bf16", "amx_bf16"))


def concern(check: Any) -> str | None:
    """Why bf16 may change this model's answers (``check``: report.json's openvino_bf16 entry), or None when
    export measured it within the agreement bound and this CPU has bf16 units."""
    if cpu_has_bf16() is False:
        return "this CPU lacks AVX-512 BF16 and AMX: OpenVINO runs f32 or emulates bf16"
    if not isinstance(check, dict) or not check.get("measured"):
        reason = check.get("reason") if isinstance(check, dict) else None
        return "export did not measure its agreement with fp32 on this model" + (
            f" ({reason[:200]})" if isinstance(reason, str) and reason else ""
        )
    if check.get("safe") is not True:
        flags = check.get("flag_agreement")
        # heatmap_agreement: absent from reports written before export compared heatmaps
        scores = {
            "top-1": check.get("agreement"),
            "heatmap": check.get("heatmap_agreement"),
            **(flags if isinstance(flags, dict) else {}),
        }
        numbers = [(v, k) for k, v in scores.items() if isinstance(v, int | float)]
        worst = f"{min(numbers)[1]} {min(numbers)[0]:.4f}; " if numbers else ""
        return (
            "export measured it below the agreement bound with fp32 on this model "
            f"({worst}see report.json {REPORT_KEY})"
        )
    return None


def entry(report: Any, model_sha256: str | None) -> Any:
    """report.json's openvino_bf16 entry for the model.onnx with this sha256. A report that export wrote for
    another model.onnx (a new model copied over an old bundle's) measured that one, not this."""
    if not isinstance(report, dict):
        return None
    export = report.get("export")
    recorded = export.get("onnx_sha256") if isinstance(export, dict) else None
    if isinstance(recorded, str) and model_sha256 is not None and recorded != model_sha256:
        why = f"{bundle.REPORT_FILE} describes another {bundle.MODEL_FILE}, sha256 {recorded[:12]}"
        return {"measured": False, "reason": why}
    return report.get(REPORT_KEY)


def choose(bundle_dir: str | Path, variant: str = "auto") -> tuple[str, str]:
    """SKIN_OPENVINO=auto: ("bf16", why) where OpenVINO is installed, this CPU has bf16 units and export
    measured bf16 safe for this bundle's model; else ("off", why not): onnxruntime, on the graph
    SKIN_MODEL_VARIANT (``variant``) takes there."""
    off = f"onnxruntime {_fallback(bundle_dir, variant)}, not bf16"
    if variant == "int8":  # on every machine alike: OpenVINO runs only the fp32 graph
        return "off", f"{off}: SKIN_MODEL_VARIANT=int8 asks for the int8 graph, which OpenVINO does not run"
    if importlib.util.find_spec("openvino") is None:
        return "off", f"{off}: the openvino extra is not installed"
    if cpu_has_bf16() is not True:
        return "off", f"{off}: this CPU has no AVX-512 BF16 or AMX units"
    try:
        report = bundle.load_report(bundle_dir) if str(bundle_dir) else None
    except bundle.BundleError:
        report = None  # the engine reports the unreadable file itself, in one line
    try:
        sha256 = bundle.model_sha256(Path(bundle_dir) / bundle.MODEL_FILE) if report else None
    except OSError:
        sha256 = None  # no model.onnx: the engine refuses the bundle itself
    found = entry(report, sha256)
    check: dict[str, Any] = found if isinstance(found, dict) else {}
    if (why := concern(check)) is not None:
        return "off", f"{off}: {why}"
    agreement, speed = check.get("agreement"), check.get("speedup_batch1")
    measured = f" {agreement:.4f}" if isinstance(agreement, int | float) else ""
    faster = f", {speed:.2f}x fp32's speed on the export machine" if isinstance(speed, int | float) else ""
    return "bf16", f"OpenVINO bf16: export measured top-1 agreement{measured} with fp32 on this model{faster}"


def _fallback(bundle_dir: str | Path, variant: str) -> str:
    """The graph onnxruntime serves when auto does not take bf16, as the engine picks it: the bundle's int8
    graph where export shipped one and this CPU runs it (runtime/int8.py), else fp32."""
    try:
        path = bundle.model_path(bundle_dir, variant) if str(bundle_dir) else None
        if path is None or path.name != bundle.INT8_MODEL_FILE:
            return "fp32"
        stale = int8.stale(bundle.load_report(bundle_dir), path)
    except (bundle.BundleError, OSError):
        return "fp32"  # the engine refuses the bundle itself, in one line
    return "int8" if int8.serve_int8(variant, stale)[0] else "fp32"
