"""The demo pipeline end to end: generated data → training → export → a real uvicorn process → HTTP."""

from __future__ import annotations

import errno
import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml

from export.demo import DEMO_LABEL, MARKER, bf16_hint, build, main
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
        # Enough images that the validation split (10 per class) can set the out-of-distribution threshold:
        # with 7 it was their largest score, and a change in training left 8 of 40 test images past it.
        train_per_class=64,
        test_per_class=10,
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
def test_demo_model_flags_foreign_images_and_its_report_says_how_often(demo_bundle: Path) -> None:
    import io

    from PIL import Image

    from training.synthetic import foreign_images

    report = json.loads((demo_bundle / "report.json").read_text())
    summary = report["uncertainty"]["summary"]
    assert summary["test_in_distribution_accepted"] >= 0.9 and summary["foreign_flagged"] >= 0.8
    # Over HTTP, from the bundle's thresholds: foreign kinds (a seed export never saw) are mostly flagged...
    url, proc = start_server(demo_bundle)
    try:
        flagged = []
        for kind, pixels in foreign_images(12, seed=11, size=(90, 120)):
            buffer = io.BytesIO()
            Image.fromarray(pixels).save(buffer, format="PNG")
            body = post_file(url + "/api/predict", buffer.getvalue(), filename=f"{kind}.png")
            assert body["confidence"] in ("ok", "low")
            flagged.append(body["in_distribution"] is False)
        assert sum(flagged) / len(flagged) >= 0.8, flagged
        # ...and held-out images of the trained classes mostly are not.
        test_images = sorted((demo_bundle.parent / "work" / "data" / "test").glob("*/*"))
        accepted = [
            post_file(url + "/api/predict", p.read_bytes(), filename=p.name)["in_distribution"] is True
            for p in test_images
        ]
        assert sum(accepted) / len(accepted) >= 0.8, accepted
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
def test_skin_demo_serves_the_page_and_stops_on_ctrl_c(demo_bundle: Path) -> None:
    import signal
    import time

    from tests.server import free_port

    port = free_port()
    command = [sys.executable, "-m", "export.demo", "--bundle-dir", str(demo_bundle), "--port", str(port)]
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1):
                    break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "skin-demo did not start serving"
                time.sleep(0.2)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as response:
            assert b"<html" in response.read().lower()
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    assert f"open http://127.0.0.1:{port}/" in out and "Traceback" not in out


@pytest.mark.slow
def test_skin_demo_on_a_busy_port_names_the_step_before_building(tmp_path: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        out = subprocess.run(
            [sys.executable, "-m", "export.demo", "--bundle-dir", str(tmp_path / "b"), "--port", str(port)],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=120,
        )
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and "step 'serve' failed: cannot listen on 127.0.0.1" in out.stderr
    assert "another server" in out.stderr and not (tmp_path / "b").exists()  # nothing built for nothing


def test_demo_names_the_faster_setting_only_where_it_applies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util

    from runtime import bf16
    from tests.bundle_factory import make_bundle

    make_bundle(tmp_path)
    report = json.loads((tmp_path / "report.json").read_text())
    report[bf16.REPORT_KEY] = {"measured": True, "safe": True, "agreement": 1.0, "speedup_batch1": 1.6}
    (tmp_path / "report.json").write_text(json.dumps(report))
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: object() if n == "openvino" else real(n, *a)
    )
    monkeypatch.setattr(bf16, "cpu_has_bf16", lambda: True)
    monkeypatch.delenv("SKIN_OPENVINO", raising=False)
    hint = bf16_hint(tmp_path)
    assert hint is not None and hint.startswith(
        "skin-demo: SKIN_OPENVINO=auto make demo would serve OpenVINO bf16"
    ), hint
    monkeypatch.setenv("SKIN_OPENVINO", "off")  # the user chose: nothing to suggest
    assert bf16_hint(tmp_path) is None
    monkeypatch.delenv("SKIN_OPENVINO")
    monkeypatch.setattr(bf16, "cpu_has_bf16", lambda: False)
    assert bf16_hint(tmp_path) is None


@pytest.fixture
def no_building(monkeypatch: pytest.MonkeyPatch) -> None:
    """Generating data fails at once: a check that comes too late ends the test in seconds, not minutes."""
    from training import synthetic

    def refuse(*args: object, **kwargs: object) -> None:
        raise RuntimeError("generating data was reached")

    monkeypatch.setattr(synthetic, "generate", refuse)


