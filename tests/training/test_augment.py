"""The augmentation recipe: each transform's probability and range come from the config."""

from __future__ import annotations

from training.augment import build_transform
from training.config import DEFAULTS, TrainConfig


def _settings(cfg: TrainConfig) -> dict[str, tuple[object, ...]]:
    transform = build_transform(cfg)
    assert transform is not None
    out: dict[str, tuple[object, ...]] = {}
    for t in transform.transforms:
        name = type(t).__name__
        if name == "Rotate":
            out[name] = (t.p, tuple(t.limit))
        elif name == "ColorJitter":
            out[name] = (t.p, tuple(t.brightness), tuple(t.contrast), tuple(t.saturation), tuple(t.hue))
        elif name == "Affine":
            out[name] = (t.p, tuple(t.scale["x"]), tuple(t.scale["y"]), tuple(t.translate_percent["x"]))
        else:
            out[name] = (t.p,)
    return out


def test_every_augmentation_option_reaches_its_transform() -> None:
    cfg = TrainConfig(
        hflip=0.1, vflip=0.2, rotate=20.0, rotate_p=0.3, jitter=0.15, jitter_hue=0.04, jitter_p=0.4,
        scale=0.05, translate=0.08, affine_p=0.6, seed=9,
    )  # fmt: skip
    assert _settings(cfg) == {
        "HorizontalFlip": (0.1,),
        "VerticalFlip": (0.2,),
        "Rotate": (0.3, (-20.0, 20.0)),
        "ColorJitter": (0.4, (0.85, 1.15), (0.85, 1.15), (0.85, 1.15), (-0.04, 0.04)),
        "Affine": (0.6, (0.95, 1.05), (0.95, 1.05), (-0.08, 0.08)),
    }
    assert build_transform(cfg).seed == 9  # type: ignore[union-attr]


def test_the_default_recipe() -> None:
    """Flips half the time, rotate ±30° (p 0.7), jitter 0.2, hue 0.05 (p 0.3), affine 10 % (p 0.5)."""
    settings = _settings(DEFAULTS)
    assert settings["HorizontalFlip"] == settings["VerticalFlip"] == (0.5,)
    assert settings["Rotate"] == (0.7, (-30.0, 30.0))
    p, brightness, _, _, hue = settings["ColorJitter"]
    assert p == 0.3 and brightness == (0.8, 1.2) and hue == (-0.05, 0.05)
    assert settings["Affine"] == (0.5, (0.9, 1.1), (0.9, 1.1), (-0.1, 0.1))
