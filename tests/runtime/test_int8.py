"""int8 graphs are computed exactly on any CPU; `auto` serves them only where fast (runtime/int8.py)."""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from pathlib import Path
from typing import BinaryIO

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from starlette.testclient import TestClient

from runtime import bundle, cpuflags, int8
from runtime.app import create_app
from runtime.engine import Engine, session_options
from runtime.settings import Settings
from tests.bundle_factory import make_bundle
from tests.images import solid


def _conv_graph(weights: np.ndarray, out_scale: float) -> bytes:
    """One QLinearConv (1x1, uint8 activations with scale 1 and zero point 0, int8 weights with scale 1)."""
    k, c = weights.shape[:2]
    constants: dict[str, np.ndarray] = {
        "xs": np.array(1.0, np.float32),
        "xz": np.array(0, np.uint8),
        "w": weights,
        "ws": np.ones(k, np.float32),
        "wz": np.zeros(k, np.int8),
        "ys": np.array(out_scale, np.float32),
        "yz": np.array(128, np.uint8),
    }
    graph = helper.make_graph(
        [helper.make_node("QLinearConv", ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz"], ["y"])],
        "conv",
        [helper.make_tensor_value_info("x", TensorProto.UINT8, [1, c, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.UINT8, None)],
        [numpy_helper.from_array(v, name) for name, v in constants.items()],
    )
    # opset 17's IR version: onnxruntime 1.20, the runtime's floor, refuses newer onnx's own (IR 11 and up)
    model = helper.make_model_gen_version(graph, opset_imports=[helper.make_opsetid("", 17)])
    return model.SerializeToString()


def _conv_case() -> tuple[bytes, np.ndarray, np.ndarray]:
    """The graph, an input, and the exact output. Bright pixels times weights near +-127: each pair of
    products passes 32767, which the fast kernels of an x86 CPU without VNNI clip."""
    rng = np.random.default_rng(0)
    weights = rng.choice(np.array([-128, -127, 126, 127], np.int8), size=(32, 64, 1, 1))
    x = rng.integers(200, 256, size=(1, 64, 8, 8), dtype=np.uint8)
    total = np.einsum("kc,nchw->nkhw", weights[:, :, 0, 0].astype(np.int64), x.astype(np.int64))
    scale = 4096.0  # a power of two: the requantized output is exact, whatever order the kernel sums in
    assert not np.any(total % 4096 == 2048)  # and no halves, which kernels may round either way
    exact = np.clip(np.rint(total / scale) + 128, 0, 255).astype(np.uint8)
    return _conv_graph(weights, scale), x, exact


def _conv(options: ort.SessionOptions) -> np.ndarray:
    graph, x, _ = _conv_case()
    return ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_int8_convolution_is_exact_on_this_cpu() -> None:
    # as the runtime, export and the model benchmark set up onnxruntime
    assert np.array_equal(_conv(session_options(threads=1)), _conv_case()[2])


@pytest.mark.skipif(int8.clips_sums() is not True, reason="only an x86 CPU without VNNI clips")
def test_this_cpu_clips_without_the_option() -> None:
    clipped = _conv(session_options(threads=1, exact_int8=False)).astype(int) - _conv_case()[2]
    assert np.abs(clipped).max() > 10  # 62 output levels of 256 on an AVX2 CPU


@pytest.mark.parametrize(
    ("machine", "vnni", "clips"),
    [
        pytest.param("x86_64", False, True, id="x86-without-vnni"),
        pytest.param("x86_64", True, False, id="x86-with-vnni"),
        pytest.param("x86_64", None, None, id="x86-unknown"),
        pytest.param("aarch64", False, False, id="arm"),
    ],
)
def test_which_cpus_clip(
    monkeypatch: pytest.MonkeyPatch, machine: str, vnni: bool | None, clips: bool | None
) -> None:
    monkeypatch.setattr(int8.platform, "machine", lambda: machine)
    monkeypatch.setattr(int8, "cpu_has_vnni", lambda: vnni)
    assert int8.clips_sums() is clips
    try:
        asked = session_options(threads=1).get_session_config_entry(int8.PRECISION_OPTION) == "1"
    except RuntimeError:  # onnxruntime: no such entry
        asked = False
    assert asked is (clips is not False)  # exact kernels unless this CPU's fast ones are known to be exact


def _with_int8(root: Path) -> Path:
    make_bundle(root)
    (root / bundle.INT8_MODEL_FILE).write_bytes((root / bundle.MODEL_FILE).read_bytes())
    return root


@pytest.mark.parametrize(
    ("clips", "variant", "served", "note"),
    [
        pytest.param(False, "auto", bundle.INT8_MODEL_FILE, None, id="vnni-auto"),
        pytest.param(True, "auto", bundle.MODEL_FILE, "fp32, not the bundle's int8 graph", id="no-vnni-auto"),
        pytest.param(True, "int8", bundle.INT8_MODEL_FILE, "int8 served as asked", id="no-vnni-int8"),
        pytest.param(True, "fp32", bundle.MODEL_FILE, None, id="no-vnni-fp32"),
        pytest.param(None, "auto", bundle.INT8_MODEL_FILE, None, id="unknown-auto"),
    ],
)
def test_auto_serves_int8_only_where_it_is_fast(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    clips: bool | None,
    variant: str,
    served: str,
    note: str | None,
) -> None:
    monkeypatch.setattr(int8, "clips_sums", lambda: clips)
    engine = Engine(_with_int8(tmp_path), threads=1, variant=variant)
    assert engine.model_file == served and engine.info()["model_file"] == served
    said = engine.info()["onnxruntime"]["int8"]
    assert said == engine.int8_note and (said is None if note is None else said.startswith(note)), said


@pytest.mark.parametrize(
    ("entry", "stale"),
    [
        pytest.param(
            {"decision": "not shipped", "file": None}, "did not ship one", id="report-says-not-shipped"
        ),
        pytest.param({"decision": "shipped", "sha256": "0" * 64}, "records another one", id="sha-mismatch"),
        pytest.param({"decision": "shipped", "sha256": None}, None, id="this-one"),
        pytest.param(None, None, id="report-without-int8"),
    ],
)
def test_an_int8_graph_left_from_another_export_is_not_served(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, entry: dict[str, object] | None, stale: str | None
) -> None:
    # a new model.onnx and report.json copied over an old bundle that had model.int8.onnx
    monkeypatch.setattr(int8, "clips_sums", lambda: False)  # a CPU with VNNI: auto would serve int8
    root = _with_int8(tmp_path)
    report = json.loads((root / bundle.REPORT_FILE).read_text())
    if entry is not None:
        report["int8"] = {
            **entry,
            "sha256": entry.get("sha256") or bundle.sha256_file(root / bundle.INT8_MODEL_FILE),
        }
    (root / bundle.REPORT_FILE).write_text(json.dumps(report))
    engine = Engine(root, threads=1)
    assert engine.model_file == (bundle.INT8_MODEL_FILE if stale is None else bundle.MODEL_FILE)
    assert (engine.int8_note is None) if stale is None else (stale in (engine.int8_note or ""))
    monkeypatch.setenv("SKIN_OPENVINO", "auto")  # what auto says onnxruntime serves instead agrees
    said = Settings.from_env(bundle=str(root)).openvino_auto
    assert said.startswith("onnxruntime fp32" if stale else "onnxruntime int8"), said
    if stale is None:
        return
    with pytest.raises(bundle.BundleError, match=f"model.int8.onnx is not this model's: .*{stale}"):
        Engine(root, threads=1, variant="int8")  # asked for by name: refused in one line


@pytest.mark.parametrize("auto", [pytest.param(False, id="engine"), pytest.param(True, id="openvino-auto")])
def test_start_up_reads_each_graph_once_for_its_digest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, auto: bool
) -> None:
    # int8.stale() hashed model.int8.onnx and the engine hashed it again for /api/info; SKIN_OPENVINO=auto
    # hashed it a third time before the engine was built (and model.onnx, with OpenVINO and bf16 units).
    monkeypatch.setattr(int8, "clips_sums", lambda: False)  # auto serves int8
    root = _with_int8(tmp_path)
    report = json.loads((root / bundle.REPORT_FILE).read_text())
    report["int8"] = {"decision": "shipped", "sha256": bundle.sha256_file(root / bundle.INT8_MODEL_FILE)}
    (root / bundle.REPORT_FILE).write_text(json.dumps(report))
    read: Counter[str] = Counter()
    real = bundle._sha256

    def counted(fh: BinaryIO) -> str:
        read[Path(fh.name).name] += 1
        return real(fh)

    monkeypatch.setattr(bundle, "_sha256", counted)
    if auto:
        monkeypatch.setenv("SKIN_OPENVINO", "auto")
        engine = Engine.from_settings(Settings.from_env(bundle=str(root), single_process=True))
    else:
        engine = Engine(root, threads=1)
    assert engine.model_file == bundle.INT8_MODEL_FILE
    assert engine.sha256 == report["int8"]["sha256"]
    assert read[bundle.INT8_MODEL_FILE] == 1 and max(read.values()) == 1, read
    # A graph replaced since is read again: the digest is of the file served, never of the one before.
    new = (root / bundle.MODEL_FILE).read_bytes() + b"\0"
    (root / "new.onnx").write_bytes(new)
    os.replace(root / "new.onnx", root / bundle.INT8_MODEL_FILE)
    assert bundle.model_sha256(root / bundle.INT8_MODEL_FILE) == hashlib.sha256(new).hexdigest()
    assert read[bundle.INT8_MODEL_FILE] == 2


@pytest.mark.parametrize(("variant", "level"), [("auto", "INFO"), ("int8", "WARNING")])
def test_start_up_says_why(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    runtime_log: pytest.LogCaptureFixture,
    variant: str,
    level: str,
) -> None:
    monkeypatch.setattr(int8, "clips_sums", lambda: True)
    settings = Settings(bundle=str(_with_int8(tmp_path)), threads=1, model_variant=variant)
    with TestClient(create_app(settings)) as client:
        red = {"file": ("red.png", solid("red", fmt="PNG"), "image/png")}
        answer = client.post("/api/predict", files=red)
        note = client.get("/api/info").json()["onnxruntime"]["int8"]
    assert answer.status_code == 200 and answer.json()["primary"]["label"] == "Acne"
    said = [r for r in runtime_log.records if r.getMessage().startswith("SKIN_MODEL_VARIANT: ")]
    assert [(r.levelname, r.getMessage()) for r in said] == [(level, f"SKIN_MODEL_VARIANT: {note}")]


@pytest.mark.parametrize(
    ("words", "vnni"),
    [
        pytest.param({"avx2", "avx512f", "avx512_vnni"}, True, id="avx512-vnni"),
        pytest.param({"avx2", "avx_vnni"}, True, id="avx-vnni"),
        pytest.param({"avx2", "amx_int8"}, True, id="amx"),
        pytest.param({"avx2", "avx512f", "avx512_bf16"}, False, id="no-vnni"),
        pytest.param(None, None, id="cpuinfo-unreadable"),
    ],
)
def test_vnni_from_the_cpu_flags(
    monkeypatch: pytest.MonkeyPatch, words: set[str] | None, vnni: bool | None
) -> None:
    monkeypatch.setattr(cpuflags, "_words", lambda: None if words is None else frozenset(words))
    assert int8.cpu_has_vnni() is vnni


def test_machine_names_are_matched_in_any_case(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(int8.platform, "machine", lambda: "AMD64")  # Windows spells it so
    monkeypatch.setattr(int8, "cpu_has_vnni", lambda: False)
    assert int8.clips_sums() is True


@pytest.mark.parametrize("error", [FileNotFoundError, PermissionError])
def test_unreadable_cpuinfo_tells_nothing(monkeypatch: pytest.MonkeyPatch, error: type[OSError]) -> None:
    class Unreadable:
        def __init__(self, path: str) -> None:
            pass

        def read_text(self) -> str:
            raise error("/proc/cpuinfo")

    monkeypatch.setattr(cpuflags, "Path", Unreadable)
    assert cpuflags._words.__wrapped__() is None  # the uncached function: the cache holds this machine's
    monkeypatch.setattr(cpuflags, "_words", lambda: None)
    assert cpuflags.any_of({"avx2"}) is None and int8.cpu_has_vnni() is None
