"""Shared constants for the training tests."""

from __future__ import annotations

import contextlib
import resource
from collections.abc import Iterator
from pathlib import Path
from typing import Any

CLASSES = ["Acne", "Eczema", "Moles"]

# A tiny timm model and small images: a run of a few epochs takes seconds on a CPU.
TINY: dict[str, Any] = {
    "arch": "test_efficientnet",
    "img_size": 64,
    "batch_size": 8,
    "accum_steps": 1,
    "workers": 0,
    "pretrained": False,
    "lr": 3e-3,
    "backbone_lr_scale": 1.0,
    "drop_rate": 0.0,
    "device": "cpu",
    "plots": False,
}


def truncated_jpeg(source: Path, target: Path) -> None:
    """A JPEG whose header is fine but whose data stops early: fails on decode, not on open."""
    target.write_bytes(source.read_bytes()[:400])


@contextlib.contextmanager
def file_size_limit(limit: int) -> Iterator[None]:
    """Writes past ``limit`` bytes fail with EFBIG, as on a full disk (Python ignores SIGXFSZ)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
