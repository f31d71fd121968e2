"""A 22-class demo bundle and sample images for the web-page tests and the README screenshots.

The graph is the hand-built one from tests.bundle_factory (class 0 answers to red, 1 to green, 2 to blue)
with the project's 22 real class names. Its report is derived with scikit-learn from synthetic labels, so
every number on the Model tab is consistent (per-class rows, averages, confusion matrix); ``demo_note`` says
so.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

from runtime import bundle
from tests.bundle_factory import make_bundle

CLASS_NAMES = sorted(bundle.DISPLAY_NAMES)
TEMPERATURE = 1.37
DEMO_NOTE = (
    "Illustrative numbers derived from synthetic labels for the web-page tests; not a measured result."
)
# Test-split sizes roughly as in the reference data set (about 1,546 images).
SUPPORT = [66, 83, 121, 56, 28, 61, 112, 58, 61, 35, 40, 91, 28, 51, 77, 35, 103, 184, 60, 51, 79, 64]


def make_report(seed: int = 42) -> dict[str, object]:
    from sklearn.metrics import classification_report, confusion_matrix

    rng = np.random.default_rng(seed)
    n = len(CLASS_NAMES)
    y_true = np.repeat(np.arange(n), SUPPORT)
    hit_rate = rng.uniform(0.6, 0.93, n)
    y_pred = y_true.copy()
    for i, label in enumerate(y_true):
        if rng.random() > hit_rate[label]:
            # Mistakes cluster on a few look-alike classes, as they do in real dermatology data.
            neighbours = [(label + k) % n for k in (1, 2, 5)]
            y_pred[i] = neighbours[rng.integers(0, 3)] if rng.random() < 0.7 else rng.integers(0, n)
    report: dict[str, object] = classification_report(
        y_true, y_pred, labels=list(range(n)), target_names=CLASS_NAMES, output_dict=True, zero_division=0
    )
    report["confusion_matrix"] = confusion_matrix(y_true, y_pred, labels=list(range(n))).tolist()
    report["class_names"] = CLASS_NAMES
    report["top3_accuracy"] = round(float(report["accuracy"]) + 0.11, 4)  # type: ignore[arg-type]
    report["calibration"] = {
        "temperature": TEMPERATURE,
        "ece_before": 0.0712,
        "ece_after": 0.0184,
        "nll_before": 0.8123,
        "nll_after": 0.6547,
    }
    report["demo_note"] = DEMO_NOTE
    return report


def make_ui_bundle(directory: str | Path, *, report: bool = True) -> Path:
    directory = make_bundle(
        directory,
        report=False,
        class_names=CLASS_NAMES,
        size=64,
        temperature=TEMPERATURE,
        meta_overrides={
            bundle.K_NAME: "skin-demo-b3",
            bundle.K_VERSION: "0.3.0",
            bundle.K_ARCH: "tiny CAM graph (stands in for efficientnet_b3)",
            bundle.K_TRAINED_ON: "no clinical data: a hand-built demo graph",
            bundle.K_DEMO: "true",
        },
    )
    if report:
        (directory / bundle.REPORT_FILE).write_text(json.dumps(make_report(), indent=2))
    return directory


def lesion_photo(size: tuple[int, int] = (720, 540), seed: int = 7) -> bytes:
    """A JPEG that reads as a close-up of skin with a cluster of inflamed papules (drawn, not a patient)."""
    from PIL import Image, ImageFilter

    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    # Skin: a warm tone, soft low-frequency shading and fine grain.
    low = Image.fromarray(rng.normal(128, 40, (h // 90 + 2, w // 90 + 2)).clip(0, 255).astype(np.uint8))
    shade = (np.asarray(low.resize((w, h), Image.Resampling.BICUBIC), np.float32) - 128) / 128
    skin = np.array([202, 160, 138], np.float32) + shade[..., None] * np.array([7, 8, 8], np.float32)
    skin += rng.normal(0, 2.2, (h, w, 1))
    red = np.array([214, 86, 82], np.float32)
    pink = np.array([222, 138, 124], np.float32)
    centre = np.array([w * 0.55, h * 0.47])
    blush = np.zeros((h, w), np.float32)
    bumps = np.zeros((h, w), np.float32)
    shine = np.zeros((h, w), np.float32)
    for _ in range(22):
        x, y = centre + rng.normal(0, [w * 0.1, h * 0.11])
        r = float(rng.uniform(9, 21))
        d2 = (xx - x) ** 2 + (yy - y) ** 2
        bumps = np.maximum(bumps, np.exp(-1.1 * d2 / r**2))
        blush = np.maximum(blush, 0.5 * np.exp(-d2 / (3.2 * r) ** 2))
        s2 = (xx - x + 0.35 * r) ** 2 + (yy - y + 0.35 * r) ** 2
        shine = np.maximum(shine, np.exp(-s2 / (0.22 * r) ** 2))
    image = skin * (1 - blush[..., None]) + pink * blush[..., None]
    image = image * (1 - 0.9 * bumps[..., None]) + red * 0.9 * bumps[..., None]
    image = image * (1 - 0.3 * shine[..., None]) + 255 * 0.3 * shine[..., None]
    photo = Image.fromarray(image.clip(0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(0.8))
    buf = io.BytesIO()
    photo.save(buf, "JPEG", quality=90)
    return buf.getvalue()
