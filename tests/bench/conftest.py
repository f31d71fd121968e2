"""A tiny timm checkpoint for the reference-style baseline server."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from training.model import IMAGENET_MEAN, IMAGENET_STD, build_model, save_checkpoint

    path = tmp_path_factory.mktemp("baseline") / "model.pt"
    names = ["Acne", "Eczema", "Moles"]
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
