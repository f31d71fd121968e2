"""A tiny but real bundle built with the onnx helper API, so runtime tests need no torch.

The graph is a genuine CAM model: NHWC uint8 → /255, mean/std → 1x1 conv "features" on 8x8 average-pooled
pixels → CAM [N, C, h, w] → global average → logits → /T → softmax. Class 0 answers to red, 1 to green,
2 to blue, so tests can check that the right class comes back.

    python -m tests.bundle_factory OUT_DIR   # writes a bundle you can serve with skin-serve
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from runtime import bundle

CLASS_NAMES = ["Acne", "Eczema", "Moles", "Psoriasis", "Warts"]
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
POOL = 8  # input pixels a CAM cell averages, each way


def make_model(
    *,
    class_names: list[str] | None = None,
    size: int | tuple[int, int] = 64,  # an int: square; a tuple: (height, width)
    temperature: float = 1.0,
    with_logits: bool = False,
    thresholds: dict[str, object] | None = None,
    metadata: dict[str, str] | None = None,
    meta_overrides: dict[str, object] | None = None,
    batch: int | str = "batch",
    output_batch: int | str | None = None,  # the outputs' declared batch axis; None: as ``batch``
) -> bytes:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    names = class_names or CLASS_NAMES
    c = len(names)
    weights = np.zeros((c, 3), dtype=np.float32)
    for i in range(c):
        if i < 3:
            weights[i, i] = 4.0
        else:
            weights[i] = np.random.default_rng(i).normal(0, 0.3, 3)
    inits = [
        numpy_helper.from_array(np.array(255.0, np.float32), "k255"),
        numpy_helper.from_array(np.array(MEAN, np.float32).reshape(1, 3, 1, 1), "mean"),
        numpy_helper.from_array(np.array(STD, np.float32).reshape(1, 3, 1, 1), "std"),
        numpy_helper.from_array(weights.reshape(c, 3, 1, 1), "w"),
        numpy_helper.from_array(np.array(temperature, np.float32), "temp"),
        numpy_helper.from_array(np.array([0, -1], np.int64), "flat"),
    ]
    nodes = [
        helper.make_node("Cast", ["image"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("Transpose", ["f"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Div", ["nchw", "k255"], ["x01"]),
        helper.make_node("Sub", ["x01", "mean"], ["xc"]),
        helper.make_node("Div", ["xc", "std"], ["xn"]),
        helper.make_node("AveragePool", ["xn"], ["feat"], kernel_shape=[POOL, POOL], strides=[POOL, POOL]),
        helper.make_node("Conv", ["feat", "w"], ["cam"]),
        helper.make_node("GlobalAveragePool", ["cam"], ["gap"]),
        helper.make_node("Reshape", ["gap", "flat"], ["logits"]),
        helper.make_node("Div", ["logits", "temp"], ["scaled"]),
        helper.make_node("Softmax", ["scaled"], ["probabilities"], axis=1),
    ]
    height, width = (size, size) if isinstance(size, int) else size
    out_batch = batch if output_batch is None else output_batch
    outputs = [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [out_batch, c])]
    cam_shape = [out_batch, c, height // POOL, width // POOL]
    outputs.append(helper.make_tensor_value_info("cam", TensorProto.FLOAT, cam_shape))
    if with_logits:  # as export writes it: the logits before temperature, for the out-of-distribution score
        outputs.append(helper.make_tensor_value_info("logits", TensorProto.FLOAT, [out_batch, c]))
    graph = helper.make_graph(
        nodes,
        "tiny_cam",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, [batch, height, width, 3])],
        outputs,
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="tests")
    model.ir_version = 8
    meta = bundle.BundleMeta(
        class_names=names,
        display_names=[bundle.display_name(n) for n in names],
        input_size=(height, width),
        model_name="tiny-test-model",
        model_version="0.0.1",
        architecture="tiny_cam",
        temperature=temperature,
        created="2026-01-01T00:00:00Z",
        data_fingerprint="0123456789abcdef",
        trained_on="nothing: a hand-built test graph",
        mean=MEAN,
        std=STD,
        thresholds=thresholds or {},
        # Average pooling tiles the input: cell c covers [POOL c, POOL (c + 1)), centred half a cell in.
        cam_grid={"stride": [POOL, POOL], "offset": [POOL / 2, POOL / 2]},
    )
    props = meta.to_metadata()
    for key, value in (meta_overrides or {}).items():
        props[key] = value if isinstance(value, str) else json.dumps(value)
    props.update(metadata or {})
    onnx.helper.set_model_props(model, props)
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString()


def make_report(class_names: list[str] | None = None) -> dict[str, object]:
    names = class_names or CLASS_NAMES
    report: dict[str, object] = {
        n: {"precision": 0.9, "recall": 0.8, "f1-score": 0.847, "support": 10} for n in names
    }
    avg = {"precision": 0.9, "recall": 0.8, "f1-score": 0.847, "support": 10 * len(names)}
    report.update({"accuracy": 0.8, "macro avg": dict(avg), "weighted avg": dict(avg)})
    return report


def make_bundle(directory: str | Path, *, report: bool = True, **model_kwargs: object) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / bundle.MODEL_FILE).write_bytes(make_model(**model_kwargs))  # type: ignore[arg-type]
    if report:
        names = model_kwargs.get("class_names")
        (directory / bundle.REPORT_FILE).write_text(json.dumps(make_report(names), indent=2))  # type: ignore[arg-type]
    return directory


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m tests.bundle_factory OUT_DIR")
    print(make_bundle(sys.argv[1]))
