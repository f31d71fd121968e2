"""The int8 decision around the measurement: what try_int8 ships and records, and how evaluate measures."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from export import infer, quantize
from runtime import bundle


def _graph() -> Any:
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


@pytest.mark.parametrize(
    ("agreement", "speedup", "heatmaps", "ship"),
    [
        (1.0, 1.5, 1.0, True),
        (0.98, 2.0, 1.0, False),
        (1.0, 1.0, 1.0, False),
        pytest.param(1.0, 1.5, 0.98, False, id="another-heatmap-on-2-percent"),
        pytest.param(1.0, 1.5, None, True, id="a-graph-without-heatmap"),
        pytest.param(0.99, 1.1, 0.99, True, id="at-every-bound"),  # README: >= 99 % and >= 1.1x ship
    ],
)
def test_try_int8_hands_back_the_graph_only_when_it_ships(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    agreement: float,
    speedup: float,
    heatmaps: float | None,
    ship: bool,
) -> None:
    seen: dict[str, Any] = {}

    def fake_quantize(fp32: bytes, **kwargs: Any) -> Any:
        seen.update(kwargs)
        return _graph()

    def fake_evaluate(fp32: bytes, int8: bytes, **kwargs: Any) -> dict[str, Any]:
        result = {"agreement": agreement, "n_test": 3, "latency": {}, "speedup_batch1": speedup}
        return result if heatmaps is None else {**result, "heatmap_agreement": heatmaps}

    monkeypatch.setattr(quantize, "quantize", fake_quantize)
    monkeypatch.setattr(quantize, "evaluate", fake_evaluate)
    calibration = [tmp_path / f"{i:03d}.png" for i in range(300)]
    entry, graph = quantize.try_int8(
        b"fp32", calibration=calibration, test=calibration[:3], size=(8, 8), resize="stretch",
        resize_filter="bilinear", workdir=tmp_path,
    )  # fmt: skip
    assert entry["decision"] == ("shipped" if ship else "not shipped")
    assert entry["file"] == (quantize.INT8_FILE if ship else None)
    assert (graph is not None) is ship
    assert entry["agreement"] == agreement and entry["speedup_batch1"] == speedup
    assert entry.get("heatmap_agreement") == heatmaps
    if heatmaps is not None and heatmaps < quantize.MIN_AGREEMENT:
        assert entry["reason"] == f"heatmap agreement {heatmaps:.4f} is below {quantize.MIN_AGREEMENT}"
    # A seeded sample of distinct images, in their original order.
    chosen = seen["calibration"]
    assert entry["calibration_images"] == len(chosen) == quantize.CALIBRATION_IMAGES
    assert chosen == sorted(set(chosen)) and set(chosen) <= set(calibration)


def test_evaluate_speedup_is_fp32_time_over_int8_time(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    class Session:
        def __init__(self, model: bytes) -> None:
            self.model = model

        def get_inputs(self) -> list[Any]:
            return [SimpleNamespace(name=bundle.INPUT_NAME)]

        def get_outputs(self) -> list[Any]:
            return [SimpleNamespace(name=bundle.PROBS_OUTPUT), SimpleNamespace(name=bundle.CAM_OUTPUT)]

        def run(self, outputs: list[str], feed: dict[str, np.ndarray]) -> list[np.ndarray]:
            n = len(feed[bundle.INPUT_NAME])
            probs = np.tile([0.7, 0.3], (n, 1))
            cam = np.tile(np.eye(2), (n, 2, 1, 1))  # [n, 2 classes, 2, 2]
            if self.model == b"int8":
                probs[0] = [0.3, 0.7]  # the first image of every batch disagrees
                cam[1, 0] = np.fliplr(np.eye(2))  # the second one's heatmap of class 0 is another
            results = {bundle.PROBS_OUTPUT: probs, bundle.CAM_OUTPUT: cam}
            return [results[name] for name in outputs]

    monkeypatch.setattr(infer, "session", Session)
    decoded: list[Path] = []

    def readable(files: list[Path], *a: Any) -> tuple[np.ndarray, list[int]]:
        decoded.extend(files)
        return np.zeros((len(files), 2, 2, 3), np.uint8), list(range(len(files)))

    monkeypatch.setattr(infer, "readable", readable)
    monkeypatch.setattr(infer, "pixels", lambda files, *a: np.zeros((len(files), 2, 2, 3), np.uint8))
    monkeypatch.setattr(infer, "latency_ms", lambda sess, x, **kw: 10.0 if sess.model == b"fp32" else 4.0)
    test = [tmp_path / f"{i}.png" for i in range(20)]  # two batches of infer.BATCH (16) and 4
    result = quantize.evaluate(
        b"fp32", b"int8", test=test, size=(2, 2), resize="stretch", resize_filter="bilinear"
    )
    assert decoded == test  # once for both graphs: decoding it per graph was a third of a tiny model's export
    assert result["n_test"] == 20
    assert result["agreement"] == pytest.approx(18 / 20)
    assert result["heatmap_agreement"] == pytest.approx(18 / 20) and result["heatmap_max_diff"] == 1.0
    assert result["speedup_batch1"] == 2.5
    assert result["latency"]["int8"] == {"batch1_ms": 4.0, "batch8_ms": 4.0}


def test_quantized_graph_keeps_the_metadata_and_quantizes_weights_per_channel(tmp_path: Path) -> None:
    import onnx
    from onnx import numpy_helper

    from tests.bundle_factory import make_bundle

    fp32 = onnx.load(make_bundle(tmp_path / "b") / bundle.MODEL_FILE)
    model = _quantize(fp32, tmp_path, np.random.default_rng(0))
    assert [(p.key, p.value) for p in model.metadata_props] == [(p.key, p.value) for p in fp32.metadata_props]
    nodes = list(model.graph.node)
    (conv,) = [n for n in nodes if n.op_type == "Conv"]
    (weight,) = [n for n in nodes if n.op_type == "DequantizeLinear" and n.output[0] == conv.input[1]]
    scales = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}[weight.input[1]]
    assert scales.size == conv_out_channels(model, conv) > 1  # one scale per output channel


def conv_out_channels(model: Any, conv: Any) -> int:
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    (quantizer,) = [n for n in model.graph.node if n.output[0] == conv.input[1]]
    return int(numpy_helper.to_array(inits[quantizer.input[0]]).shape[0])


def test_the_softmax_and_the_ood_score_stay_float(tmp_path: Path) -> None:
    import onnx

    from export.onnx import add_mahalanobis
    from tests.bundle_factory import make_bundle

    fp32 = onnx.load(make_bundle(tmp_path / "b", with_logits=True, temperature=2.0) / bundle.MODEL_FILE)
    for opset in fp32.opset_import:
        if opset.domain in ("", "ai.onnx"):
            opset.version = 18  # what export writes; the score's ReduceMin takes its axes as an input
    for node in fp32.graph.node:
        if node.op_type == "Softmax":  # as export names the temperature step
            node.name = "skin_softmax"
        elif node.op_type == "Div" and bundle.LOGITS_OUTPUT in node.input:
            node.name = "skin_temperature_div"
    classes = fp32.graph.output[0].type.tensor_type.shape.dim[1].dim_value
    rng = np.random.default_rng(0)
    scored = add_mahalanobis(fp32, bundle.LOGITS_OUTPUT, rng.normal(size=(classes, classes)), np.eye(classes))
    model = _quantize(scored, tmp_path, rng)
    producers = {o: n for n in model.graph.node for o in n.output}
    softmax = producers[bundle.PROBS_OUTPUT]
    assert softmax.op_type == "Softmax"
    assert producers[softmax.input[0]].name == "skin_temperature_div"  # no quantize step between the two
    assert producers[bundle.OOD_OUTPUT].op_type == "ReduceMin"
    (whiten,) = [n for n in model.graph.node if n.name == "skin_ood_whiten"]
    assert whiten.input[1] == "skin_ood_whitening"  # the float initializer, not a dequantized copy


def _quantize(graph: Any, tmp_path: Path, rng: np.random.Generator) -> Any:
    """The graph through the exporter's int8 step, calibrated on four random images."""
    from PIL import Image

    images = []
    for i in range(4):
        path = tmp_path / f"{i}.png"
        Image.fromarray(rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)).save(path)
        images.append(path)
    size = next(tuple(json.loads(m.value)) for m in graph.metadata_props if m.key == "skin.input_size")
    (tmp_path / "work").mkdir()
    return quantize.quantize(
        graph.SerializeToString(), calibration=images, size=size, resize="stretch",
        resize_filter="bilinear", workdir=tmp_path / "work",
    )  # fmt: skip
