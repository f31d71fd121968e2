"""Small image builders for tests (Pillow only)."""

from __future__ import annotations

import io

from PIL import Image

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}


def encode(img: Image.Image, fmt: str = "JPEG", **params: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **params)
    return buf.getvalue()


def solid(colour: str = "red", size: tuple[int, int] = (96, 80), fmt: str = "JPEG") -> bytes:
    return encode(Image.new("RGB", size, COLOURS[colour]), fmt)
