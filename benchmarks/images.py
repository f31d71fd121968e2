"""The image mix the load tests send: what users upload, generated deterministically (numpy + Pillow only).

Photographic-looking content (smooth skin-toned shading, a darker lesion, sensor noise) so that JPEG sizes and
decode times resemble real uploads; flat colours would compress to almost nothing and decode unrealistically
fast. The 12 MP photo carries EXIF orientation 6 (taken upright, stored sideways), as phones write it.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class Kind:
    name: str  # the label in Locust's statistics
    size: tuple[int, int]  # width, height as stored
    fmt: str  # Pillow format
    weight: int  # relative frequency in the mix
    quality: int = 90
    orientation: int = 1  # EXIF orientation tag (1 = upright)


# The dataset is mostly web thumbnails (~294x222); the web app also takes camera captures and phone photos.
KINDS = (
    Kind("thumb 300x220 jpeg", (300, 220), "JPEG", 10),
    Kind("photo 1024x768 jpeg", (1024, 768), "JPEG", 5),
    Kind("phone 12MP jpeg", (4000, 3000), "JPEG", 2, quality=88, orientation=6),
    Kind("png 600x450", (600, 450), "PNG", 2),
)
MIME = {"JPEG": "image/jpeg", "PNG": "image/png"}
EXTENSION = {"JPEG": "jpg", "PNG": "png"}


def pixels(size: tuple[int, int], seed: int = 0) -> np.ndarray:
    """uint8 HxWx3: shading and a lesion drawn at low resolution, scaled up, plus fine sensor noise."""
    width, height = size
    rng = np.random.default_rng(seed)
    low_w, low_h = max(8, width // 10), max(8, height // 10)
    v, u = np.mgrid[0:low_h, 0:low_w].astype(np.float32)
    u, v = u / low_w, v / low_h
    tone = np.array([214, 160, 130], np.float32) + rng.normal(0, 12, 3).astype(np.float32)
    shade = 0.85 + 0.25 * np.sin(2.5 * u + 1.3) * np.cos(1.7 * v)
    low = tone * shade[..., None]
    cx, cy, r = rng.uniform(0.35, 0.65), rng.uniform(0.35, 0.65), rng.uniform(0.12, 0.25)
    blob = np.clip(1.2 - np.hypot(u - cx, (v - cy) * height / width) / r, 0, 1)[..., None]
    low = low * (1 - 0.6 * blob) + np.array([90, 45, 40], np.float32) * 0.6 * blob
    low += rng.normal(0, 4, low.shape).astype(np.float32)
    up = Image.fromarray(np.clip(low, 0, 255).astype(np.uint8)).resize(size, Image.Resampling.BICUBIC)
    image = np.asarray(up, dtype=np.int16)
    image = image + rng.integers(-9, 10, image.shape, dtype=np.int16)
    return np.clip(image, 0, 255).astype(np.uint8)


def encode(kind: Kind, seed: int = 0) -> bytes:
    img = Image.fromarray(pixels(kind.size, seed))
    buffer = io.BytesIO()
    if kind.fmt == "JPEG":
        exif = Image.Exif()
        if kind.orientation != 1:
            exif[0x0112] = kind.orientation
        img.save(buffer, "JPEG", quality=kind.quality, exif=exif.tobytes())
    else:
        img.save(buffer, kind.fmt)
    return buffer.getvalue()


def mix(seed: int = 0) -> dict[str, bytes]:
    """Every kind's file bytes, by kind name."""
    return {kind.name: encode(kind, seed + i) for i, kind in enumerate(KINDS)}


def multipart(data: bytes, filename: str, mime: str, field: str = "file") -> tuple[bytes, str]:
    """A ready multipart/form-data body and its content type: built once, so the load generator only sends."""
    boundary = "skinbenchboundary7f3a"
    head = (
        f"--{boundary}\r\n"
        f'Content-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
        f"Content-Type: {mime}\r\n\r\n"
    ).encode()
    return head + data + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"
