"""What serving with SKIN_OPENVINO=bf16 would change, measured at export on the test split.

bf16 keeps 8 bits of mantissa: fast on AMX / AVX-512 BF16 CPUs, but near-ties between classes can flip. The
runtime serves it only when told to: SKIN_OPENVINO=bf16 always (with a warning where this entry in report.json
says it is not safe for this model), SKIN_OPENVINO=auto only where it says safe (runtime/bf16.py). /api/info
shows the entry to clients when bf16 is served.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from export import heatmap, infer
from runtime import bundle

MIN_AGREEMENT = 0.99  # top-1, heatmap and flags, as for int8
PACKAGE = "openvino"


def measure(
    fp32: bytes,
    *,
    test: Sequence[Path],
    flags: Callable[[Any, Any], dict[str, float]] | None,
    size: tuple[int, int],
    resize: str,
    resize_filter: str,
    log: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Top-1 agreement, largest probability difference, heatmap agreement (export/heatmap.py) when the graph
    has a CAM, flag agreement (``flags(fp32_session, bf16_session)`` when the bundle has thresholds) and
    batch-1 latency of bf16 against fp32."""
    if importlib.util.find_spec(PACKAGE) is None:
        return {"measured": False, "reason": "openvino is not installed (the openvino extra)"}
    from runtime.bf16 import cpu_has_bf16

    if cpu_has_bf16() is False:
        return {
            "measured": False,
            "reason": "this CPU lacks AVX-512 BF16 and AMX: OpenVINO would not run bf16",
        }
    try:
        return _measure(fp32, test, flags, (size, resize, resize_filter), log)
    except Exception as exc:  # an optional check: it never costs the export
        from runtime.engine import first_line  # OpenVINO's errors run to many lines: report.json keeps one

        return {"measured": False, "reason": f"the bf16 check failed: {first_line(exc)}"}


def _measure(
    fp32: bytes,
    test: Sequence[Path],
    flags: Callable[[Any, Any], dict[str, float]] | None,
    view: tuple[tuple[int, int], str, str],
    log: Callable[[str], None],
) -> dict[str, Any]:
    from runtime.engine import available_cpus, first_line, openvino_session

    threads = available_cpus()
    s32 = infer.session(fp32, threads=threads)
    try:
        s16 = openvino_session(fp32, threads=threads, precision="bf16")
    except bundle.BundleError as exc:
        return {"measured": False, "reason": first_line(exc)}
    log(f"bf16: comparing OpenVINO bf16 with fp32 on {len(test)} test images")
    size, resize, resize_filter = view
    fetch = heatmap.outputs(s32)
    (a, b), kept = infer.run_each(
        [s32, s16], test, fetch, size=size, resize=resize, resize_filter=resize_filter
    )
    if not kept:
        return {"measured": False, "reason": "no test image could be read"}
    p32, p16 = a[bundle.PROBS_OUTPUT], b[bundle.PROBS_OUTPUT]
    heatmaps = heatmap.compare(a, b)
    one = infer.pixels([test[kept[0]]], size, resize, resize_filter)
    latency = {"fp32": infer.latency_ms(s32, one), "bf16": infer.latency_ms(s16, one)}
    entry: dict[str, Any] = {
        "measured": True,
        "n_test": len(kept),
        "agreement": float(np.mean(p32.argmax(1) == p16.argmax(1))),
        "max_abs_diff": float(np.abs(p32 - p16).max()),
        **heatmaps,
        "latency_batch1_ms": {k: round(v, 3) for k, v in latency.items()},
        "speedup_batch1": round(latency["fp32"] / latency["bf16"], 3),
        "min_agreement": MIN_AGREEMENT,
    }
    if flags is not None:  # on the test images and generated foreign ones
        entry["flag_agreement"] = flags(s32, s16)
    agreements = [entry["agreement"], *([heatmaps["heatmap_agreement"]] if heatmaps else [])]
    worst = min([*agreements, *entry.get("flag_agreement", {}).values()])
    entry["safe"] = worst >= MIN_AGREEMENT
    heat = f", heatmap agreement {heatmaps['heatmap_agreement']:.4f}" if heatmaps else ""
    log(
        f"bf16: top-1 agreement {entry['agreement']:.4f}{heat}, {entry['speedup_batch1']:.2f}x fp32's speed "
        f"at batch 1 ({'within' if entry['safe'] else 'outside'} the {MIN_AGREEMENT} agreement bound)"
    )
    return entry
