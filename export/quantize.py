"""Static int8 (QDQ, per-channel) and the measured decision whether it ships.

Dynamic int8 is not tried: it quantizes activations at run time and is ~10x slower than fp32 for this CNN.
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from export import heatmap, infer
from export.errors import ExportError
from runtime import bundle
from runtime import int8 as kernels  # the CPU's int8 kernels; `int8` here names graphs

INT8_FILE = bundle.INT8_MODEL_FILE
MIN_AGREEMENT = 0.99  # top-1 and heatmap agreement with fp32 on the test split (and flags: bundle.py)
MIN_SPEEDUP = 1.10  # fp32 / int8 median latency at batch 1: "measurably faster"
CALIBRATION_IMAGES = 128
# The temperature step and softmax stay float: they are cheap, and quantizing them only costs precision.
# So does the out-of-distribution score (nodes named skin_ood_*): its thresholds were set on float distances.
KEEP_FLOAT = ["skin_temperature_div", "skin_softmax"]
KEEP_FLOAT_PREFIX = "skin_ood_"


def decide(agreement: float, speedup: float, heatmap_agreement: float | None = None) -> tuple[bool, str]:
    """``heatmap_agreement``: share of test images whose heatmap int8 draws as fp32 does (export/heatmap.py);
    None for a graph without one."""
    if agreement < MIN_AGREEMENT:
        return False, f"top-1 agreement {agreement:.4f} is below {MIN_AGREEMENT}"
    if heatmap_agreement is not None and heatmap_agreement < MIN_AGREEMENT:
        return False, f"heatmap agreement {heatmap_agreement:.4f} is below {MIN_AGREEMENT}"
    if speedup < MIN_SPEEDUP:
        return (
            False,
            f"int8 is {speedup:.2f}x the speed of fp32 at batch 1; it must be {MIN_SPEEDUP}x to ship",
        )
    heatmaps = "" if heatmap_agreement is None else f", heatmap agreement {heatmap_agreement:.4f}"
    return True, f"top-1 agreement {agreement:.4f}{heatmaps}, {speedup:.2f}x faster at batch 1"


def quantize(
    fp32: bytes,
    *,
    calibration: Sequence[Path],
    size: tuple[int, int],
    resize: str,
    resize_filter: str,
    workdir: Path,
    op_types: Sequence[str] | None = None,
) -> Any:
    """fp32 graph → static int8 QDQ ModelProto, calibrated (min/max) on real images; metadata kept.

    ``op_types``: quantize only these operator types (e.g. ``["Conv"]``); default: all it can."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = infer.batches(calibration, size, resize, resize_filter)

        def get_next(self) -> dict[str, np.ndarray] | None:
            x = next(self.it, None)
            return None if x is None else {bundle.INPUT_NAME: x}

    source, prepared, output = workdir / "fp32.onnx", workdir / "prep.onnx", workdir / "int8.onnx"
    source.write_bytes(fp32)
    # Shape inference + graph cleanup first, as onnxruntime recommends before static quantization.
    quant_pre_process(source, prepared)
    keep = KEEP_FLOAT + [
        n.name for n in onnx.load(prepared).graph.node if n.name.startswith(KEEP_FLOAT_PREFIX)
    ]
    quantize_static(
        prepared,
        output,
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,  # u8 activations x s8 weights: the VNNI/AMX fast path on x86
        weight_type=QuantType.QInt8,
        nodes_to_exclude=keep,
        op_types_to_quantize=list(op_types) if op_types else None,
    )
    model = onnx.load(output)
    original = onnx.load_from_string(fp32)
    del model.metadata_props[:]
    model.metadata_props.extend(original.metadata_props)
    onnx.checker.check_model(model, full_check=True)
    return model


def evaluate(
    fp32: bytes,
    int8: bytes,
    *,
    test: Sequence[Path],
    size: tuple[int, int],
    resize: str,
    resize_filter: str,
) -> dict[str, Any]:
    """Top-1 and heatmap agreement on the test files and median latency of both graphs at batch 1 and 8."""
    s32, s8 = infer.session(fp32), infer.session(int8)
    fetch = heatmap.outputs(s32)
    view: dict[str, Any] = {"size": size, "resize": resize, "resize_filter": resize_filter}
    (ours, theirs), kept = infer.run_each([s32, s8], test, fetch, **view)
    if not kept:
        raise ExportError("int8: no test image could be read")
    heatmaps = heatmap.compare(ours, theirs)
    one = infer.pixels([test[kept[0]]], size, resize, resize_filter)
    eight = infer.pixels([test[kept[i % len(kept)]] for i in range(8)], size, resize, resize_filter)
    latency = {
        name: {
            "batch1_ms": round(infer.latency_ms(sess, one), 3),
            "batch8_ms": round(infer.latency_ms(sess, eight, repeats=8), 3),
        }
        for name, sess in (("fp32", s32), ("int8", s8))
    }
    return {
        "agreement": float(
            np.mean(ours[bundle.PROBS_OUTPUT].argmax(1) == theirs[bundle.PROBS_OUTPUT].argmax(1))
        ),
        **heatmaps,
        "n_test": len(kept),
        "latency": latency,
        "speedup_batch1": round(latency["fp32"]["batch1_ms"] / latency["int8"]["batch1_ms"], 3),
    }


def try_int8(
    fp32: bytes,
    *,
    calibration: Sequence[Path],
    test: Sequence[Path],
    size: tuple[int, int],
    resize: str,
    resize_filter: str,
    workdir: Path,
    log: Callable[[str], None] = lambda _: None,
) -> tuple[dict[str, Any], bytes | None]:
    """The report entry and the int8 graph when it earns its place (else None)."""
    from export.onnx import to_bytes

    # A seeded sample: the list is sorted by class, and every class should shape the ranges.
    order = np.random.default_rng(0).permutation(len(calibration))[:CALIBRATION_IMAGES]
    calibration = [calibration[i] for i in sorted(order)]
    log(f"int8: calibrating static QDQ per-channel on {len(calibration)} validation images")
    int8 = to_bytes(
        quantize(
            fp32,
            calibration=calibration,
            size=size,
            resize=resize,
            resize_filter=resize_filter,
            workdir=workdir,
        )
    )
    if kernels.clips_sums():
        log(f"int8: {kernels.SLOWER}; timed with the exact kernels the runtime would use here")
    log(f"int8: comparing with fp32 on {len(test)} test images")
    result = evaluate(fp32, int8, test=test, size=size, resize=resize, resize_filter=resize_filter)
    ship, reason = decide(result["agreement"], result["speedup_batch1"], result.get("heatmap_agreement"))
    entry = {
        "decision": "shipped" if ship else "not shipped",
        "reason": reason,
        **result,
        "method": "onnxruntime quantize_static, QDQ, per-channel, u8 activations / s8 weights, min-max",
        "calibration_images": len(calibration),
        # Where agreement and speed were measured: without VNNI, onnxruntime's exact (slower) int8 kernels.
        "cpu": {"machine": platform.machine(), "vnni": kernels.cpu_has_vnni()},
        "criteria": {"min_agreement": MIN_AGREEMENT, "min_speedup_batch1": MIN_SPEEDUP},
        "file": INT8_FILE if ship else None,
    }
    return entry, int8 if ship else None
