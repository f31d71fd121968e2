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


def test_baseline_cli_refuses_a_missing_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from benchmarks.baseline_server import main

    assert main(["--checkpoint", str(tmp_path / "nope.pt")]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and len(err.strip().splitlines()) == 1
