"""Whether onnxruntime computes an int8 graph exactly on this CPU; which graph SKIN_MODEL_VARIANT=auto serves.

On x86 without VNNI (AVX2, AVX-512 without VNNI), onnxruntime's fast uint8 x int8 kernels add each pair of
products in 16 bits and clip the sum (``vpmaddubsw``). A model's int8 graph then answers differently from the
one export measured: on the benchmark's B3 it agreed with fp32 on 50 % of the top-1 classes, the same graph
computed exactly on 63 %. ``session.x64quantprecision`` makes onnxruntime use its exact uint8 x uint8 kernels
there instead, which are slower than fp32 on such a CPU. VNNI and AMX sum in 32 bits: exact and fast. ARM's
kernels are exact too. Stdlib, runtime/bundle.py and runtime/cpuflags.py only: the engine's session options
use it.
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

from runtime import bundle, cpuflags

PRECISION_OPTION = "session.x64quantprecision"  # onnxruntime: exact u8 x u8 kernels where u8 x s8 clips
VNNI_FLAGS = {"avx512_vnni", "avx_vnni", "amx_int8"}  # /proc/cpuinfo: int8 dot products summed in 32 bits
X86 = ("x86_64", "amd64", "i386", "i686")
SLOWER = "this CPU has no VNNI or AMX, and onnxruntime's exact int8 kernels are slower than fp32 without them"


def cpu_has_vnni() -> bool | None:
    """Whether this CPU has AVX-512 VNNI, AVX-VNNI or AMX-INT8; None where /proc/cpuinfo cannot tell."""
    return cpuflags.any_of(VNNI_FLAGS)


def clips_sums() -> bool | None:
    """Whether onnxruntime's fast int8 kernels would clip sums here (x86 without VNNI); None: cannot tell."""
    if platform.machine().lower() not in X86:
        return False
    vnni = cpu_has_vnni()
    return None if vnni is None else not vnni


def stale(report: Any, path: Path) -> str | None:
    """Why ``path`` (the bundle's int8 graph) is not the one export shipped beside this report.json: a file
    left from an earlier export under a new model.onnx and report; None: it is, or the report cannot say."""
    entry = report.get("int8") if isinstance(report, dict) else None
    if not isinstance(entry, dict):
        return None
    decision, recorded = entry.get("decision"), entry.get("sha256")
    if isinstance(decision, str) and decision != "shipped":
        return f"{bundle.REPORT_FILE} says export did not ship one with this model ({decision})"
    if isinstance(recorded, str) and recorded != bundle.model_sha256(path):
        return f"{bundle.REPORT_FILE} records another one (sha256 {recorded[:12]})"
    return None


def serve_int8(variant: str, stale: str | None = None) -> tuple[bool, str | None]:
    """The bundle ships an int8 graph and ``variant`` (``auto`` or ``int8``) would serve it: whether to, and
    why the choice needs saying (else None). ``auto`` takes fp32 where int8 would only be slower, or is not
    this model's (``stale``: why); ``int8`` is served as asked, exactly."""
    if stale is not None and variant != "int8":
        return False, f"fp32, not the bundle's int8 graph: {stale}"
    if clips_sums() is not True:
        return True, None
    if variant == "int8":
        return True, f"int8 served as asked, computed exactly, but {SLOWER}"
    return False, f"fp32, not the bundle's int8 graph: {SLOWER}"
