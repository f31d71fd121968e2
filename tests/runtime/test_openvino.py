"""SKIN_OPENVINO: the same graph on OpenVINO's CPU plugin (runtime/openvino_session.py).

Tests that need OpenVINO run where `make test` installs the `openvino` extra (x86-64): tests/openvino.py."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import re
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from starlette.testclient import TestClient

from runtime import bf16, bundle, int8
from runtime.app import create_app
from runtime.engine import Engine
from runtime.settings import Settings
from tests.bundle_factory import CLASS_NAMES, make_bundle
from tests.images import solid
from tests.openvino import needs_openvino
from tests.server import ROOT, server_output, start_server, stop_server


def _images() -> np.ndarray:
    """Red, green, blue and a noise image: the tiny bundle answers Acne, Eczema, Moles to the first three."""
    x = np.zeros((4, 64, 64, 3), dtype=np.uint8)
    for i in range(3):
        x[i, ..., i] = 230
    x[3] = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    return x


@needs_openvino
@pytest.mark.parametrize(("precision", "tolerance"), [("f32", 1e-5), ("bf16", 3e-2)])
def test_openvino_serves_the_same_answers(tiny_bundle: Path, precision: str, tolerance: float) -> None:
    cpu = Engine(tiny_bundle, threads=1)
    engine = Engine(tiny_bundle, threads=1, openvino=precision)
    assert engine.providers == ["OpenVINO CPU"]
    assert engine.info()["onnxruntime"]["openvino"] == precision
    x = _images()
    got, want = engine.run(x), cpu.run(x)
    assert got.probabilities.shape == want.probabilities.shape == (4, len(CLASS_NAMES))
    np.testing.assert_allclose(got.probabilities.sum(axis=1), 1.0, atol=1e-3)
    np.testing.assert_allclose(got.probabilities, want.probabilities, atol=tolerance)
    if precision == "bf16" and bf16.cpu_has_bf16():  # bf16 really ran: not the f32 numbers
        assert not np.array_equal(got.probabilities, want.probabilities)
    assert [CLASS_NAMES[i] for i in got.probabilities[:3].argmax(axis=1)] == ["Acne", "Eczema", "Moles"]
    assert got.cam is not None and want.cam is not None and got.cam.shape == want.cam.shape
    # one image, then a batch of another size: the compiled model keeps the dynamic batch dimension
    assert engine.run(x[:1]).probabilities.shape == (1, len(CLASS_NAMES))
    assert engine.run(x[:3]).probabilities.shape == (3, len(CLASS_NAMES))


@needs_openvino
def test_openvino_over_http(tiny_bundle: Path) -> None:
    settings = Settings(bundle=str(tiny_bundle), threads=1, openvino="bf16")
    with TestClient(create_app(settings)) as client:
        info = client.get("/api/info").json()
        assert info["onnxruntime"]["openvino"] == "bf16"
        assert info["onnxruntime"]["auto"] is None  # named, not chosen
        assert info["onnxruntime"]["providers"] == ["OpenVINO CPU"]
        answer = client.post(
            "/api/predict", files={"file": ("red.png", solid("red", fmt="PNG"), "image/png")}
        )
        assert answer.status_code == 200 and answer.json()["primary"]["label"] == "Acne"


def test_missing_openvino_is_one_line(tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)  # import fails as if not installed
    with pytest.raises(bundle.BundleError, match=r"pip install 'skinlesion\[openvino\]'"):
        Engine(tiny_bundle, threads=1, openvino="bf16")


def test_openvino_and_providers_together_are_refused(tiny_bundle: Path) -> None:
    with pytest.raises(bundle.BundleError, match="not both"):
        Engine(tiny_bundle, threads=1, openvino="bf16", providers=("CPUExecutionProvider", "XnnpackProvider"))


@pytest.mark.parametrize(("value", "mode"), [("off", "off"), ("BF16", "bf16"), (" f32 ", "f32")])
def test_setting_parsed(monkeypatch: pytest.MonkeyPatch, value: str, mode: str) -> None:
    monkeypatch.setenv("SKIN_OPENVINO", value)
    assert Settings.from_env().openvino == mode


def test_bad_setting_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SKIN_OPENVINO", "fp16")
    with pytest.raises(ValueError, match="SKIN_OPENVINO must be one of off, f32, bf16, auto"):
        Settings.from_env()


@needs_openvino
@pytest.mark.parametrize(
    ("entry", "warning"),
    [
        pytest.param(None, "did not measure", id="old-bundle"),
        pytest.param({"measured": False, "reason": "no plugin"}, "did not measure", id="not-measured"),
        pytest.param(
            {"measured": True, "safe": False, "agreement": 0.9727, "min_agreement": 0.99},
            r"\(top-1 0.9727; see report",
            id="unsafe",
        ),
        pytest.param(
            {"measured": True, "safe": False, "flag_agreement": ["not", "a dict"]},
            r"on this model \(see report",
            id="hand-edited",
        ),
        pytest.param(
            {
                "measured": True,
                "safe": False,
                "agreement": 0.995,
                "flag_agreement": {"confidence": 0.98, "in_distribution": 1.0},
                "min_agreement": 0.99,
            },
            r"\(confidence 0.9800; see report",
            id="unsafe-flags",
        ),
        pytest.param(
            {"measured": True, "safe": True, "agreement": 0.998, "min_agreement": 0.99}, None, id="safe"
        ),
    ],
)
def test_bf16_served_with_what_export_measured(
    tmp_path: Path, entry: dict[str, object] | None, warning: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bf16, "cpu_has_bf16", lambda: True)
    make_bundle(tmp_path)
    report = json.loads((tmp_path / bundle.REPORT_FILE).read_text())
    if entry is not None:
        report["openvino_bf16"] = entry
    (tmp_path / bundle.REPORT_FILE).write_text(json.dumps(report))
    engine = Engine(tmp_path, threads=1, openvino="bf16")
    assert engine.info()["onnxruntime"]["bf16_check"] == entry
    got = engine.bf16_warning()
    assert (got is None) if warning is None else (got is not None and re.search(warning, got)), got
    # fp32 and OpenVINO f32 serve the graph's own precision: nothing to warn about
    assert Engine(tmp_path, threads=1, openvino="f32").bf16_warning() is None
    assert Engine(tmp_path, threads=1).info()["onnxruntime"]["bf16_check"] is None


SAFE = {"measured": True, "safe": True, "agreement": 0.998, "speedup_batch1": 1.54, "min_agreement": 0.99}


def _bundle_with_bf16_check(directory: Path, entry: dict[str, object] | None) -> Path:
    make_bundle(directory)
    report = json.loads((directory / bundle.REPORT_FILE).read_text())
    report.pop(bf16.REPORT_KEY, None)
    if entry is not None:
        report[bf16.REPORT_KEY] = entry
    (directory / bundle.REPORT_FILE).write_text(json.dumps(report))
    return directory


@pytest.mark.parametrize(
    ("entry", "cpu", "installed", "mode", "why"),
    [
        pytest.param(SAFE, True, True, "bf16", r"agreement 0.9980 .*1.54x fp32's speed", id="safe"),
        pytest.param(SAFE, False, True, "off", "no AVX-512 BF16 or AMX", id="no-bf16-units"),
        pytest.param(SAFE, None, True, "off", "no AVX-512 BF16 or AMX", id="cpu-unknown"),
        pytest.param(SAFE, True, False, "off", "openvino extra is not installed", id="not-installed"),
        pytest.param(None, True, True, "off", "did not measure", id="not-measured"),
        pytest.param(
            {"measured": True, "safe": False, "agreement": 0.9727},
            True,
            True,
            "off",
            "top-1 0.9727",
            id="unsafe",
        ),
        pytest.param(  # top-1 the same, but another heatmap on 5 % of the test images
            {"measured": True, "safe": False, "agreement": 1.0, "heatmap_agreement": 0.95},
            True,
            True,
            "off",
            "heatmap 0.9500",
            id="unsafe-heatmap",
        ),
    ],
)
def test_auto_serves_bf16_only_where_export_measured_it_safe(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    entry: dict[str, object] | None,
    cpu: bool | None,
    installed: bool,
    mode: str,
    why: str,
) -> None:
    import importlib.util

    real, found = importlib.util.find_spec, object() if installed else None
    monkeypatch.setattr(  # as if installed or not, whatever this machine has
        importlib.util, "find_spec", lambda name, *a: found if name == "openvino" else real(name, *a)
    )
    monkeypatch.setattr(bf16, "cpu_has_bf16", lambda: cpu)
    monkeypatch.setenv("SKIN_OPENVINO", "auto")
    monkeypatch.setenv("SKIN_BUNDLE", str(tmp_path / "elsewhere"))
    chosen = Settings.from_env(bundle=str(_bundle_with_bf16_check(tmp_path / "model", entry)))
    assert chosen.openvino == mode and re.search(why, chosen.openvino_auto), chosen.openvino_auto
    # the defaults follow what was chosen, as if it had been asked for by name
    assert (chosen.inference_concurrency, chosen.spinning) == ((1, True) if mode == "bf16" else (2, False))
    monkeypatch.setenv("SKIN_INFERENCE_CONCURRENCY", "3")
    assert Settings.from_env(bundle=str(tmp_path / "model")).inference_concurrency == 3


@pytest.mark.parametrize(
    ("vnni", "variant", "said", "served"),
    [
        pytest.param(True, "auto", "onnxruntime int8, not bf16", bundle.INT8_MODEL_FILE, id="vnni-auto-int8"),
        pytest.param(False, "auto", "onnxruntime fp32, not bf16", bundle.MODEL_FILE, id="no-vnni-auto-fp32"),
        pytest.param(False, "fp32", "onnxruntime fp32, not bf16", bundle.MODEL_FILE, id="fp32-asked"),
        pytest.param(False, "int8", "onnxruntime int8, not bf16", bundle.INT8_MODEL_FILE, id="int8-asked"),
    ],
)
def test_auto_names_the_graph_onnxruntime_serves_instead(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, vnni: bool, variant: str, said: str, served: str
) -> None:
    directory = _bundle_with_bf16_check(tmp_path, SAFE)
    (directory / bundle.INT8_MODEL_FILE).write_bytes((directory / bundle.MODEL_FILE).read_bytes())
    monkeypatch.setattr(int8, "clips_sums", lambda: not vnni)
    # a CPU where auto would take bf16 unless the operator asked for int8
    monkeypatch.setattr(bf16, "cpu_has_bf16", lambda: variant == "int8")
    monkeypatch.setenv("SKIN_OPENVINO", "auto")
    monkeypatch.setenv("SKIN_MODEL_VARIANT", variant)
    settings = Settings.from_env(bundle=str(directory))
    assert settings.openvino == "off" and settings.openvino_auto.startswith(said), settings.openvino_auto
    # int8 asked for: refused by OpenVINO on every machine alike, so auto serves it on onnxruntime
    assert ("SKIN_MODEL_VARIANT=int8" in settings.openvino_auto) == (variant == "int8")
    engine = Engine.from_settings(dataclasses.replace(settings, openvino="auto", threads=1))
    assert engine.model_file == served


@pytest.mark.parametrize(
    "same", [pytest.param(True, id="this-model"), pytest.param(False, id="another-model")]
)
def test_a_report_of_another_model_is_not_trusted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, same: bool
) -> None:
    # a new model.onnx copied over an old bundle's: report.json still says bf16 was safe, for the old one
    directory = _bundle_with_bf16_check(tmp_path, SAFE)
    report = json.loads((directory / bundle.REPORT_FILE).read_text())
    sha = bundle.sha256_file(directory / bundle.MODEL_FILE) if same else "0" * 64
    report["export"] = {"onnx_sha256": sha}
    (directory / bundle.REPORT_FILE).write_text(json.dumps(report))
    installed, real = importlib.util.find_spec("openvino") is not None, importlib.util.find_spec
    monkeypatch.setattr(  # as if openvino were installed, whatever this machine has
        importlib.util, "find_spec", lambda name, *a: object() if name == "openvino" else real(name, *a)
    )
    monkeypatch.setattr(bf16, "cpu_has_bf16", lambda: True)
    monkeypatch.setenv("SKIN_OPENVINO", "auto")
    settings = Settings.from_env(bundle=str(directory))
    assert settings.openvino == ("bf16" if same else "off"), settings.openvino_auto
    if not same:
        assert "did not measure" in settings.openvino_auto
        assert "report.json describes another model.onnx, sha256 000000000000" in settings.openvino_auto
    if same or not installed:
        return
    served = Engine(directory, threads=1, openvino="bf16")  # asked for by name: served, with the warning
    assert served.bf16_check["measured"] is False
    assert "describes another model.onnx" in (served.bf16_warning() or "")


def test_auto_and_providers_together_are_refused_on_any_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SKIN_OPENVINO", "auto")
    monkeypatch.setenv("SKIN_PROVIDERS", "CPUExecutionProvider,XnnpackProvider")
    with pytest.raises(ValueError, match="not both"):
        Settings.from_env()


def test_auto_with_an_unreadable_report_leaves_the_error_to_the_engine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_bundle(tmp_path)
    (tmp_path / bundle.REPORT_FILE).write_text("{not json")
    monkeypatch.setattr(bf16, "cpu_has_bf16", lambda: True)
    monkeypatch.setenv("SKIN_OPENVINO", "auto")
    assert Settings.from_env(bundle=str(tmp_path)).openvino == "off"
    with pytest.raises(bundle.BundleError, match="not readable JSON"):
        Engine.from_settings(Settings.from_env(bundle=str(tmp_path)))


@needs_openvino
def test_auto_over_http_says_what_it_chose(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, runtime_log: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(bf16, "cpu_has_bf16", lambda: True)
    monkeypatch.setenv("SKIN_OPENVINO", "auto")
    settings = Settings.from_env(bundle=str(_bundle_with_bf16_check(tmp_path, SAFE)))
    with runtime_log.at_level("INFO", logger="runtime"), TestClient(create_app(settings)) as client:
        served = client.get("/api/info").json()["onnxruntime"]
        answer = client.post(
            "/api/predict", files={"file": ("red.png", solid("red", fmt="PNG"), "image/png")}
        )
    assert served["openvino"] == "bf16" and served["bf16_check"] == SAFE
    assert served["auto"] == settings.openvino_auto  # what auto chose, for clients as well as the log
    assert answer.status_code == 200 and answer.json()["primary"]["label"] == "Acne"
    said = [r.getMessage() for r in runtime_log.records if r.getMessage().startswith("SKIN_OPENVINO=auto")]
    assert said == ["SKIN_OPENVINO=auto: serving " + settings.openvino_auto], said
    assert not [r for r in runtime_log.records if r.levelname == "WARNING" and "bf16" in r.getMessage()]
    # settings built in code may carry auto too: the engine settles it the same way
    assert Engine.from_settings(Settings(bundle=str(tmp_path), threads=1, openvino="auto")).openvino == "bf16"


@pytest.mark.slow
@needs_openvino
def test_skin_serve_settles_auto_with_the_bundle_it_was_given(tmp_path: Path) -> None:
    given = _bundle_with_bf16_check(tmp_path / "given", SAFE)
    unmeasured = _bundle_with_bf16_check(tmp_path / "environment", None)
    command = [sys.executable, "-m", "runtime", "--bundle", str(given), "--port", "{port}"]
    env = {"SKIN_OPENVINO": "auto", "SKIN_BUNDLE": str(unmeasured)}
    url, proc = start_server(given, command=command, env=env)
    try:
        with urllib.request.urlopen(url + "/api/info") as response:
            served = json.load(response)["onnxruntime"]["openvino"]
    finally:
        assert stop_server(proc) == 0
    assert served == ("bf16" if bf16.cpu_has_bf16() else "off")  # --bundle's report, not SKIN_BUNDLE's
    lines = [line for line in server_output(proc).splitlines() if line.strip()]
    logged = [json.loads(line) for line in lines if not line.startswith("skin-serve: ")]
    said = [e for e in logged if "SKIN_OPENVINO" in e["message"]]
    assert len(said) == 1 and said[0]["message"].startswith("SKIN_OPENVINO=auto: serving"), said


@needs_openvino
def test_openvino_serves_the_fp32_graph_even_when_int8_shipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(int8, "clips_sums", lambda: False)  # a CPU with VNNI, where auto prefers int8
    make_bundle(tmp_path)
    (tmp_path / bundle.INT8_MODEL_FILE).write_bytes((tmp_path / bundle.MODEL_FILE).read_bytes())
    assert (
        Engine(tmp_path, threads=1).model_file == bundle.INT8_MODEL_FILE
    )  # auto prefers int8 on onnxruntime
    assert Engine(tmp_path, threads=1, openvino="bf16").model_file == bundle.MODEL_FILE
    with pytest.raises(bundle.BundleError, match="not with SKIN_MODEL_VARIANT=int8"):
        Engine(tmp_path, threads=1, openvino="bf16", variant="int8")


@needs_openvino
def test_bf16_on_a_cpu_without_bf16_units_is_warned_about(
    tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bf16, "cpu_has_bf16", lambda: False)
    warning = Engine(tiny_bundle, threads=1, openvino="bf16").bf16_warning()
    assert warning is not None and "lacks AVX-512 BF16 and AMX" in warning


@needs_openvino
def test_openvino_reads_the_contract_as_onnxruntime_does(tiny_bundle: Path) -> None:
    import onnxruntime as ort

    from runtime.openvino_session import OpenVINOSession

    path = str(tiny_bundle / bundle.MODEL_FILE)
    ours = OpenVINOSession(path, threads=1, precision="f32")
    theirs = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    assert ours.get_modelmeta().custom_metadata_map == theirs.get_modelmeta().custom_metadata_map
    mine_all, its_all = ours.get_outputs() + ours.get_inputs(), theirs.get_outputs() + theirs.get_inputs()
    for mine, its in zip(mine_all, its_all, strict=True):
        assert (mine.name, mine.type) == (its.name, its.type)
        assert mine.shape[0] is None and mine.shape[1:] == its.shape[1:]  # a dynamic batch axis
    # the file's bytes work as its path does (export hands over bytes)
    from_bytes = OpenVINOSession((tiny_bundle / bundle.MODEL_FILE).read_bytes(), threads=1, precision="f32")
    x = _images()
    names = [bundle.PROBS_OUTPUT, bundle.CAM_OUTPUT]
    feed = {bundle.INPUT_NAME: x}
    for a, b in zip(from_bytes.run(names, feed), ours.run(names, feed), strict=True):
        np.testing.assert_array_equal(a, b)
    everything = ours.run(None, feed)  # None: every output, in the graph's order, as onnxruntime answers
    assert [a.shape for a in everything] == [a.shape for a in theirs.run(None, feed)]


@needs_openvino
def test_concurrent_openvino_runs_keep_their_own_answers(tiny_bundle: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    engine = Engine(tiny_bundle, threads=1, openvino="f32")
    x = _images()
    want = [engine.run(x[i : i + 1]).probabilities for i in range(len(x))]
    with ThreadPoolExecutor(4) as pool:  # each run borrows its own infer request
        got = list(pool.map(lambda i: engine.run(x[i : i + 1]).probabilities, [i % 4 for i in range(40)]))
    for i, probs in enumerate(got):
        np.testing.assert_array_equal(probs, want[i % 4])


@needs_openvino
def test_a_graph_openvino_cannot_read_is_one_line(tiny_bundle: Path, tmp_path: Path) -> None:
    import shutil

    broken = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, broken)
    (broken / bundle.MODEL_FILE).write_bytes(b"not an onnx file")
    with pytest.raises(bundle.BundleError, match="OpenVINO could not compile the model"):
        Engine(broken, threads=1, openvino="bf16")


# Several sessions alive at once, then all released, then a signal with a Python handler (SIGCHLD from a
# DataLoader worker, in the test suite). Run in a child process: what it guards against is a crash.
SIGNAL_AFTER_SESSIONS = """
import gc, os, signal, sys
import numpy as np
from runtime.openvino_session import OpenVINOSession
x = {"image": np.zeros((1, SIZE, SIZE, 3), np.uint8)}
sessions = [OpenVINOSession(sys.argv[1], threads=1, precision="f32") for _ in range(3)]
for s in sessions:
    s.run(None, x)
del sessions, s
gc.collect()
junk = [bytearray(1 << 20) for _ in range(64)]
del junk
got = []
signal.signal(signal.SIGUSR1, lambda *args: got.append(1))
os.kill(os.getpid(), signal.SIGUSR1)
print("handled", len(got))
"""


@needs_openvino
def test_signals_still_arrive_after_openvino_sessions_are_gone(tiny_bundle: Path) -> None:
    import subprocess

    size = Engine(tiny_bundle, threads=1).meta.input_size[0]
    code = SIGNAL_AFTER_SESSIONS.replace("SIZE", str(size))
    done = subprocess.run(
        [sys.executable, "-c", code, str(tiny_bundle / bundle.MODEL_FILE)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert done.returncode == 0 and "handled 1" in done.stdout, (done.returncode, done.stderr[-2000:])
