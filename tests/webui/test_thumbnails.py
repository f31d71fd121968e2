"""A batch's tiles show small copies of the photos, upright, and let them go with the photos."""

from __future__ import annotations

from typing import Any

import pytest
from PIL import Image

from tests.images import encode
from tests.webui.conftest import Console
from tests.webui.test_orientation import COLOURS, SPOTS, expected, quadrants

pytestmark = pytest.mark.browser

TILES = "#batch-list img.thumb"


def expect(locator: Any) -> Any:
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(locator)


def jpeg(img: Image.Image, orientation: int = 1) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(img, "JPEG", quality=95, exif=exif.tobytes())


def tiles(page: Any, count: int) -> list[dict[str, Any]]:
    """Size and colours (at SPOTS) of each tile's image, once all `count` have loaded."""
    ready = "([sel, n]) => Array.from(document.querySelectorAll(sel)).filter((i) => i.complete).length === n"
    page.wait_for_function(ready, arg=[TILES, count])
    return [page.evaluate(COLOURS, [f"#batch-list li:nth-child({i + 1}) img", SPOTS]) for i in range(count)]


def test_tiles_hold_small_upright_copies_not_the_photos(page: Any, console: Console) -> None:
    console.allow(r"ERR_FILE_NOT_FOUND")  # the test's own tries of the copies let go
    page.goto("/")
    wide = quadrants((1600, 800))
    files = [
        {"name": "wide.jpg", "mimeType": "image/jpeg", "buffer": jpeg(wide)},
        # Stored 1600×800 and turned a quarter clockwise by its EXIF: upright 800×1600.
        {"name": "turned.jpg", "mimeType": "image/jpeg", "buffer": jpeg(wide, orientation=6)},
        {"name": "small.png", "mimeType": "image/png", "buffer": encode(quadrants((64, 32)), "PNG")},
    ]
    page.set_input_files("#file-input", files=files)
    shown = tiles(page, 3)
    # A tile is 52 px: each photo's copy is 104 px on its short side (none is drawn larger than it is).
    # With the photo itself a 12 MP photo held a ~30 MB decode per tile.
    turned = wide.transpose(Image.Transpose.ROTATE_270)
    for got, size, truth in zip(
        shown, [(208, 104), (104, 208), (64, 32)], [wide, turned, quadrants((64, 32))], strict=True
    ):
        assert got["size"] == list(size)
        for colour, want in zip(got["colours"], expected(truth), strict=True):
            assert all(abs(a - b) <= 8 for a, b in zip(colour, want, strict=True)), (size, got["colours"])
    # The preview shows the photo itself, full size.
    assert page.evaluate("document.getElementById('preview').naturalWidth") == 1600

    # Copies of images no longer chosen are let go.
    old = page.eval_on_selector_all(TILES, "tiles => tiles.map((t) => t.src)")
    page.click("#clear")
    gone = """(urls) => Promise.all(urls.map((url) => new Promise((resolve) => {
        const probe = new Image();
        probe.onload = () => resolve(false);
        probe.onerror = () => resolve(true);
        probe.src = url;
    })))"""
    assert page.evaluate(gone, old) == [True, True, True]


def test_a_file_the_browser_cannot_show_gets_a_plain_tile(page: Any) -> None:
    page.goto("/")
    files = [
        {"name": "broken.jpg", "mimeType": "image/jpeg", "buffer": b"\xff\xd8 not a JPEG after all"},
        {"name": "small.png", "mimeType": "image/png", "buffer": encode(quadrants((64, 32)), "PNG")},
    ]
    page.set_input_files("#file-input", files=files)
    expect(page.locator("#batch-list li:nth-child(1) .thumb-missing")).to_have_text("?")
    expect(page.locator("#batch-list li:nth-child(2) img.thumb")).to_have_count(1)
