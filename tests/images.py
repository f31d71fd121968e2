"""Small image builders for tests (Pillow only)."""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}


def encode(img: Image.Image, fmt: str = "JPEG", **params: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **params)
    return buf.getvalue()


def solid(colour: str = "red", size: tuple[int, int] = (96, 80), fmt: str = "JPEG") -> bytes:
    return encode(Image.new("RGB", size, COLOURS[colour]), fmt)


def png_header(width: int, height: int) -> bytes:
    """A PNG with a header claiming ``width`` x ``height`` and no pixel data: enough for a size check."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"") + chunk(b"IEND", b"")
