"""A WebP with an EXIF orientation: the page shows it upright, as the server analyses it."""

from __future__ import annotations

import io
import re
import struct
from typing import Any

import pytest
from PIL import Image

from runtime.preprocess import ImageError, decode_rgb
from tests.images import encode

pytestmark = pytest.mark.browser

QUADRANTS = [(230, 20, 20), (20, 200, 20), (20, 20, 230), (230, 230, 20)]  # top-left, top-right, bottom-…
SPOTS = [(0.25, 0.25), (0.75, 0.25), (0.25, 0.75), (0.75, 0.75)]


def expect(locator: Any) -> Any:
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(locator)


def quadrants(size: tuple[int, int] = (64, 32)) -> Image.Image:
    w, h = size
    img = Image.new("RGB", size)
    for (x, y), colour in zip([(0, 0), (w // 2, 0), (0, h // 2), (w // 2, h // 2)], QUADRANTS, strict=True):
        img.paste(colour, (x, y, x + w // 2, y + h // 2))
    return img


def webp(img: Image.Image, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(img, "WEBP", lossless=True, exif=exif.tobytes())


def with_exif_chunk(data: bytes, payload: bytes, flag: bool = True) -> bytes:
    """`data` (a WebP with an EXIF chunk) with that chunk's payload and VP8X's EXIF flag as given."""
    at = data.index(b"EXIF")
    size = struct.unpack("<I", data[at + 4 : at + 8])[0]
    chunk = b"EXIF" + struct.pack("<I", len(payload)) + payload + b"\0" * (len(payload) % 2)
    out = bytearray(data[:at] + chunk + data[at + 8 + size + size % 2 :])
    out[4:8] = struct.pack("<I", len(out) - 8)
    out[20] = out[20] | 0x08 if flag else out[20] & ~0x08
    return bytes(out)


def stored(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data)).convert("RGB")


def upright(data: bytes) -> Image.Image:
    """The image as the server sees it; one it refuses (bad EXIF) is shown as stored."""
    try:
        return decode_rgb(data)
    except ImageError:
        return stored(data)


# The colours at SPOTS of the image `selector`, null until it has loaded.
COLOURS = """([selector, spots]) => {
  const img = document.querySelector(selector);
  if (!img || !img.complete || !img.naturalWidth) return null;
  const c = document.createElement("canvas");
  c.width = img.naturalWidth;
  c.height = img.naturalHeight;
  const ctx = c.getContext("2d");
  ctx.drawImage(img, 0, 0);
  const at = ([x, y]) => ctx.getImageData(Math.floor(x * c.width), Math.floor(y * c.height), 1, 1).data;
  return {size: [c.width, c.height], colours: spots.map((s) => Array.from(at(s).slice(0, 3)))};
}"""


def shows(page: Any, selector: str, img: Image.Image, wait: bool = True) -> bool:
    """Whether `selector` shows `img` (its size and the colours at SPOTS), waiting up to 10 s if `wait`."""
    want = {"size": list(img.size), "colours": expected(img)}
    check = (
        f"(arg) => {{ const got = ({COLOURS})(arg); return Boolean(got) && got.size[0] === arg[2].size[0] &&"
        " got.size[1] === arg[2].size[1] && got.colours.every((c, i) =>"
        " c.every((v, j) => Math.abs(v - arg[2].colours[i][j]) <= 8)); }"
    )
    if not wait:
        return bool(page.evaluate(check, [selector, SPOTS, want]))
    try:
        page.wait_for_function(check, arg=[selector, SPOTS, want], timeout=10_000)
    except Exception:
        return False
    return True


def expected(img: Image.Image) -> list[list[int]]:
    return [list(img.getpixel((int(x * img.width), int(y * img.height)))) for x, y in SPOTS]


def cases() -> list[tuple[str, bytes]]:
    base = quadrants()
    out = [(f"orientation {o}", webp(base, o)) for o in range(1, 9)]
    six = webp(base, 6)
    exif = Image.Exif()
    exif[0x0112] = 6
    raw = exif.tobytes().removeprefix(b"Exif\0\0")  # the TIFF header and IFD, as WebP stores them
    prefixed = b"Exif\0\0" + raw
    out += [
        ("JPEG's Exif prefix kept in the chunk", with_exif_chunk(six, prefixed)),
        ("EXIF chunk not flagged in VP8X (libwebp ignores it)", with_exif_chunk(six, raw, flag=False)),
        ("orientation 9 (not one)", webp(base, 9)),
        ("EXIF chunk of garbage (the server refuses it)", with_exif_chunk(six, b"\x01\x02garbage")),
    ]
    return out


def test_every_exif_orientation_of_a_webp_is_shown_as_the_server_sees_it(page: Any) -> None:
    page.goto("/")
    named = cases()
    files = [
        {"name": f"{i}.webp", "mimeType": "image/webp", "buffer": data} for i, (_, data) in enumerate(named)
    ]
    page.set_input_files("#file-input", files=files)
    tile = "#batch-list li:nth-child({}) img"
    turned = [i for i, (_, data) in enumerate(named) if upright(data).tobytes() != stored(data).tobytes()]
    for i in turned:
        assert shows(page, tile.format(i + 1), upright(named[i][1])), named[i][0]
    # Those to leave as stored have less to do than those turned, so by now they would have been turned too.
    for i, (name, data) in enumerate(named):
        assert shows(page, tile.format(i + 1), upright(data), wait=i in turned), name


def test_a_turned_webp_gets_its_heatmap_over_the_upright_photo(page: Any) -> None:
    page.goto("/")
    # Stored 128×96 and turned a quarter by its EXIF: the server analyses it 96×128.
    photo = Image.new("RGB", (128, 96), (200, 40, 40))
    photo.paste((255, 0, 0), (64, 0, 128, 48))
    data = webp(photo, 6)
    truth = upright(data)
    assert truth.size == (96, 128)
    other = {"name": "other.png", "mimeType": "image/png", "buffer": encode(quadrants(), "PNG")}
    page.set_input_files(
        "#file-input", files=[{"name": "turned.webp", "mimeType": "image/webp", "buffer": data}, other]
    )
    assert shows(page, "#preview", truth)
    assert shows(page, "#batch-list li:first-child img", truth)  # the tile too
    with page.expect_response(re.compile(r"/api/predict")) as answer:
        page.click("#analyse")
    expect(page.locator("#busy")).to_be_hidden()
    heatmap = answer.value.json()["results"][0]["heatmap"]
    canvas = page.locator("#heatmap")
    expect(canvas).to_be_visible()
    photo, overlay = page.locator("#preview").bounding_box(), canvas.bounding_box()
    assert photo["height"] / photo["width"] == pytest.approx(128 / 96, rel=0.02)
    for key in ("x", "y", "width", "height"):
        assert overlay[key] == pytest.approx(photo[key], abs=1)
    # The bright quarter (stored top-right) is at the upright photo's bottom-right: so is the map's peak.
    values = heatmap["values"]
    rows, cols = len(values), len(values[0])
    peak = max(((r, c) for r in range(rows) for c in range(cols)), key=lambda rc: values[rc[0]][rc[1]])
    assert peak[0] >= rows // 2 and peak[1] >= cols // 2
