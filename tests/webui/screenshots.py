"""Screenshots of the web page for the README: desktop and phone width, light and dark.

    .venv/bin/python -m tests.webui.screenshots              # writes docs/screenshots/*.png
    .venv/bin/python -m tests.webui.screenshots --out DIR    # somewhere else

It serves the 22-class demo bundle from tests/webui/uibundle.py with the real runtime (uvicorn) and drives
Debian's Chromium through Playwright (apt-get install chromium; pip install playwright).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

from tests.webui.uibundle import lesion_photo

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
]
DEFAULT_OUT = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
DESKTOP: dict[str, Any] = {"viewport": {"width": 1280, "height": 900}}
PHONE: dict[str, Any] = {
    "viewport": {"width": 390, "height": 844},
    "device_scale_factor": 2,
    "is_mobile": True,
    "has_touch": True,
}


def launch(playwright: Any, executable: str = CHROMIUM) -> Any:
    return playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)


def _analysed_page(browser: Any, url: str, device: dict[str, Any], theme: str, photo: bytes) -> Any:
    context = browser.new_context(**device, color_scheme=theme)
    page = context.new_page()
    page.goto(url)
    page.locator("#model-line .model-name").wait_for()
    page.set_input_files(
        "#file-input", files=[{"name": "forearm-close-up.jpg", "mimeType": "image/jpeg", "buffer": photo}]
    )
    page.click("#analyse")
    page.locator("#result").wait_for()
    page.locator("#heatmap").wait_for()
    return page


def take_screenshots(browser: Any, url: str, out_dir: str | Path) -> list[Path]:
    """Write the README's PNGs into ``out_dir``; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    photo = lesion_photo()
    written: list[Path] = []

    def shot(page: Any, name: str, *, full_page: bool = True) -> None:
        path = out / f"{name}.png"
        page.screenshot(path=str(path), full_page=full_page, animations="disabled")
        written.append(path)

    for theme in ("light", "dark"):
        for name, device in (("desktop", DESKTOP), ("phone", PHONE)):
            page = _analysed_page(browser, url, device, theme, photo)
            shot(page, f"analyse-{name}-{theme}")
            page.click("#tab-model")
            page.locator("#metrics-table tbody tr").first.wait_for()
            page.locator("#confusion-table td.cm").first.wait_for()
            if name == "phone":  # the per-class table, not the model facts, is what a phone shot should show
                page.locator("#per-class").evaluate("e => { e.scrollIntoView(); window.scrollBy(0, -12); }")
            else:
                page.evaluate("window.scrollTo(0, 0)")
            shot(page, f"model-{name}-{theme}", full_page=name == "desktop")
            page.context.close()
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write the web page's screenshots (PNG) for the README.")
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help=f"folder for the PNGs (default {DEFAULT_OUT})"
    )
    parser.add_argument("--chromium", default=CHROMIUM, help=f"Chromium executable (default {CHROMIUM})")
    args = parser.parse_args(argv)
    if not Path(args.chromium).is_file():
        print(f"error: no Chromium at {args.chromium} (apt-get install chromium)", file=sys.stderr)
        return 2
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        print("error: Playwright is not installed (pip install playwright)", file=sys.stderr)
        return 2
    from tests.server import start_server, stop_server
    from tests.webui.uibundle import make_ui_bundle

    with tempfile.TemporaryDirectory(prefix="skin-screens-") as tmp:
        url, process = start_server(make_ui_bundle(tmp))
        try:
            with sync_playwright() as playwright:
                browser = launch(playwright, args.chromium)
                try:
                    paths = take_screenshots(browser, url, args.out)
                finally:
                    browser.close()
        finally:
            stop_server(process)
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
