"""The fp32 floor in the model benchmark: multiply-adds from the graph, a profiled run, the line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from benchmarks import floor
from benchmarks.model_bench import markdown
from runtime import bundle as contract
from tests.server import ROOT


def save_graph(
    path: Path,
    nodes: list[Any],
    inputs: dict[str, tuple[int, list[Any] | None]],
    outputs: dict[str, tuple[int, list[Any] | None]],
    weights: dict[str, np.ndarray] | None = None,
) -> Path:
    """An opset-17 model of ``nodes``; inputs and outputs by name: (element type, shape)."""
    import onnx
    from onnx import helper, numpy_helper

    model = helper.make_model_gen_version(  # opset 17's IR version, which onnxruntime 1.20 loads
        helper.make_graph(
            nodes,
            "g",
            [helper.make_tensor_value_info(n, t, shape) for n, (t, shape) in inputs.items()],
            [helper.make_tensor_value_info(n, t, shape) for n, (t, shape) in outputs.items()],
            [numpy_helper.from_array(w, n) for n, w in (weights or {}).items()],
        ),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    onnx.save(model, path)
    return path


def graph(path: Path, *, bundle_io: bool = False) -> Path:
    """NCHW float, dynamic batch: a 3x3 stem, a 1x1 expansion, a depthwise 3x3 with stride 2, a Gemm head.
    ``bundle_io``: a uint8 NHWC ``image`` in and ``probabilities`` out, as a bundle's graph."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    shapes = {"stem": (8, 3, 3, 3), "expand": (16, 8, 1, 1), "depthwise": (16, 1, 3, 3), "head": (10, 16)}
    weights = {n: rng.standard_normal(s, dtype=np.float32) for n, s in shapes.items()}
    weights["flat"] = np.array([0, -1], np.int64)
    nodes = [
        helper.make_node("Conv", ["x", "stem"], ["a"], pads=[1, 1, 1, 1]),  # 8x3x3x3 at 32x32
        helper.make_node("Conv", ["a", "expand"], ["b"]),  # 16x8 at 32x32
        helper.make_node("Conv", ["b", "depthwise"], ["c"], group=16, strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("GlobalAveragePool", ["c"], ["p"]),
        helper.make_node("Reshape", ["p", "flat"], ["v"]),
        helper.make_node("Gemm", ["v", "head"], ["y"], transB=1),
    ]
    float32 = TensorProto.FLOAT
    if not bundle_io:
        return save_graph(
            path, nodes, {"x": (float32, ["batch", 3, 32, 32])}, {"y": (float32, ["batch", 10])}, weights
        )
    nodes = [
        helper.make_node("Transpose", ["image"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Cast", ["nchw"], ["x"], to=float32),
        *nodes,
        helper.make_node("Softmax", ["y"], ["probabilities"], axis=1),
    ]
    inputs = {"image": (TensorProto.UINT8, ["batch", 32, 32, 3])}
    return save_graph(path, nodes, inputs, {"probabilities": (float32, ["batch", 10])}, weights)


def test_multiply_adds_are_counted_per_image_by_kind(tmp_path: Path, tiny_bundle: Path) -> None:
    assert floor.multiply_adds(graph(tmp_path / "g.onnx")) == {
        "other conv": 8 * 3 * 9 * 32 * 32,
        "1x1 conv": 16 * 8 * 32 * 32,
        "depthwise conv": 16 * 9 * 16 * 16,
        "matmul": 16 * 10,
    }
    # The tiny bundle: one 1x1 convolution from 3 channels to 5 classes on 8x8 pooled pixels.
    assert floor.multiply_adds(tiny_bundle / contract.MODEL_FILE) == {"1x1 conv": 5 * 3 * 8 * 8}


def test_a_graph_whose_shapes_cannot_be_inferred_is_refused(tmp_path: Path) -> None:
    from onnx import TensorProto, helper

    # A 1x1 convolution whose weights come in as an input of unknown shape.
    model = save_graph(
        tmp_path / "g.onnx",
        [helper.make_node("Conv", ["x", "w"], ["y"])],
        {"x": (TensorProto.FLOAT, [1, 3, 8, 8]), "w": (TensorProto.FLOAT, ["o", "i", "k", "k"])},
        {"y": (TensorProto.FLOAT, None)},
    )
    with pytest.raises(contract.BundleError, match="multiply-adds unknown"):
        floor.multiply_adds(model)


def test_the_floor_is_the_multiply_adds_at_the_measured_peak(tiny_bundle: Path) -> None:
    image = np.zeros((1, 64, 64, 3), np.uint8)
    found = floor.measure(tiny_bundle / contract.MODEL_FILE, image, threads=1)
    assert found["total_multiply_adds"] == 960
    assert found["gemm_peak_gflops"] > 0
    assert found["floor_ms"] == pytest.approx(2 * 960 / found["gemm_peak_gflops"] / 1e6, abs=0.01)
    ops = found["profiled_ms_by_op"]
    assert {"Conv", "Softmax"} <= set(ops) and all(ms >= 0 for ms in ops.values())
    assert list(ops.values()) == sorted(ops.values(), reverse=True)
    assert found["conv_ms"] == pytest.approx(ops["Conv"], abs=0.01)
    assert list(found["conv_by_kind"]) == ["1x1 conv"]


def test_a_floor_that_rounds_to_zero_gets_no_ratio(tiny_bundle: Path) -> None:
    # 960 multiply-adds: 0.00 ms at any speed; model_bench wrote nothing, a ZeroDivisionError after minutes.
    found = floor.measure(tiny_bundle / contract.MODEL_FILE, np.zeros((1, 64, 64, 3), np.uint8), threads=1)
    assert found["floor_ms"] == 0
    line = floor.markdown(found, 0.05)
    assert "takes 0.0 ms. A profiled" in line and "the floor" not in line


def test_the_profiled_convolutions_are_split_by_kind(tmp_path: Path) -> None:
    model = graph(tmp_path / "g.onnx", bundle_io=True)
    found = floor.measure(model, np.zeros((1, 32, 32, 3), np.uint8), threads=1)
    by_kind, macs = found["conv_by_kind"], found["multiply_adds"]
    assert set(by_kind) == {"other conv", "1x1 conv", "depthwise conv"}
    assert sum(k["ms"] for k in by_kind.values()) == pytest.approx(found["conv_ms"], abs=0.01)
    for kind, spent in by_kind.items():
        assert spent["gflops"] == pytest.approx(2 * macs[kind] / spent["ms"] / 1e6, rel=0.01, abs=0.1)
    line = floor.markdown(found, None)
    assert "depthwise conv " in line.split("the convolutions reach")[1]


def test_the_profile_leaves_out_the_warm_up_runs(tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    profiles: list[list[dict[str, Any]]] = []
    read = json.loads

    def keep(text: str) -> Any:
        profiles.append(read(text))
        return profiles[-1]

    monkeypatch.setattr(floor.json, "loads", keep)
    image = np.zeros((1, 64, 64, 3), np.uint8)
    ops, kinds = floor.op_time_ms(tiny_bundle / contract.MODEL_FILE, image, threads=1, runs=4, warmup=3)
    (events,) = profiles
    convs = sorted(
        (e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")),
        key=lambda e: e["ts"],
    )
    convs = [e for e in convs if e["args"]["op_name"] == "Conv"]
    assert len([e for e in events if e.get("name") == "model_run"]) == len(convs) == 7
    assert ops["Conv"] == pytest.approx(sum(e["dur"] for e in convs[3:]) / 4 / 1000, abs=0.001)
    assert kinds == {"1x1 conv": ops["Conv"]}


def test_the_floor_line_in_model_md() -> None:
    summary = json.loads((ROOT / "benchmarks/results/amd-avx2/model.json").read_text())
    assert "floor" not in summary and "Floor" not in markdown(summary)  # written before the floor
    summary["floor"] = {
        "threads": 2,
        "multiply_adds": {"depthwise conv": 133_000_000, "1x1 conv": 1_671_000_000, "matmul": 33_792},
        "total_multiply_adds": 1_804_033_792,
        "gemm_peak_gflops": 180.4,
        "floor_ms": 20.0,
        "profiled_ms_by_op": {"Conv": 25.0, "QuickGelu": 6.5, "Mul": 1.5, "Softmax": 0.01},
        "profiled_run_ms": 33.01,
        "conv_ms": 25.0,
        "conv_gflops": 144.3,
        "conv_share_of_peak": 0.8,
        "conv_by_kind": {
            "1x1 conv": {"ms": 21.0, "gflops": 159.2},
            "depthwise conv": {"ms": 4.0, "gflops": 66.5},
        },
    }
    summary["paths"]["onnxruntime fp32"]["batch1_ms"] = 38.0
    lines = [line for line in markdown(summary).splitlines() if line.startswith("Floor")]
    assert lines == [
        "Floor (fp32, 2 threads): the model is 1.80 G multiply-adds per image (1x1 conv 1.67 G, depthwise "
        "conv 0.13 G). This CPU multiplies fp32 matrices at 180 GFLOP/s through onnxruntime: at that speed "
        "the arithmetic alone takes 20.0 ms; onnxruntime fp32 took 38.0 ms at batch 1 above, 1.9× the floor. "
        "A profiled onnxruntime fp32 run, 33.0 ms by op type: Conv 25.0, QuickGelu 6.5, Mul 1.5 ms; the "
        "convolutions reach 144 GFLOP/s, 80% of the peak (1x1 conv 21.0 ms at 159 GFLOP/s, 88%; depthwise "
        "conv 4.0 ms at 66 GFLOP/s, 37%)."
    ]


def test_a_graph_without_convolutions_and_a_floor_not_measured(tmp_path: Path) -> None:
    from onnx import TensorProto, helper

    # probabilities = softmax(image · w): a matrix product and no convolution.
    nodes = [
        helper.make_node("Cast", ["image"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("Reshape", ["f", "flat"], ["v"]),
        helper.make_node("MatMul", ["v", "w"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    save_graph(
        tmp_path / "g.onnx",
        nodes,
        {"image": (TensorProto.UINT8, ["batch", 2, 2, 3])},
        {"probabilities": (TensorProto.FLOAT, ["batch", 4])},
        {"w": np.ones((12, 4), np.float32), "flat": np.array([0, -1], np.int64)},
    )
    found = floor.measure(tmp_path / "g.onnx", np.zeros((1, 2, 2, 3), np.uint8), threads=1)
    assert found["multiply_adds"] == {"matmul": 12 * 4}
    assert found["conv_ms"] == 0 and found["conv_gflops"] is None
    line = floor.markdown(found, None)
    assert "0.00 G multiply-adds per image. " in line
    assert "convolutions reach" not in line and "took" not in line
    assert line.endswith(" ms.")
    assert floor.markdown({"error": "BundleError: x"}, 30.0) == "Floor: not measured (BundleError: x)."


def test_the_floor_alone_from_the_command_line(tiny_bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # `python -m benchmarks.floor` ran nothing and exited 0: floor.py had no main.
    assert floor.main(["--bundle", str(tiny_bundle), "--threads", "1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("Floor (fp32, 1 thread): the model is ") and "GFLOP/s" in out[0]
    assert out[1].startswith("Load average (1 min) ") and out[1].endswith(" cores.")


def test_the_floor_refuses_a_folder_without_a_model_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert floor.main(["--bundle", str(tmp_path)]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"benchmarks.floor: --bundle {tmp_path}: no model.onnx there"
    ]
