"""The reference-style baseline server answers the reference API (a tiny timm model, no network)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import images


@pytest.mark.slow
def test_baseline_serves_the_reference_api(checkpoint: Path, tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from benchmarks.baseline_server import create_app

    report = tmp_path / "report.json"
    report.write_text(json.dumps({"accuracy": 0.5}))
    with TestClient(create_app(checkpoint, report=report)) as client:
        for kind, data in zip(images.KINDS, images.mix().values(), strict=True):
            body, content_type = images.multipart(
                data, "x." + images.EXTENSION[kind.fmt], images.MIME[kind.fmt]
            )
            answer = client.post("/api/predict", content=body, headers={"content-type": content_type})
            assert answer.status_code == 200, answer.text
            predictions = answer.json()["predictions"]
            assert list(predictions) == ["Acne", "Eczema", "Moles"]
            assert sum(predictions.values()) == pytest.approx(1.0, abs=1e-5)
        assert client.get("/api/info").json() == {"model_name": "tiny", "model_version": "1"}
        assert client.get("/api/report").json() == {"accuracy": 0.5}
        bad = client.post("/api/predict", files={"file": ("x.jpg", b"not an image", "image/jpeg")})
        assert bad.status_code == 400


@pytest.mark.slow
def test_baseline_ignores_exif_orientation_as_the_reference_does(checkpoint: Path) -> None:
    from fastapi.testclient import TestClient

    from benchmarks.baseline_server import create_app

    # The same pixels stored sideways (orientation 6, as phones write) and upright: the reference turns none.
    answers = []
    with TestClient(create_app(checkpoint)) as client:
        for orientation in (6, 1):
            data = images.encode(images.Kind("photo", (120, 90), "JPEG", 1, orientation=orientation))
            body, content_type = images.multipart(data, "x.jpg", "image/jpeg")
            answer = client.post("/api/predict", content=body, headers={"content-type": content_type})
            answers.append(answer.json()["predictions"])
    assert answers[0] == answers[1]


def test_baseline_cli_refuses_a_missing_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from benchmarks.baseline_server import main

    assert main(["--checkpoint", str(tmp_path / "nope.pt")]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and len(err.strip().splitlines()) == 1


def test_baseline_cli_refuses_a_folder_as_the_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from benchmarks.baseline_server import main

    assert main(["--checkpoint", str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"baseline_server: {tmp_path} is not a regular file\n"


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, object]]:
    """uvicorn.run recorded, not run: every check must come before it."""
    calls: list[dict[str, object]] = []
    monkeypatch.setattr("uvicorn.run", lambda app, **kwargs: calls.append({"app": app, **kwargs}))
    return calls


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(
            ["--checkpoint", "JUNK"], "JUNK is not readable (UnpicklingError)", id="junk-checkpoint"
        ),
        pytest.param(
            ["--checkpoint", "NO_KEYS"], "cannot be served: KeyError: 'arch'", id="not-a-checkpoint"
        ),
        pytest.param(["--report", "JUNK"], "is not readable JSON: UnicodeDecodeError", id="binary-report"),
        pytest.param(["--report", "LIST"], "must hold a JSON object", id="list-report"),
        pytest.param(["--port", "70000"], "port 70000 is out of range", id="port-too-high"),
        pytest.param(["--port", "-1"], "port -1 is out of range", id="port-negative"),
        pytest.param(["--host", "no.such.invalid", "--port", "8541"], "cannot listen on", id="unknown-host"),
    ],
)
def test_baseline_cli_checks_before_serving_in_one_line(
    checkpoint: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    served: list[dict[str, object]],
    args: list[str],
    message: str,
) -> None:
    import torch

    from benchmarks.baseline_server import main

    (tmp_path / "junk").write_bytes(b"\x8f\x00 neither a checkpoint nor UTF-8")
    torch.save({"model": {}}, tmp_path / "no_keys.pt")
    (tmp_path / "list.json").write_text("[1, 2]")
    where = {"JUNK": tmp_path / "junk", "NO_KEYS": tmp_path / "no_keys.pt", "LIST": tmp_path / "list.json"}
    argv = [str(where.get(a, a)) for a in args]
    if "--checkpoint" not in argv:
        argv += ["--checkpoint", str(checkpoint)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        len(err) == 1
        and err[0].startswith("baseline_server: ")
        and message in err[0].replace(str(tmp_path / "junk"), "JUNK")
    ), err
    assert served == []


def test_baseline_cli_refuses_an_unknown_log_level_in_one_line(
    checkpoint: Path, capsys: pytest.CaptureFixture[str], served: list[dict[str, object]]
) -> None:
    from benchmarks.baseline_server import main

    with pytest.raises(SystemExit) as exit_:
        main(["--checkpoint", str(checkpoint), "--log-level", "loud"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "invalid choice: 'loud'" in err[0], err
    assert served == []


def test_baseline_cli_serves_a_loaded_model(
    checkpoint: Path, tmp_path: Path, served: list[dict[str, object]]
) -> None:
    from benchmarks.baseline_server import main

    report = tmp_path / "report.json"
    report.write_text(json.dumps({"accuracy": 0.5}))
    argv = [
        "--checkpoint",
        str(checkpoint),
        "--report",
        str(report),
        "--port",
        "8542",
        "--log-level",
        "trace",
    ]
    assert main(argv) == 0
    assert [(c["host"], c["port"], c["log_level"]) for c in served] == [("127.0.0.1", 8542, "trace")]


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims this size (its pixel data is a stub)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"not an image", id="not-an-image"),
        pytest.param(_png_header(60_000, 60_000), id="over-cv2-pixel-limit"),
    ],
)
def test_baseline_answers_a_bad_upload_400_not_500(checkpoint: Path, data: bytes) -> None:
    from fastapi.testclient import TestClient

    from benchmarks.baseline_server import create_app

    with TestClient(create_app(checkpoint), raise_server_exceptions=False) as client:
        answer = client.post("/api/predict", files={"file": ("x.png", data, "image/png")})
    assert (answer.status_code, answer.json()) == (400, {"detail": "invalid image"})


def test_baseline_cli_ctrl_c_while_loading_is_one_line(
    checkpoint: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    served: list[dict[str, object]],
) -> None:
    from benchmarks import baseline_server

    def create_app(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(baseline_server, "create_app", create_app)
    assert baseline_server.main(["--checkpoint", str(checkpoint), "--port", "8543"]) == 130
    assert capsys.readouterr().err.splitlines() == ["baseline_server: interrupted"]
    assert served == []
