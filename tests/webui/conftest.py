"""Browser-test fixtures: one real server (uvicorn) and one headless Chromium for the whole session.

Without /usr/bin/chromium the browser tests skip, except under CI (env CI set), where they must run and fail.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.server import start_server, stop_server
from tests.webui.screenshots import CHROMIUM, launch
from tests.webui.uibundle import make_ui_bundle

DESKTOP = {"width": 1280, "height": 900}


def _require(what: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{what}; CI must run the browser tests", pytrace=False)
    pytest.skip(f"{what}; the browser tests need it")


@pytest.fixture(scope="session")
def chromium_path() -> str:
    if not Path(CHROMIUM).is_file():
        _require(f"{CHROMIUM} is missing (apt-get install chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        _require("Playwright is not installed (pip install playwright)")
    return CHROMIUM


@pytest.fixture(scope="session")
def ui_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """22 real class names (red → Acne, green → Actinic Keratosis) and a full report."""
    return make_ui_bundle(tmp_path_factory.mktemp("ui-bundle"))


@pytest.fixture(scope="session")
def ui_server(ui_bundle: Path) -> Iterator[str]:
    # A 1 MB image limit (default 10): the page must take its limits from /api/info, not from its defaults.
    url, process = start_server(ui_bundle, env={"SKIN_MAX_IMAGE_MB": "1"})
    yield url
    stop_server(process)


@pytest.fixture(scope="session")
def browser(chromium_path: str) -> Iterator[Any]:
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=10_000)  # a shared 2-core CI machine can be slow
    with sync_playwright() as playwright:
        chromium = launch(playwright, chromium_path)
        yield chromium
        chromium.close()


@pytest.fixture(scope="session")
def axe(chromium_path: str) -> Any:
    """axe-core as axe-playwright-python bundles it (no CDN, no network): axe.run(page) -> its results."""
    try:
        from axe_playwright_python.sync_playwright import Axe
    except ImportError:
        _require("axe-playwright-python is not installed (pip install -e '.[dev]')")
    return Axe()


class Console:
    """Console errors and uncaught exceptions of one page; a test names the ones it expects."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.allowed: list[re.Pattern[str]] = []

    def allow(self, pattern: str) -> None:
        self.allowed.append(re.compile(pattern))

    def unexpected(self) -> list[str]:
        return [e for e in self.errors if not any(p.search(e) for p in self.allowed)]

    def watch(self, page: Any) -> None:
        page.on("console", lambda msg: self.errors.append(msg.text) if msg.type == "error" else None)
        page.on("pageerror", lambda exc: self.errors.append(f"uncaught: {exc}"))


@pytest.fixture
def console() -> Console:
    return Console()


@pytest.fixture
def new_page(browser: Any, ui_server: str, console: Console) -> Iterator[Any]:
    """new_page(**context_options) -> a page on the test server whose console errors fail the test."""
    contexts: list[Any] = []

    def make(**options: Any) -> Any:
        settings = {"viewport": DESKTOP, "color_scheme": "light", "accept_downloads": True, **options}
        context = browser.new_context(base_url=ui_server, **settings)
        contexts.append(context)
        page = context.new_page()
        console.watch(page)
        return page

    yield make
    for context in contexts:
        context.close()
    assert console.unexpected() == [], "console errors on the page"


@pytest.fixture
def page(new_page: Any) -> Any:
    return new_page()
