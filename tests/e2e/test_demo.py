"""The demo pipeline end to end: generated data → training → export → a real uvicorn process → HTTP."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from export.demo import DEMO_LABEL, build
from tests.server import ROOT, post_file, start_server, stop_server

CLASSES = ["Acne", "Moles", "Psoriasis", "Vitiligo"]


@pytest.fixture(scope="module")
def demo_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("demo")
    return build(
        bundle_dir=work / "bundle",
        work_dir=work / "work",
        arch="test_efficientnet",
        img_size=64,
        train_per_class=16,
        test_per_class=5,
        epochs=8,
        batch_size=8,
        class_names=CLASSES,
        log=lambda _: None,
    )


@pytest.mark.slow
def test_demo_bundle_is_labelled_and_above_chance(demo_bundle: Path) -> None:
    report = json.loads((demo_bundle / "report.json").read_text())
    assert report["accuracy"] > 2 / len(CLASSES)
    assert DEMO_LABEL in report["demo_note"]
    assert {"calibration", "parity"} <= set(report)


@pytest.mark.slow
def test_demo_model_classifies_a_generated_image_over_http(demo_bundle: Path) -> None:
    test_images = sorted((demo_bundle.parent / "work" / "data" / "test").glob("*/*"))
    url, proc = start_server(demo_bundle)
    try:
        with urllib.request.urlopen(url + "/api/info", timeout=10) as response:
            info = json.load(response)
        assert info["demo"] is True and DEMO_LABEL in info["trained_on"]
        answers = [
            (path.parent.name, post_file(url + "/api/predict", path.read_bytes(), filename=path.name))
            for path in test_images
        ]
        right = [truth for truth, body in answers if body["primary"]["label"] == truth]  # type: ignore[index]
        assert len(right) / len(answers) > 2 / len(CLASSES)
        # The first image of a class the model gets right comes back with that class and a heatmap.
        truth, body = next((t, b) for t, b in answers if b["primary"]["label"] == t)  # type: ignore[index]
        assert body["heatmap"] is not None and set(body["predictions"]) == set(CLASSES)  # type: ignore[arg-type]
    finally:
        stop_server(proc)


@pytest.mark.slow
def test_demo_reuses_the_bundle_and_no_serve_exits_0(demo_bundle: Path) -> None:
    before = (demo_bundle / "model.onnx").stat().st_mtime_ns
    out = subprocess.run(
        [sys.executable, "-m", "export.demo", "--no-serve", "--bundle-dir", str(demo_bundle)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "reusing the demo bundle" in out.stdout
    assert (demo_bundle / "model.onnx").stat().st_mtime_ns == before


@pytest.mark.slow
def test_demo_failure_names_the_step(tmp_path: Path) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "export.demo",
            "--no-serve",
            "--bundle-dir",
            str(tmp_path / "b"),
            "--work-dir",
            str(tmp_path / "w"),
            "--arch",
            "no_such_architecture",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert out.returncode == 2
    last = out.stderr.strip().splitlines()[-1]
    assert "step 'train" in last and "no_such_architecture" in last
    assert "Traceback" not in out.stderr
