from __future__ import annotations

import io

from PIL import Image

from benchmarks import images
from runtime.preprocess import preprocess


def test_mix_has_every_kind_at_its_size_and_format() -> None:
    mix = images.mix()
    assert list(mix) == [k.name for k in images.KINDS]
    for kind in images.KINDS:
        img = Image.open(io.BytesIO(mix[kind.name]))
        assert img.format == kind.fmt
        assert img.size == kind.size
        assert preprocess(mix[kind.name], (32, 32)).shape == (32, 32, 3)


def test_phone_photo_is_stored_sideways_with_exif_orientation() -> None:
    phone = next(k for k in images.KINDS if k.name.startswith("phone"))
    data = images.encode(phone)
    assert Image.open(io.BytesIO(data)).getexif().get(0x0112) == 6
    assert len(data) > 1_000_000  # photographic detail, not a flat colour


def test_mix_is_deterministic() -> None:
    thumb = images.KINDS[0]
    assert images.encode(thumb, seed=3) == images.encode(thumb, seed=3)
    assert images.encode(thumb, seed=3) != images.encode(thumb, seed=4)


def test_multipart_body_carries_the_file() -> None:
    body, content_type = images.multipart(b"\xff\xd8data", "a.jpg", "image/jpeg")
    boundary = content_type.split("boundary=")[1]
    assert body.startswith(f"--{boundary}\r\n".encode())
    assert b'name="file"; filename="a.jpg"' in body
    assert b"\xff\xd8data" in body and body.endswith(f"--{boundary}--\r\n".encode())