def run_demo(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str]:
    """skin-demo in this process: (exit status, stderr)."""
    try:
        code = main([str(a) for a in args])
    except SystemExit as exc:  # the argument parser's own errors
        code = int(exc.code or 0)
    return code, capsys.readouterr().err


@pytest.mark.usefixtures("no_building")
def test_demo_never_deletes_or_trains_over_folders_it_did_not_make(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    project = tmp_path / "proj"
    notes = project / "data" / "mine" / "notes.txt"
    notes.parent.mkdir(parents=True)
    notes.write_text("mine")
    base = ["--no-serve", "--work-dir", project, "--bundle-dir", tmp_path / "b"]
    for extra, expected in (
        (["--epochs", "0"], "--epochs must be at least 1"),  # a bad argument: nothing touched before it
        ([], f"{str(project / 'data')!r} was not made by skin-demo"),
    ):
        code, err = run_demo(capsys, *base, *extra)
        assert code == 2 and err.count("\n") == 1 and expected in err, err
        assert err.startswith("skin-demo: error:") and notes.read_text() == "mine"
    notes.unlink()
    notes.parent.rmdir()  # an empty data folder is fine; a training run of someone else's is not
    run = project / "run" / "best.pt"
    run.parent.mkdir()
    run.write_bytes(b"someone's checkpoint")
    code, err = run_demo(capsys, *base)
    assert code == 2 and f"{str(run.parent)!r} was not made by skin-demo" in err, err
    assert run.read_bytes() == b"someone's checkpoint" and not (tmp_path / "b").exists()


@pytest.mark.usefixtures("no_building")
def test_demo_replaces_its_own_earlier_data_and_a_failing_step_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "work" / "data"
    (data / "train").mkdir(parents=True)
    (data / MARKER).write_text("")
    (data / "train" / "stale.png").write_bytes(b"")
    code, err = run_demo(
        capsys, "--no-serve", "--work-dir", tmp_path / "work", "--bundle-dir", tmp_path / "b"
    )
    assert code == 2 and err == "skin-demo: step 'generate data' failed: generating data was reached\n"
    assert not (data / "train").exists() and (data / MARKER).is_file()  # replaced, and marked as the demo's


@pytest.mark.usefixtures("no_building")
def test_demo_takes_back_the_folders_of_a_demo_older_than_its_marker(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # An earlier version wrote no marker; its run's config.yaml says it was the demo's, from that data.
    work = tmp_path / "work"
    (work / "data" / "train").mkdir(parents=True)
    (work / "run").mkdir()
    config = {"demo": True, "data": str(work / "data"), "out": str(work / "run")}
    (work / "run" / "config.yaml").write_text(yaml.safe_dump(config))
    code, err = run_demo(capsys, "--no-serve", "--work-dir", work, "--bundle-dir", tmp_path / "b")
    assert code == 2 and err == "skin-demo: step 'generate data' failed: generating data was reached\n"
    (work / "run" / "config.yaml").write_text(yaml.safe_dump({**config, "demo": False}))  # a real run
    (work / "data" / MARKER).unlink()
    (work / "data" / "train").mkdir()
    code, err = run_demo(capsys, "--no-serve", "--work-dir", work, "--bundle-dir", tmp_path / "b")
    assert code == 2 and "was not made by skin-demo" in err, err


def test_demo_bad_flag_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run_demo(capsys, "--port", "abc")
    assert code == 2 and err == "skin-demo: error: argument --port: invalid int value: 'abc' (see --help)\n"


@pytest.mark.usefixtures("no_building")
@pytest.mark.parametrize(
    ("args", "expected"),
    [
        pytest.param(["--img-size", "8"], "--img-size must be 16..4096", id="img-size"),
        pytest.param(["--batch-size", "0"], "--batch-size must be at least 1", id="batch-size"),
        pytest.param(
            ["--train-per-class", "1"], "--train-per-class must be at least 2", id="train-per-class"
        ),
        pytest.param(["--test-per-class", "0"], "--test-per-class must be at least 1", id="test-per-class"),
        # Past these: the disk filled with generated images, or a step's memory, before any training.
        pytest.param(
            ["--train-per-class", "100000"],
            "--train-per-class must be at most 1000",
            id="train-per-class-most",
        ),
        pytest.param(
            ["--test-per-class", "1001"], "--test-per-class must be at most 1000", id="test-per-class-most"
        ),
        pytest.param(["--epochs", "101"], "--epochs must be at most 100", id="epochs-most"),
        pytest.param(["--batch-size", "65"], "--batch-size must be at most 64", id="batch-size-most"),
        pytest.param(["--seed", "-1"], "--seed must be", id="negative-seed"),
        pytest.param(["--arch", "no_such_architecture"], "'no_such_architecture' is not a timm", id="arch"),
        pytest.param(
            ["--bundle-dir", "{tmp}/file"], "'{tmp}/file' is a file, not a folder", id="bundle-file"
        ),
        pytest.param(
            ["--work-dir", "{tmp}/file/w"], "cannot be made: '{tmp}/file' is a file", id="work-under-file"
        ),
        pytest.param(["--bundle-dir", "{tmp}/w/run/b"], "must not overlap", id="bundle-in-run"),
        pytest.param(["--bundle-dir", "{tmp}/notes"], "is not a bundle folder", id="bundle-not-a-bundle"),
        # stat() fails on these, as on a folder that may not be searched: pathlib raises, not answers False
        pytest.param(["--bundle-dir", "{tmp}/" + "b" * 300], "File name too long", id="bundle-name-too-long"),
        pytest.param(["--work-dir", "{tmp}/" + "w" * 300], "File name too long", id="work-name-too-long"),
    ],
)
def test_demo_checks_arguments_and_folders_before_any_work(
    args: list[str], expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "file").write_text("")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("mine")
    before = sorted(tmp_path.rglob("*"))
    defaults = ["--no-serve", "--work-dir", tmp_path / "w", "--bundle-dir", tmp_path / "b"]
    code, err = run_demo(capsys, *defaults, *[a.format(tmp=tmp_path) for a in args])
    assert code == 2 and err.count("\n") == 1 and expected.format(tmp=tmp_path) in err, err
    assert err.startswith("skin-demo: error:") and sorted(tmp_path.rglob("*")) == before  # nothing made


def test_demo_names_no_file_for_an_error_without_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing(**_: object) -> Path:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr("export.demo.build", failing)
    code, err = run_demo(capsys, "--no-serve", "--work-dir", tmp_path / "w", "--bundle-dir", tmp_path / "b")
    assert code == 2 and err == "skin-demo: error: Input/output error\n"


@pytest.mark.usefixtures("no_building")
def test_demo_says_when_it_cannot_write_its_work_dir(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    locked = tmp_path / "locked"
    locked.mkdir()
    real = os.access  # as a read-only folder answers (root may write anywhere, so not by chmod)
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: Path(p) != locked and real(p, mode, **kw))
    code, err = run_demo(capsys, "--no-serve", "--work-dir", locked / "w", "--bundle-dir", tmp_path / "b")
    assert code == 2 and err.count("\n") == 1 and f"cannot write in {str(locked)!r}" in err, err
    assert list(locked.iterdir()) == []


@pytest.mark.usefixtures("no_building")
def test_demo_checks_the_serving_settings_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.server import free_port

    monkeypatch.setenv("SKIN_TOP_K", "0")
    args = ["--work-dir", tmp_path / "w", "--bundle-dir", tmp_path / "b", "--port", free_port()]
    code, err = run_demo(capsys, *args)
    assert code == 2 and err == "skin-demo: step 'serve' failed: SKIN_TOP_K must be at least 1, not 0\n"
    assert list(tmp_path.iterdir()) == []
    code, _ = run_demo(capsys, "--no-serve", *args[:4])  # not serving: the settings do not matter
    assert code == 2 and (tmp_path / "w" / "data" / MARKER).is_file()  # it went on to generate


def test_demo_serve_failure_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from runtime import cli
    from runtime.bundle import BundleError
    from tests.bundle_factory import make_bundle
    from tests.server import free_port

    def fail(**kwargs: object) -> None:
        raise BundleError("model.onnx changed under the server")

    monkeypatch.setattr(cli, "serve", fail)
    code, err = run_demo(capsys, "--bundle-dir", make_bundle(tmp_path / "b"), "--port", free_port())
    assert code == 2 and err == "skin-demo: step 'serve' failed: model.onnx changed under the server\n"
