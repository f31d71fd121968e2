"""A tiny timm checkpoint for the reference-style baseline server, and a tiny bundle with its classes."""

from __future__ import annotations

from pathlib import Path

import pytest

NAMES = ["Acne", "Eczema", "Moles"]


@pytest.fixture(scope="session")
def bench_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny test bundle with the checkpoint's classes: what --bundle and --checkpoint pass together."""
    from tests.bundle_factory import make_bundle

    return make_bundle(tmp_path_factory.mktemp("bench-bundle"), class_names=NAMES)


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from training.model import IMAGENET_MEAN, IMAGENET_STD, build_model, save_checkpoint

    path = tmp_path_factory.mktemp("baseline") / "model.pt"
    names = NAMES
    meta = {
        "arch": "test_efficientnet",
        "img_size": 64,
        "class_names": names,
        "mean": IMAGENET_MEAN,
        "std": IMAGENET_STD,
        "model_name": "tiny",
        "model_version": "1",
    }
    save_checkpoint(path, model=build_model("test_efficientnet", len(names), drop_rate=0.0), meta=meta)
    return path


@pytest.fixture
def clean_skin_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No SKIN_* from the shell (make test sets SKIN_REQUIRE_OPENVINO): a test that checks what the
    summaries record of the environment sets its own."""
    import os

    for key in [k for k in os.environ if k.startswith("SKIN_")]:
        monkeypatch.delenv(key)
