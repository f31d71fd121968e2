"""The page against a real bundle that carries thresholds: the warnings come from the server's answers."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.bundle_factory import make_bundle
from tests.images import COLOURS, encode
from tests.server import start_server, stop_server
from tests.webui.conftest import DESKTOP, Console

pytestmark = pytest.mark.browser

# The tiny graph: red is confident and familiar (energy -6.6); flat grey is neither (energy -2.4).
THRESHOLDS = {
    "confidence": {"min_probability": 0.9, "target_precision": 0.9},
    "ood": {"score": "energy", "max_score": -5.0, "acceptance": 0.95},
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    directory = make_bundle(tmp_path_factory.mktemp("ui-thresholds"), with_logits=True, thresholds=THRESHOLDS)
    url, process = start_server(directory)
    yield url
    stop_server(process)


def _png(name: str, rgb: tuple[int, int, int]) -> dict[str, Any]:
    from PIL import Image

    return {"name": name, "mimeType": "image/png", "buffer": encode(Image.new("RGB", (96, 80), rgb), "PNG")}


def test_foreign_looking_upload_is_named_as_such_before_the_classes(
    browser: Any, server: str, console: Console
) -> None:
    from playwright.sync_api import expect

    context = browser.new_context(base_url=server, viewport=DESKTOP)
    try:
        page = context.new_page()
        console.watch(page)
        page.goto("/")
        expect(page.locator("#model-line .model-name")).to_have_text("tiny-test-model 0.0.1")
        warnings = page.locator("#warnings .alert")
        for name, rgb, expected in (
            (
                "grey.png",
                (128, 128, 128),
                [
                    "This does not look like a skin photo.",
                    # What export measured: the threshold and its target, not "no class stands out".
                    "not confident about this image. Its top class is under 90.0\u00a0%: on the validation "
                    "images, the answers from there up were right 90\u00a0% of the time or more",
                ],
            ),
            ("red.png", COLOURS["red"], []),
        ):
            page.set_input_files("#file-input", files=[_png(name, rgb)])
            with page.expect_response(re.compile(r"/api/predict")) as answer:
                page.click("#analyse")
            expect(page.locator("#busy")).to_be_hidden()
            body = answer.value.json()
            assert body["in_distribution"] is (not expected)
            assert body["confidence"] == ("low" if expected else "ok")
            expect(warnings).to_have_count(len(expected))
            for i, words in enumerate(expected):
                expect(warnings.nth(i)).to_contain_text(words)
                expect(warnings.nth(i)).to_be_visible()
            # The words come before the classes in the page's order (as a screen reader reads it).
            assert page.evaluate(
                """() => ['#primary-name', '#top-list'].every(sel =>
                    document.querySelector('#warnings').compareDocumentPosition(document.querySelector(sel))
                    & Node.DOCUMENT_POSITION_FOLLOWING)"""
            )
            expect(page.locator("#top-list li").first).to_be_visible()
            expect(page.locator("#warnings .checks-off")).to_have_count(0)  # both checks are on
        with page.expect_download() as download:
            page.click("#export")
        data = json.loads(Path(download.value.path()).read_text())
        assert data["checks"] == {"confidence": True, "in_distribution": True}  # no note: nothing missing
        page.get_by_role("tab", name="Model").click()
        checks = page.locator("#model-facts .fact", has_text="Uncertainty checks").locator("li")
        expect(checks).to_have_text(
            [
                "Low confidence when the top class is under 90.0\u00a0%",
                "Unlike the training photos when the energy score is above -5.000",
            ]
        )
    finally:
        context.close()
    assert console.unexpected() == []


def test_a_model_that_never_reached_its_target_precision_says_so_not_that_no_class_stands_out(
    browser: Any, tmp_path: Path, console: Console
) -> None:
    """Export's threshold past 1 marks every answer low, a 99 % one too: the page must give that reason."""
    from playwright.sync_api import expect

    conf = {"min_probability": 1.00001, "target_precision": 0.9, "reached_on_validation": False}
    never = {"confidence": conf}
    url, process = start_server(make_bundle(tmp_path, with_logits=True, thresholds=never))
    context = browser.new_context(base_url=url, viewport=DESKTOP)
    try:
        page = context.new_page()
        console.watch(page)
        page.goto("/")
        page.set_input_files("#file-input", files=[_png("red.png", COLOURS["red"])])
        with page.expect_response(re.compile(r"/api/predict")) as answer:
            page.click("#analyse")
        body = answer.value.json()
        assert body["confidence"] == "low" and body["primary"]["probability"] > 0.9
        warning = page.locator("#warnings .alert")
        expect(warning).to_have_count(1)
        expect(warning).to_contain_text("even its most confident answers were right less often than")
        expect(warning).not_to_contain_text("No class stands out")
        with page.expect_download() as download:
            page.click("#export")
        data = json.loads(Path(download.value.path()).read_text())
        assert data["confidence"] == "low"
        assert data["checks"]["confidence_note"] == (
            "every answer of this model is marked low: on its validation images no confidence threshold "
            "reached the target precision"
        )
        page.get_by_role("tab", name="Model").click()
        checks = page.locator("#model-facts .fact", has_text="Uncertainty checks").locator("li")
        expect(checks.first).to_have_text(
            "Low confidence for every result: on the validation images no confidence threshold reached the "
            "target precision"
        )
    finally:
        context.close()
        stop_server(process)
    assert console.unexpected() == []
