"""Training augmentation (albumentations). Nothing here resizes: the size comes from runtime preprocessing."""

from __future__ import annotations

import os
from typing import Any

from training.config import TrainConfig


def build_transform(cfg: TrainConfig) -> Any | None:
    """The reference recipe: flips, rotate ±30°, colour jitter, affine scale/translate. None when disabled."""
    if not cfg.augment:
        return None
    # albumentations otherwise asks PyPI for a newer version at import (a network call and a warning).
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    import albumentations as A
    import cv2

    j = cfg.jitter
    return A.Compose(
        [
            A.HorizontalFlip(p=cfg.hflip),
            A.VerticalFlip(p=cfg.vflip),
            A.Rotate(limit=cfg.rotate, border_mode=cv2.BORDER_REFLECT_101, p=cfg.rotate_p),
            A.ColorJitter(brightness=j, contrast=j, saturation=j, hue=cfg.jitter_hue, p=cfg.jitter_p),
            A.Affine(
                scale=(1.0 - cfg.scale, 1.0 + cfg.scale),
                translate_percent=(-cfg.translate, cfg.translate),
                border_mode=cv2.BORDER_REFLECT_101,
                p=cfg.affine_p,
            ),
        ],
        seed=cfg.seed,
    )
