"""The web page in a real Chromium against the real service (uvicorn + the 22-class demo bundle)."""

from __future__ import annotations

import base64
import json
import re
import urllib.request
from datetime import datetime
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.images import encode, solid
from tests.webui.conftest import Console
from tests.webui.screenshots import take_screenshots

pytestmark = pytest.mark.browser

WEBUI = Path(__file__).resolve().parents[2] / "webui"
PREDICT = re.compile(r"/api/predict\?")


def expect(locator: Any) -> Any:
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(locator)


def png(colour: str, name: str | None = None) -> dict[str, Any]:
    return {"name": name or f"{colour}.png", "mimeType": "image/png", "buffer": solid(colour, fmt="PNG")}


def pct(p: float) -> str:
    return f"{p * 100:.1f}\u00a0%"


def sentence(text: str) -> str:
    text = text[0].upper() + text[1:]
    return text if text.endswith((".", "!", "?")) else text + "."


def open_page(page: Any) -> None:
    page.goto("/")
    expect(page.locator("#model-line .model-name")).to_have_text("skin-demo-b3 0.3.0")


def analyse(page: Any, files: list[dict[str, Any]]) -> dict[str, Any]:
    """Choose files, press Analyse, wait for the result; returns the API's JSON answer."""
    page.set_input_files("#file-input", files=files)
    with page.expect_response(re.compile(r"/api/predict")) as answer:
        page.click("#analyse")
    expect(page.locator("#busy")).to_be_hidden()
    body: dict[str, Any] = answer.value.json()
    return body


def test_upload_shows_busy_state_result_bars_and_all_classes(page: Any) -> None:
    open_page(page)
    expect(page.locator("#analyse")).to_be_disabled()
    page.set_input_files("#file-input", files=[png("red")])
    expect(page.locator("#preview")).to_be_visible()
    expect(page.locator("#preview-caption")).to_contain_text("red.png")

    held: list[Any] = []
    page.route(PREDICT, lambda route: held.append(route))  # hold the request to see the busy state
    page.focus("#analyse")
    page.keyboard.press("Enter")
    expect(page.locator("#busy")).to_be_visible()
    # Busy, the button refuses (aria-disabled) but keeps keyboard focus.
    expect(page.locator("#analyse")).to_have_attribute("aria-disabled", "true")
    assert page.evaluate("document.activeElement.id") == "analyse"
    # Only the result is busy: the "Analysing…" status next to it is still read out.
    expect(page.locator("#result")).to_have_attribute("aria-busy", "true")
    expect(page.locator("#results")).not_to_have_attribute("aria-busy", "true")
    expect(page.locator("#results-empty")).to_be_hidden()
    while not held:
        page.wait_for_timeout(20)
    with page.expect_response(PREDICT) as answer:
        held[0].continue_()
    result = answer.value.json()

    expect(page.locator("#busy")).to_be_hidden()
    expect(page.locator("#primary-name")).to_have_text("Acne")
    expect(page.locator("#primary-prob")).to_have_text(pct(result["primary"]["probability"]))
    # The outcome is read out (a polite live region), not only drawn.
    expect(page.locator("#announce")).to_have_text(
        "Most likely: Acne, " + pct(result["primary"]["probability"]) + "."
    )
    expect(page.locator("#prob-kind")).to_have_text("calibrated probability")
    expect(page.locator("#warnings .alert")).to_have_count(0)
    # This bundle has no thresholds: the page says that no warning means nothing, rather than staying silent.
    expect(page.locator("#warnings .checks-off")).to_have_text(
        "This model does not flag low confidence or images unlike the photos it learned from, "
        "so the absence of a warning here says nothing about either."
    )
    rows = page.locator("#top-list li")
    expect(rows).to_have_count(5)
    for i, top in enumerate(result["top"]):
        row = rows.nth(i)
        expect(row.locator(".bar-name")).to_have_text(top["display_name"])
        expect(row.locator(".bar-value")).to_have_text(pct(top["probability"]))
        width = row.locator(".bar-fill").evaluate("e => parseFloat(e.style.width)")
        assert width == pytest.approx(top["probability"] * 100, abs=0.01)

    toggle = page.locator("#toggle-all")
    expect(toggle).to_have_text("Show all 22 classes")
    toggle.click()
    expect(toggle).to_have_attribute("aria-expanded", "true")
    all_rows = page.locator("#all-list li")
    expect(all_rows).to_have_count(22)
    text = page.locator("#all-list").inner_text()
    assert "Infestations & Bites" in text and "Sun/Sunlight Damage" in text
    assert "Infestations_Bites" not in text and "Sun_Sunlight_Damage" not in text
    shown = [
        float(v.replace("\u00a0%", "").replace("< ", ""))
        for v in all_rows.locator(".bar-value").all_inner_texts()
    ]
    assert shown == sorted(shown, reverse=True)


def corner_image() -> dict[str, Any]:
    """Red all over, brightest red in the top-right quadrant: Acne's activation peaks there."""
    img = Image.new("RGB", (128, 96), (200, 40, 40))
    img.paste((255, 0, 0), (64, 0, 128, 48))
    return {"name": "corner.png", "mimeType": "image/png", "buffer": encode(img, "PNG")}


def test_heatmap_overlays_the_image_and_toggles(page: Any) -> None:
    open_page(page)
    result = analyse(page, [corner_image()])
    assert result["heatmap"]["label"] == "Acne"
    canvas = page.locator("#heatmap")
    expect(canvas).to_be_visible()
    expect(canvas).to_have_attribute("data-label", "Acne")
    expect(page.locator("#heatmap-caption")).to_contain_text("Acne")
    image_box, canvas_box = page.locator("#preview").bounding_box(), canvas.bounding_box()
    for key in ("x", "y", "width", "height"):
        assert canvas_box[key] == pytest.approx(image_box[key], abs=1)
    # Alpha follows the activation: high in the top-right quadrant, low elsewhere (rows top to bottom).
    alpha = canvas.evaluate(
        "c => [[0.1, 0.1], [0.9, 0.1], [0.1, 0.9], [0.9, 0.9]].map(([x, y]) =>"
        " c.getContext('2d').getImageData(Math.floor(x * c.width), Math.floor(y * c.height), 1, 1).data[3])"
    )
    top_left, top_right, bottom_left, bottom_right = alpha
    assert top_right > 200 and max(top_left, bottom_left, bottom_right) < 100

    page.locator("label.switch").click()
    expect(page.locator("#heatmap-toggle")).not_to_be_checked()
    expect(canvas).to_be_hidden()
    expect(page.locator("#heatmap-opacity")).to_be_disabled()
    page.locator("#heatmap-toggle").focus()
    page.keyboard.press("Space")
    expect(canvas).to_be_visible()

    page.get_by_label("Opacity").fill("20")
    expect(page.locator("#opacity-value")).to_have_text("20\u00a0%")
    assert canvas.evaluate("c => c.style.opacity") == "0.2"


def test_the_heatmap_opacity_is_said_once_with_its_unit(page: Any) -> None:
    # The <output> beside the slider is a live region: each step was said twice, "60" and "60 %".
    open_page(page)
    analyse(page, [corner_image()])
    slider = page.get_by_role("slider", name="Opacity")
    expect(slider).to_have_attribute("aria-valuetext", "55\u00a0%")
    slider.focus()
    page.keyboard.press("ArrowRight")
    expect(slider).to_have_attribute("aria-valuetext", "60\u00a0%")
    expect(page.locator("#opacity-value")).to_have_text("60\u00a0%")  # still shown
    expect(page.locator("#heatmap-controls").get_by_role("status")).to_have_count(0)


def test_a_flat_heatmap_is_said_in_words_not_drawn(page: Any) -> None:
    open_page(page)
    result = analyse(page, [png("red")])  # one colour all over: every cell of the map scales to 0
    assert result["heatmap"] and not any(v for row in result["heatmap"]["values"] for v in row)
    expect(page.locator("#primary-name")).to_have_text("Acne")
    expect(page.locator("#heatmap")).to_be_hidden()
    expect(page.locator("#heatmap-controls")).to_be_hidden()
    expect(page.locator("#preview-caption")).to_have_text(
        re.compile(r"^red\.png · .+ · no region stands out in the class activation map$")
    )


def test_heatmap_covers_only_the_centre_crop_when_the_bundle_crops(page: Any) -> None:
    # A bundle whose preprocessing center-crops: the model saw the middle square of a 2:1 photo.
    def cropping_info(route: Any) -> None:
        info = route.fetch().json()
        info["resize"]["mode"] = "center_crop"
        route.fulfill(json=info)

    page.route("**/api/info", cropping_info)
    open_page(page)
    wide = Image.new("RGB", (240, 120), (200, 40, 40))
    wide.paste((255, 0, 0), (120, 0, 180, 60))  # some contrast: a flat map is not drawn at all
    analyse(page, [{"name": "wide.png", "mimeType": "image/png", "buffer": encode(wide, "PNG")}])
    canvas = page.locator("#heatmap")
    expect(canvas).to_be_visible()
    image, overlay = page.locator("#preview").bounding_box(), canvas.bounding_box()
    assert overlay["height"] == pytest.approx(image["height"], abs=1)
    assert overlay["width"] == pytest.approx(image["width"] / 2, abs=1)
    assert overlay["x"] == pytest.approx(image["x"] + image["width"] / 4, abs=1)


@pytest.mark.parametrize(
    ("extent", "hot", "clear"),
    [
        # Cells only over the right half: the first column lands at the middle, the left half stays clear.
        pytest.param({"left": 0.5, "top": 0.0, "width": 0.5, "height": 1.0}, 0.53, 0.2, id="right-half"),
        # B3-like: the grid starts before the image's edge, so its first column falls outside and is cut off.
        pytest.param({"left": -0.5, "top": 0.0, "width": 1.5, "height": 1.0}, None, None, id="past-the-edge"),
    ],
)
def test_heatmap_cells_go_where_the_answer_places_them(
    page: Any, extent: dict[str, float], hot: float | None, clear: float | None
) -> None:
    open_page(page)
    answer = analyse(page, [corner_image()])
    heatmap = answer["heatmap"]
    assert heatmap["extent"] == {"left": 0.0, "top": 0.0, "width": 1.0, "height": 1.0}
    # Only the first column hot: where it lands on the canvas says where the grid was drawn.
    heatmap["values"] = [[1.0] + [0.0] * (heatmap["width"] - 1) for _ in range(heatmap["height"])]
    heatmap["extent"] = extent
    page.route(PREDICT, lambda route: route.fulfill(status=200, json=answer))
    page.click("#analyse")
    canvas = page.locator("#heatmap")
    expect(canvas).to_be_visible()
    # The canvas still covers exactly what the model saw; the grid is placed inside it.
    image_box, canvas_box = page.locator("#preview").bounding_box(), canvas.bounding_box()
    for key in ("x", "y", "width", "height"):
        assert canvas_box[key] == pytest.approx(image_box[key], abs=1)

    def alpha(x: float) -> int:
        return int(
            canvas.evaluate(
                "(c, x) => c.getContext('2d')"
                ".getImageData(Math.floor(x * c.width), c.height >> 1, 1, 1).data[3]",
                x,
            )
        )

    # Spread evenly (as before), the hot column would be the canvas's left edge.
    assert alpha(0.03) < 100
    if hot is not None:
        assert alpha(hot) > 200
    if clear is not None:
        assert alpha(clear) == 0
    if extent["left"] < 0:
        assert max(alpha(x / 10) for x in range(10)) < 100


def test_page_recovers_when_the_service_comes_back(page: Any, console: Console) -> None:
    console.allow(r"status of 503")
    calls: list[int] = []

    def first_unavailable(route: Any) -> None:
        calls.append(1)
        if len(calls) == 1:
            body = {"error": {"code": "starting", "message": "the model is loading"}}
            route.fulfill(status=503, json=body)
        else:
            route.continue_()

    page.route("**/api/info", first_unavailable)
    page.goto("/")
    expect(page.locator("#service-error")).to_contain_text("The model is loading")
    back = page.locator("#service-back")
    expect(back).to_have_attribute("aria-live", "polite")
    expect(back).to_be_empty()
    page.set_input_files("#file-input", files=[png("red")])
    expect(page.locator("#analyse")).to_be_disabled()
    # Asked again a few seconds later, without a reload: the error goes and Analyse works.
    expect(page.locator("#service-error")).to_be_hidden()
    expect(page.locator("#model-line .model-name")).to_have_text("skin-demo-b3 0.3.0")
    expect(page.locator("#analyse")).to_be_enabled()
    assert len(calls) == 2
    # The alert going away was silent: the recovery is said, once, politely.
    expect(back).to_have_text("The model service is available again.")


def test_a_page_that_loads_normally_says_nothing_of_the_service(page: Any) -> None:
    open_page(page)
    expect(page.locator("#service-back")).to_be_empty()


def test_a_service_that_stays_down_is_said_once_not_at_every_retry(page: Any, console: Console) -> None:
    console.allow(r"status of 503")
    page.clock.install()
    body = {"error": {"code": "starting", "message": "the model is loading"}}
    page.route("**/api/info", lambda route: route.fulfill(status=503, json=body))
    page.goto("/")
    alert = page.locator("#service-error")
    expect(alert).to_contain_text("The model is loading")
    expect(alert).to_have_attribute("role", "alert")
    page.evaluate("""() => {
        window.changes = 0;
        const count = () => { window.changes += 1; };
        new MutationObserver(count).observe(document.getElementById("service-error"),
                                            {childList: true, characterData: true, subtree: true});
    }""")
    for pause in [2_000, 4_000, 8_000]:  # three more tries, each answered as the first
        with page.expect_response("**/api/info"):
            page.clock.run_for(pause)
    # Its text was replaced by the same words each time, and a screen reader read the alert again.
    assert page.evaluate("window.changes") == 0
    expect(alert).to_contain_text("The model is loading")


def _info(ui_server: str) -> dict[str, Any]:
    with urllib.request.urlopen(ui_server + "/api/info") as response:
        info: dict[str, Any] = json.load(response)
    return info


@pytest.mark.parametrize("change", ["empty", "no-classes", "limits-without-types"])
def test_a_model_description_the_page_cannot_read_is_said(page: Any, ui_server: str, change: str) -> None:
    info = _info(ui_server)
    if change == "empty":
        info = {}
    elif change == "no-classes":
        info.update(classes=[], num_classes=0)
    else:
        del info["limits"]["allowed_types"]
    page.route("**/api/info", lambda route: route.fulfill(status=200, json=info))
    page.goto("/")
    expect(page.locator("#service-error")).to_have_text(
        "The model service is not available: "
        "Its description of the model is not one this page can read. Trying again…"
    )
    expect(page.locator("#model-line")).to_have_text("Model service unavailable")
    page.set_input_files("#file-input", files=[png("red")])  # checked against the page's own limits
    expect(page.locator("#viewer")).to_be_visible()
    expect(page.locator("#analyse")).to_be_disabled()
    page.get_by_role("tab", name="Model").click()
    expect(page.locator("#model-facts")).to_have_text("ModelThe model service is not available.")


def test_wrong_type_and_oversized_file_are_refused_in_words(page: Any) -> None:
    open_page(page)
    page.set_input_files(
        "#file-input", files=[{"name": "notes.txt", "mimeType": "text/plain", "buffer": b"hi"}]
    )
    error = page.locator("#input-error")
    expect(error).to_have_text("notes.txt is not a JPEG, PNG or WebP image (it is text/plain).")
    expect(page.locator("#viewer")).to_be_hidden()
    expect(page.locator("#analyse")).to_be_disabled()

    expect(page.locator("#limits-hint")).to_have_text(
        "JPEG, PNG or WebP, up to 1\u00a0MB each; up to 16 images at once."
    )
    big = b"\x89PNG\r\n\x1a\n" + bytes(1024 * 1024 - 7)  # 1 MB + 1 byte; the test server's limit is 1 MB
    page.set_input_files("#file-input", files=[{"name": "big.png", "mimeType": "image/png", "buffer": big}])
    # One byte over: the rounded size equals the limit's, so the words say "over".
    expect(error).to_have_text("big.png is 1.0\u00a0MB, over the limit of 1\u00a0MB per image.")
    expect(page.locator("#analyse")).to_be_disabled()

    page.set_input_files("#file-input", files=[png("red")])
    expect(error).to_be_hidden()
    expect(page.locator("#analyse")).to_be_enabled()


def test_server_error_is_shown_in_words(page: Any, console: Console) -> None:
    console.allow(r"status of 4\d\d")  # Chromium logs every 4xx answer; this one is the point of the test
    open_page(page)
    page.set_input_files(
        "#file-input", files=[{"name": "broken.png", "mimeType": "image/png", "buffer": b"not an image"}]
    )
    with page.expect_response(PREDICT) as answer:
        page.click("#analyse")
    response = answer.value
    assert 400 <= response.status < 500
    message = response.json()["error"]["message"]
    expect(page.locator("#result-error")).to_have_text("The analysis failed: " + sentence(message))
    expect(page.locator("#result")).to_be_hidden()
    expect(page.locator("#results-empty")).to_be_hidden()  # not "choose an image": one was, and it failed


NGINX_PAGE = "<html><head><title>{0}</title></head><body><center><h1>{0}</h1></center><hr>nginx</body></html>"


@pytest.mark.parametrize(
    ("status", "headers", "words"),
    [
        pytest.param(
            413,
            {},
            "The upload is too large for the server or a proxy in front of it (HTTP 413); "
            "try fewer or smaller images.",
            id="413",
        ),
        pytest.param(
            429,
            {"Retry-After": "60"},
            "The server has had too many requests (HTTP 429); try again in 60 seconds.",
            id="429",
        ),
        pytest.param(
            502, {}, "The server is unavailable or busy (HTTP 502); try again in a moment.", id="502"
        ),
        pytest.param(
            503,
            {"Retry-After": "300"},
            "The server is unavailable or busy (HTTP 503); try again in 5 minutes.",
            id="503",
        ),
        pytest.param(
            504, {}, "The server took too long to answer (HTTP 504); try again in a moment.", id="504"
        ),
    ],
)
def test_a_proxy_error_page_is_said_in_words(
    page: Any, console: Console, status: int, headers: dict[str, str], words: str
) -> None:
    console.allow(rf"status of {status}")
    open_page(page)
    html = NGINX_PAGE.format(f"{status} Error")
    page.route(
        PREDICT,
        lambda route: route.fulfill(status=status, headers=headers, content_type="text/html", body=html),
    )
    page.set_input_files("#file-input", files=[png("red")])
    page.click("#analyse")
    expect(page.locator("#result-error")).to_have_text("The analysis failed: " + words)


def test_a_browser_without_abortsignal_timeout_analyses_and_still_times_out(page: Any) -> None:
    # Safari before 16 (iOS 15, where older iPhones and iPads stay) and Chrome before 103 have no
    # AbortSignal.timeout: every request threw there, and the page said the server could not be reached.
    page.clock.install()
    page.add_init_script("delete AbortSignal.timeout")  # after the clock's, which fakes it too
    open_page(page)
    analyse(page, [png("red")])
    expect(page.locator("#primary-name")).to_have_text("Acne")
    held: list[Any] = []
    page.route(PREDICT, lambda route: held.append(route))  # a server that never answers
    page.click("#analyse")
    while not held:
        page.wait_for_timeout(20)
    page.clock.fast_forward(120_000)
    expect(page.locator("#result-error")).to_have_text(
        "The analysis failed: The server did not answer within 2 minutes; try again."
    )
    expect(page.locator("#busy")).to_be_hidden()


def test_a_failed_batch_request_stays_on_screen(page: Any, console: Console) -> None:
    console.allow(r"net::ERR_FAILED|Failed to load resource")
    open_page(page)
    page.route(re.compile(r"/api/predict/batch"), lambda route: route.abort())
    page.set_input_files("#file-input", files=[png("red"), png("green")])
    page.click("#analyse")
    error = page.locator("#result-error")
    expect(error).to_have_text("The analysis failed: The server could not be reached; check the connection.")
    expect(page.locator("#results-empty")).to_be_hidden()
    # Read out once: the message box is an alert; the live region does not repeat it.
    expect(error).to_have_attribute("role", "alert")
    expect(page.locator("#announce")).to_have_text("")
    page.locator(".batch-item").nth(1).click()  # still there while looking through the images
    expect(error).to_be_visible()


def test_a_new_analysis_replaces_the_old_result_even_when_it_fails(page: Any, console: Console) -> None:
    console.allow(r"net::ERR_FAILED|Failed to load resource")
    open_page(page)
    analyse(page, [png("red")])
    expect(page.locator("#primary-name")).to_have_text("Acne")
    expect(page.locator("#export")).to_be_enabled()

    held: list[Any] = []
    page.route(PREDICT, lambda route: held.append(route))
    page.click("#analyse")
    expect(page.locator("#busy")).to_be_visible()
    # While the new request runs, neither the old result nor the "choose an image" prompt is on show.
    expect(page.locator("#result")).to_be_hidden()
    expect(page.locator("#results-empty")).to_be_hidden()
    expect(page.locator("#export")).to_be_disabled()
    while not held:
        page.wait_for_timeout(20)
    held[0].abort()
    error = page.locator("#result-error")
    expect(error).to_have_text("The analysis failed: The server could not be reached; check the connection.")
    # The failure is not drawn next to (or exported as) the result of the earlier run.
    expect(page.locator("#result")).to_be_hidden()
    expect(page.locator("#export")).to_be_disabled()
    expect(page.locator("#heatmap-controls")).to_be_hidden()


def test_a_slow_analysis_can_be_cancelled_and_other_images_chosen(page: Any, console: Console) -> None:
    console.allow(r"net::ERR_FAILED|Failed to load resource")
    open_page(page)
    expect(page.locator("#cancel")).to_be_hidden()
    held: list[Any] = []
    page.route(PREDICT, lambda route: held.append(route))  # a slow upload, or a slow server
    page.set_input_files("#file-input", files=[png("red")])
    page.focus("#analyse")
    page.keyboard.press("Enter")
    while not held:
        page.wait_for_timeout(20)
    # Without Cancel the page held the photo (and every control) until the 2-minute timeout.
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "cancel"
    page.keyboard.press("Enter")
    expect(page.locator("#busy")).to_be_hidden()
    expect(page.locator("#cancel")).to_be_hidden()
    # Not a failure: no alert, the prompt again, and focus on the next step rather than lost with the button.
    expect(page.locator("#result-error")).to_be_hidden()
    expect(page.locator("#results-empty")).to_be_visible()
    expect(page.locator("#announce")).to_have_text(
        "Analysis cancelled; choose other images or press Analyse again."
    )
    assert page.evaluate("document.activeElement.id") == "analyse"
    expect(page.locator("#choose")).to_be_enabled()
    page.unroute(PREDICT)
    analyse(page, [png("green")])
    expect(page.locator("#primary-name")).to_have_text("Actinic Keratosis")


@pytest.mark.parametrize("focus", ["analyse", "cancel"])
def test_escape_cancels_a_slow_analysis(page: Any, console: Console, focus: str) -> None:
    console.allow(r"net::ERR_FAILED|Failed to load resource")
    open_page(page)
    held: list[Any] = []
    page.route(PREDICT, lambda route: held.append(route))
    page.set_input_files("#file-input", files=[png("red")])
    page.click("#analyse")
    while not held:
        page.wait_for_timeout(20)
    expect(page.locator("#cancel")).to_have_attribute("aria-keyshortcuts", "Escape")
    page.focus("#" + focus)
    # Only the Cancel button ended it: Escape did nothing.
    page.keyboard.press("Escape")
    expect(page.locator("#busy")).to_be_hidden()
    expect(page.locator("#result-error")).to_be_hidden()
    expect(page.locator("#announce")).to_have_text(
        "Analysis cancelled; choose other images or press Analyse again."
    )
    # Focus stays where it was; on Cancel, which hides, it goes to Analyse as a click on Cancel does.
    assert page.evaluate("document.activeElement.id") == "analyse"
    expect(page.locator("#choose")).to_be_enabled()


UNREADABLE = "The server's answer is not an analysis this page can read; try again, or reload the page."
BAD_ANSWER = "The analysis failed: " + UNREADABLE


def _reshaped(change: str, answer: dict[str, Any]) -> Any:
    if change == "no-top":
        del answer["top"]
    elif change == "string-probabilities":
        for score in answer["top"]:
            score["probability"] = str(score["probability"])
    elif change == "heatmap-short-of-rows":
        answer["heatmap"]["values"] = answer["heatmap"]["values"][:2]
    elif change == "a-list":
        return [answer]
    return answer


@pytest.mark.parametrize("change", ["no-top", "string-probabilities", "heatmap-short-of-rows", "a-list"])
def test_an_answer_of_the_wrong_shape_is_said_not_drawn(page: Any, change: str) -> None:
    open_page(page)
    good = analyse(page, [png("red")])
    expect(page.locator("#primary-name")).to_have_text("Acne")
    bad = _reshaped(change, json.loads(json.dumps(good)))
    page.route(PREDICT, lambda route: route.fulfill(status=200, json=bad))
    page.click("#analyse")
    expect(page.locator("#result-error")).to_have_text(BAD_ANSWER)
    # Neither the earlier result nor a half-drawn new one, and the page is not left busy.
    expect(page.locator("#result")).to_be_hidden()
    expect(page.locator("#heatmap-controls")).to_be_hidden()
    expect(page.locator("#analyse-label")).to_have_text("Analyse")
    expect(page.locator("#export")).to_be_disabled()


@pytest.mark.parametrize(
    ("content_type", "body", "words"),
    [
        pytest.param(
            "text/html",
            "<html><body><form action='/oauth2/sign_in'>Sign in</form></body></html>",
            "The server answered with a web page, not data (a sign-in page?); "
            "reload the page, then try again.",
            id="sign-in-page",
        ),
        pytest.param(
            "application/json",
            '{"predictions": {"Acne": 0.8',
            "The server's answer is cut off or not JSON; try again.",
            id="cut-off",
        ),
    ],
)
def test_an_answer_that_is_not_json_is_said_for_what_it_is(
    page: Any, content_type: str, body: str, words: str
) -> None:
    open_page(page)
    page.route(PREDICT, lambda route: route.fulfill(status=200, content_type=content_type, body=body))
    page.set_input_files("#file-input", files=[png("red")])
    page.click("#analyse")
    expect(page.locator("#result-error")).to_have_text("The analysis failed: " + words)


def test_a_batch_answer_that_cannot_be_matched_to_its_images_is_said(page: Any) -> None:
    open_page(page)
    page.set_input_files("#file-input", files=[png("red"), png("green")])
    with page.expect_response(re.compile(r"/api/predict/batch")) as answer:
        page.click("#analyse")
    body = answer.value.json()
    short = dict(body, results=body["results"][:1])  # two images, one entry: which image is it for?
    page.route(re.compile(r"/api/predict/batch"), lambda route: route.fulfill(status=200, json=short))
    page.click("#analyse")
    expect(page.locator("#result-error")).to_have_text(BAD_ANSWER)
    expect(page.locator(".batch-item .hint")).to_have_text(["Not analysed yet"] * 2)
    # A malformed entry is that image's failure; the others keep their results.
    broken = dict(body, results=[body["results"][0], {"filename": "green.png"}])
    page.unroute(re.compile(r"/api/predict/batch"))
    page.route(re.compile(r"/api/predict/batch"), lambda route: route.fulfill(status=200, json=broken))
    page.click("#analyse")
    expect(page.locator(".batch-item").nth(0)).to_contain_text("Acne")
    expect(page.locator(".batch-item").nth(1).locator(".batch-error")).to_have_text(UNREADABLE)
    expect(page.locator("#result-error")).to_be_hidden()


def test_an_answer_from_a_new_model_brings_its_description(page: Any, ui_server: str) -> None:
    """The server was given another model while the page was open: the page must not describe the old one."""
    open_page(page)
    answer = analyse(page, [png("red")])
    expect(page.locator("#prob-kind")).to_have_text("calibrated probability")
    info = _info(ui_server)
    info.update(model_name="skin-next", model_version="0.4.0", temperature=1.0)
    info["classes"][0] = {"label": "Acne_Vulgaris", "display_name": "Acne vulgaris"}
    answer["model"] = {"name": "skin-next", "version": "0.4.0", "demo": True}
    answer["predictions"]["Acne_Vulgaris"] = answer["predictions"].pop("Acne")
    for score in [answer["primary"], *answer["top"]]:
        if score["label"] == "Acne":
            score.update(label="Acne_Vulgaris", display_name="Acne vulgaris")
    page.route("**/api/info", lambda route: route.fulfill(status=200, json=info))
    page.route(PREDICT, lambda route: route.fulfill(status=200, json=answer))
    page.click("#analyse")
    expect(page.locator("#model-line .model-name")).to_have_text("skin-next 0.4.0")
    expect(page.locator("#prob-kind")).to_have_text("model probability (not calibrated)")
    page.click("#toggle-all")
    expect(page.locator("#all-list li").first.locator(".bar-name")).to_have_text("Acne vulgaris")


def test_a_temperature_fit_without_a_minimum_is_not_called_calibrated(page: Any, ui_server: str) -> None:
    # Export's verdict (report.json → calibration.degenerate, in /api/info): T = 0.05, its search's bound.
    info = _info(ui_server)
    info.update(temperature=0.05, calibration={"fitted": True, "degenerate": True})
    page.route("**/api/info", lambda route: route.fulfill(status=200, json=info))
    open_page(page)
    analyse(page, [png("red")])
    expect(page.locator("#prob-kind")).to_have_text("temperature-scaled probability (no calibration fit)")
    page.get_by_role("tab", name="Model").click()
    fact = page.locator("#model-facts .fact", has_text="Temperature").locator("dd")
    expect(fact).to_have_text("0.050 (no real fit: see Calibration)")


def test_a_threshold_beside_a_top_class_of_the_same_rounded_figure_gets_the_digits_that_part_them(
    page: Any, ui_server: str
) -> None:
    # A 4-class model: a top class of 0.250983 shows as 25.1 %, so "under 25.1 %" read as a contradiction.
    info = _info(ui_server)
    info["uncertainty"] = dict(info.get("uncertainty") or {}, min_probability=0.251063)
    info["thresholds"] = dict(
        info.get("thresholds") or {}, confidence={"min_probability": 0.251063, "target_precision": 0.9}
    )
    page.route("**/api/info", lambda route: route.fulfill(status=200, json=info))
    open_page(page)
    answer = analyse(page, [png("red")])
    answer["confidence"] = "low"
    answer["primary"]["probability"] = answer["top"][0]["probability"] = 0.250983
    page.route(PREDICT, lambda route: route.fulfill(status=200, json=answer))
    page.click("#analyse")
    expect(page.locator("#primary-prob")).to_have_text("25.1\u00a0%")
    expect(page.locator("#warnings .alert")).to_contain_text(
        "Its top class is under 25.11\u00a0%: on the validation"
    )


def test_a_late_report_of_the_old_model_does_not_replace_the_new_ones(
    page: Any, ui_server: str, ui_bundle: Path
) -> None:
    old_report = json.loads((ui_bundle / "report.json").read_text())
    new_report = dict(old_report, demo_note="The new model's report.")
    held: list[Any] = []

    def report(route: Any) -> None:
        if not held:
            held.append(route)  # the old model's report, slow to come
        else:
            route.fulfill(status=200, json=new_report)

    page.route("**/api/report", report)
    open_page(page)
    page.get_by_role("tab", name="Model").click()
    while not held:
        page.wait_for_timeout(20)
    page.get_by_role("tab", name="Analyse").click()
    answer = analyse(page, [png("red")])
    info = dict(_info(ui_server), model_version="0.4.0")
    answer["model"]["version"] = "0.4.0"
    page.route("**/api/info", lambda route: route.fulfill(status=200, json=info))
    page.route(PREDICT, lambda route: route.fulfill(status=200, json=answer))
    page.click("#analyse")
    expect(page.locator("#model-line .model-name")).to_have_text("skin-demo-b3 0.4.0")
    page.get_by_role("tab", name="Model").click()
    expect(page.locator("#report-note")).to_have_text("The new model's report.")
    with page.expect_response("**/api/report"):
        held[0].fulfill(status=200, json=old_report)
    page.get_by_role("tab", name="Analyse").click()  # round trips through the page: the old answer is read
    page.get_by_role("tab", name="Model").click()
    expect(page.locator("#report-note")).to_have_text("The new model's report.")


def test_batch_tiles_say_analysing_while_the_request_runs(page: Any) -> None:
    open_page(page)
    held: list[Any] = []
    page.route(re.compile(r"/api/predict/batch"), lambda route: held.append(route))
    page.set_input_files("#file-input", files=[png("red"), png("green")])
    expect(page.locator(".batch-item .hint")).to_have_text(["Not analysed yet"] * 2)
    page.click("#analyse")
    expect(page.locator(".batch-item .hint")).to_have_text(["Analysing…"] * 2)
    expect(page.locator("#results-empty")).to_be_hidden()
    page.locator(".batch-item").nth(1).focus()  # a keyboard user looks through the images meanwhile
    while not held:
        page.wait_for_timeout(20)
    with page.expect_response(re.compile(r"/api/predict/batch")):
        held[0].continue_()
    expect(page.locator(".batch-item").nth(1)).to_contain_text("Actinic Keratosis")
    expect(page.locator(".batch-item").nth(1)).to_be_focused()  # the tiles were redrawn; the place is kept


def test_the_live_region_forgets_an_outcome_when_its_image_goes(page: Any) -> None:
    open_page(page)
    analyse(page, [png("red")])
    announce = page.locator("#announce")
    expect(announce).to_contain_text("Most likely: Acne")
    page.set_input_files("#file-input", files=[png("green")])
    expect(announce).to_have_text("")
    analyse(page, [png("red")])
    expect(announce).to_contain_text("Most likely: Acne")
    page.click("#clear")
    expect(announce).to_have_text("")


@pytest.mark.parametrize("count", [1, 2])
def test_file_names_never_leave_the_page(page: Any, count: int) -> None:
    # A photo's file name often holds the patient's name: the upload carries a neutral one instead.
    # (Playwright does not show a body holding files, so the names the page gives its form are recorded.)
    page.add_init_script(
        """const append = FormData.prototype.append;
        window.sentNames = [];
        FormData.prototype.append = function (field, value, name) {
          window.sentNames.push(name);
          return append.apply(this, arguments);
        };"""
    )
    open_page(page)
    files = [png("red", "Jane Doe 1970-01-01.PNG"), png("green", "Мария Иванова.png")][:count]
    analyse(page, files)
    assert page.evaluate("window.sentNames") == ["image-1.png", "image-2.png"][:count]
    expect(page.locator("#preview-caption")).to_contain_text("Jane Doe 1970-01-01.PNG")  # shown, not sent


def test_batch_lists_results_in_order(page: Any) -> None:
    open_page(page)
    broken = {"name": "broken.webp", "mimeType": "image/webp", "buffer": b"RIFF0000WEBPjunk"}
    green = Image.new("RGB", (128, 96), (30, 200, 40))
    green.paste((40, 255, 50), (0, 0, 64, 48))  # some contrast, for a heatmap to show
    patterned = {"name": "green.png", "mimeType": "image/png", "buffer": encode(green, "PNG")}
    page.set_input_files("#file-input", files=[png("red"), patterned, broken])
    expect(page.locator("#batch-list li")).to_have_count(3)
    expect(page.locator("#analyse-label")).to_have_text("Analyse 3 images")
    with page.expect_response(re.compile(r"/api/predict/batch")) as answer:
        page.click("#analyse")
    body = answer.value.json()
    assert [r["filename"] for r in body["results"]] == ["image-1.png", "image-2.png", "image-3.webp"]

    items = page.locator(".batch-item")
    expect(items.nth(0)).to_contain_text("Acne")
    expect(items.nth(1)).to_contain_text("Actinic Keratosis")
    expect(items.nth(2).locator(".batch-error")).to_have_text(
        sentence(body["results"][2]["error"]["message"])
    )
    expect(page.locator("#batch-summary")).to_have_text("3 images · 2 analysed · 1 refused")
    expect(page.locator("#primary-name")).to_have_text("Acne")

    expect(page.locator("#announce")).to_have_text("Analysis done: 3 images · 2 analysed · 1 refused.")
    items.nth(1).focus()
    page.keyboard.press("Enter")
    expect(items.nth(1)).to_have_attribute("aria-pressed", "true")
    assert items.nth(1).evaluate("e => e === document.activeElement")  # focus survives the re-render
    expect(page.locator("#primary-name")).to_have_text("Actinic Keratosis")
    expect(page.locator("#heatmap")).to_have_attribute("data-label", "Actinic_Keratosis")
    items.nth(2).click()
    expect(page.locator("#result")).to_be_hidden()
    expect(page.locator("#result-error")).to_contain_text("broken.webp")


def test_drop_and_paste_choose_an_image(page: Any) -> None:
    open_page(page)
    data = base64.b64encode(solid("blue", fmt="PNG")).decode()
    send = """([kind, name, data]) => {
        const bytes = Uint8Array.from(atob(data), c => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], name, {type: "image/png"}));
        const event = kind === "drop"
            ? new DragEvent("drop", {dataTransfer: transfer, bubbles: true, cancelable: true})
            : new ClipboardEvent("paste", {clipboardData: transfer, bubbles: true, cancelable: true});
        (kind === "drop" ? document.getElementById("dropzone") : document).dispatchEvent(event);
    }"""
    page.get_by_role("tab", name="Model").click()
    page.evaluate(send, ["drop", "dropped.png", data])  # dropped while the model tab is open
    expect(page.locator("#panel-analyse")).to_be_visible()
    expect(page.locator("#preview-caption")).to_contain_text("dropped.png")
    page.evaluate(send, ["paste", "pasted.png", data])
    expect(page.locator("#preview-caption")).to_contain_text("pasted.png")
    with page.expect_response(PREDICT):
        page.click("#analyse")
    expect(page.locator("#primary-name")).to_have_text("Benign Tumors")

    held: list[Any] = []
    page.route(PREDICT, lambda route: held.append(route))
    page.click("#analyse")
    expect(page.locator("#busy")).to_be_visible()
    page.evaluate(send, ["paste", "late.png", data])  # while busy: kept out, and the user is told
    expect(page.locator("#input-error")).to_have_text(
        "Wait for the analysis to finish (or cancel it), then add the new images again."
    )
    expect(page.locator("#preview-caption")).to_contain_text("pasted.png")
    while not held:
        page.wait_for_timeout(20)
    held[0].continue_()
    expect(page.locator("#primary-name")).to_have_text("Benign Tumors")


def test_the_tab_follows_the_address_while_the_page_is_open(page: Any) -> None:
    open_page(page)
    page.goto("/#model")  # a link to the model tab, followed from the open page: no reload
    expect(page.locator("#panel-model")).to_be_visible()
    expect(page.get_by_role("tab", name="Model")).to_have_attribute("aria-selected", "true")
    page.go_back()
    expect(page.locator("#panel-analyse")).to_be_visible()
    page.go_forward()
    expect(page.locator("#panel-model")).to_be_visible()
    page.focus(".skip-link")  # its own fragment (#main) must not change the tab
    page.keyboard.press("Enter")
    assert page.url.endswith("#main")
    expect(page.locator("#panel-model")).to_be_visible()


def test_a_dropped_folder_is_named_as_a_folder(page: Any, tmp_path: Path) -> None:
    folder = tmp_path / "Holiday photos"
    folder.mkdir()
    (folder / "red.png").write_bytes(solid("red", fmt="PNG"))
    (tmp_path / "green.png").write_bytes(solid("green", fmt="PNG"))
    open_page(page)
    # A real drag from the file manager (a script's DataTransfer cannot hold a folder).
    drag = page.context.new_cdp_session(page)
    data = {"items": [], "files": [str(folder), str(tmp_path / "green.png")], "dragOperationsMask": 1}
    for kind in ["dragEnter", "dragOver", "drop"]:
        drag.send("Input.dispatchDragEvent", {"type": kind, "x": 300, "y": 300, "data": data})
    expect(page.locator("#input-error")).to_have_text(
        "Holiday photos is a folder; open it and drop or choose the images inside."
    )
    expect(page.locator("#preview-caption")).to_contain_text("green.png")


def test_a_real_drop_during_an_analysis_is_answered(page: Any, tmp_path: Path) -> None:
    (tmp_path / "late.png").write_bytes(solid("blue", fmt="PNG"))
    open_page(page)
    held: list[Any] = []
    page.route(PREDICT, lambda route: held.append(route))
    page.set_input_files("#file-input", files=[png("red")])
    page.click("#analyse")
    while not held:
        page.wait_for_timeout(20)
    # The browser's own drag (a script's drop event skips the dragover that decides whether a drop happens).
    drag = page.context.new_cdp_session(page)
    data = {"items": [], "files": [str(tmp_path / "late.png")], "dragOperationsMask": 1}
    for kind in ["dragEnter", "dragOver", "drop"]:
        drag.send("Input.dispatchDragEvent", {"type": kind, "x": 300, "y": 300, "data": data})
    expect(page.locator("#input-error")).to_have_text(
        "Wait for the analysis to finish (or cancel it), then add the new images again."
    )
    held[0].continue_()
    expect(page.locator("#primary-name")).to_have_text("Acne")
    expect(page.locator("#preview-caption")).to_contain_text("red.png")


@pytest.mark.parametrize("kind", ["text/uri-list", "text/plain"])
def test_a_dragged_link_or_text_is_answered(page: Any, kind: str) -> None:
    open_page(page)
    page.set_input_files("#file-input", files=[png("red")])
    # The browser's own drag, as from another window (a link from an address bar, a line of a mail): the page
    # took no drop of it and said nothing.
    drag = page.context.new_cdp_session(page)
    data = {"items": [{"mimeType": kind, "data": "https://example.org/rash.jpg"}], "dragOperationsMask": 1}
    for event in ["dragEnter", "dragOver", "drop"]:
        drag.send("Input.dispatchDragEvent", {"type": event, "x": 300, "y": 300, "data": data})
    expect(page.locator("#input-error")).to_have_text(
        "That is a link or text, not an image file; save the image, then drop or choose the file."
    )
    expect(page.locator("#preview-caption")).to_contain_text("red.png")  # what was chosen stays
    assert page.url.endswith("/#analyse") or page.url.endswith("/")


def test_a_paste_without_an_image_is_answered(page: Any) -> None:
    open_page(page)
    page.set_input_files("#file-input", files=[png("red")])
    page.evaluate("""() => {
        const transfer = new DataTransfer();
        transfer.setData("text/plain", "https://example.org/rash.jpg");
        const paste = {clipboardData: transfer, bubbles: true, cancelable: true};
        document.dispatchEvent(new ClipboardEvent("paste", paste));
    }""")
    expect(page.locator("#input-error")).to_have_text(
        "There is no image on the clipboard; copy the image itself (not its link), or choose a file."
    )
    expect(page.locator("#preview-caption")).to_contain_text("red.png")  # what was chosen stays


def test_model_tab_renders_the_report(page: Any, ui_bundle: Path) -> None:
    report = json.loads((ui_bundle / "report.json").read_text())
    names = report["class_names"]
    open_page(page)
    page.get_by_role("tab", name="Model").click()
    expect(page.locator("#panel-model")).to_be_visible()
    expect(page.locator("#panel-analyse")).to_be_hidden()
    assert page.url.endswith("#model")

    expect(page.locator("#model-facts")).to_contain_text("skin-demo-b3")
    expect(page.locator("#model-facts")).to_contain_text("no clinical data: a hand-built demo graph")
    checks = page.locator("#model-facts .fact", has_text="Uncertainty checks").locator("li")
    expect(checks).to_have_text(
        [
            re.compile(
                r"^Not flagged: low confidence or images unlike the photos it learned from · the bundle has "
            )
        ]
    )
    expect(page.locator("#demo-badge")).to_be_visible()
    expect(page.locator("#demo-note")).to_contain_text("demo model")
    expect(page.locator("#report-note")).to_have_text(report["demo_note"])

    stats = page.locator("#report-stats")
    expect(stats).to_contain_text("Accuracy" + pct(report["accuracy"]), use_inner_text=False)
    expect(stats).to_contain_text("Macro F1" + pct(report["macro avg"]["f1-score"]), use_inner_text=False)
    expect(stats).to_contain_text("Top-3 accuracy" + pct(report["top3_accuracy"]), use_inner_text=False)
    cal = report["calibration"]
    expect(page.locator("#calibration-stats")).to_contain_text(pct(cal["ece_after"]))
    expect(page.locator("#calibration-stats")).to_contain_text(pct(cal["ece_before"]) + " before")

    rows = page.locator("#metrics-table tbody tr")
    expect(rows).to_have_count(22)
    for i in (0, 7):
        label = names[i]
        cells = rows.nth(i).locator("td")
        expect(rows.nth(i).locator("th")).to_have_text(_display(label))
        expect(cells.nth(0)).to_have_text(f"{report[label]['precision']:.3f}")
        expect(cells.nth(2)).to_have_text(f"{report[label]['f1-score']:.3f}")
        expect(cells.nth(3)).to_have_text(str(int(report[label]["support"])))
        assert cells.nth(0).evaluate("e => e.style.getPropertyValue('--t')") != ""
    expect(page.locator("#metrics-table tfoot")).to_contain_text("Macro average")

    def arrow(key: str) -> str:
        button = page.locator(f'#metrics-table th[data-key="{key}"] .sort')
        return str(button.evaluate("e => getComputedStyle(e, '::after').content"))

    assert arrow("f1-score") == arrow("precision") == '" ↕"'  # nothing sorted yet
    # What a sort button shows is part of its name (WCAG 2.5.3 label in name), at desktop and phone widths.
    for width in (320, 1280):
        page.set_viewport_size({"width": width, "height": 900})
        for button in page.locator("#metrics-table .sort").all():
            shown = re.sub(r"\W", "", button.inner_text()).lower()
            assert shown and shown in re.sub(r"\W", "", button.get_attribute("aria-label") or "").lower()
    page.get_by_role("button", name="F1", exact=True).click()
    expect(page.locator('#metrics-table th[data-key="f1-score"]')).to_have_attribute(
        "aria-sort", "descending"
    )
    assert (arrow("f1-score"), arrow("precision")) == ('" ↓"', '" ↕"')
    best = max(names, key=lambda n: report[n]["f1-score"])
    expect(rows.first.locator("th")).to_have_text(_display(best))

    matrix = report["confusion_matrix"]
    cells = page.locator("#confusion-table td.cm")
    expect(cells).to_have_count(22 * 22)
    expect(cells.nth(0)).to_have_text(str(matrix[0][0]))
    expect(cells.nth(22 + 3)).to_have_text(str(matrix[1][3]))

    page.locator("#tab-model").focus()
    page.keyboard.press("ArrowLeft")
    expect(page.locator("#tab-analyse")).to_be_focused()
    expect(page.locator("#tab-analyse")).to_have_attribute("aria-selected", "true")
    expect(page.locator("#panel-analyse")).to_be_visible()


def _display(label: str) -> str:
    from runtime.bundle import display_name

    return display_name(label)


def test_a_slow_report_is_said_to_be_loading(page: Any) -> None:
    held: list[Any] = []
    page.route("**/api/report", lambda route: held.append(route))
    open_page(page)
    page.click("#tab-model")
    while not held:
        page.wait_for_timeout(20)
    expect(page.locator("#report-missing")).to_have_text("Loading the evaluation report…")
    held[0].continue_()
    expect(page.locator("#report-missing")).to_be_hidden()
    expect(page.locator("#report-stats .stat").first).to_be_visible()


def test_each_region_of_the_model_tab_has_a_name_of_its_own(page: Any) -> None:
    # A screen reader lists landmarks by name: a section and the scrolling table inside it must differ.
    page.goto("/#model")
    expect(page.locator("#confusion-table td.cm").first).to_be_attached()
    for name in ("Per-class metrics", "Confusion matrix"):
        expect(page.get_by_role("region", name=name, exact=True)).to_have_count(1)
    expect(page.get_by_role("region", name=re.compile("^Precision, recall"))).to_be_visible()
    expect(page.get_by_role("region", name=re.compile("^Confusion matrix: counts"))).to_be_visible()


def test_model_tab_names_classes_the_test_split_lacked(page: Any) -> None:
    def fewer(route: Any) -> None:
        report = route.fetch().json()
        route.fulfill(json={**report, "classes_without_images": ["Sun_Sunlight_Damage", "Warts"]})

    page.route("**/api/report", fewer)
    open_page(page)
    page.get_by_role("tab", name="Model").click()
    row = page.locator("#extra-facts .fact", has_text="Classes without test images")
    expect(row.locator("dd")).to_have_text(
        "Sun/Sunlight Damage, Warts (support 0; the macro averages leave out those the model never predicted)"
    )


@pytest.mark.parametrize(
    ("counts", "said"),
    [
        (
            {"test_of_train": 3, "across_classes": 0, "val_of_train": 2},
            "3 test images with a copy in the training data: the test numbers overstate; "
            "2 validation images with a copy left in training",
        ),
        # "1 image", not "1 images" (one copy is the likeliest count)
        (
            {"test_of_train": 1, "across_classes": 1, "val_of_train": 1},
            "1 test image with a copy in the training data: the test numbers overstate; "
            "1 image under two or more classes; 1 validation image with a copy left in training",
        ),
    ],
)
def test_model_tab_says_the_copies_training_found(page: Any, counts: dict[str, int], said: str) -> None:
    def copied(route: Any) -> None:
        report = route.fetch().json()
        route.fulfill(json={**report, "identical_copies": counts})

    page.route("**/api/report", copied)
    open_page(page)
    page.get_by_role("tab", name="Model").click()
    row = page.locator("#extra-facts .fact", has_text="Identical copies in the data")
    expect(row.locator("dd")).to_have_text(said)


def test_model_tab_without_test_numbers_says_so(page: Any) -> None:
    # A bundle of last.pt: export left out the run's test numbers (they were best.pt's).
    def no_metrics(route: Any) -> None:
        report = route.fetch().json()
        kept = {k: v for k, v in report.items() if k in ("calibration", "class_names", "parity")}
        test = {"n": 9, "ece_before": 0.1, "ece_after": 0.3, "nll_before": 0.182, "nll_after": 0.889}
        route.fulfill(json={**kept, "calibration": {**kept["calibration"], "degenerate": True, "test": test}})

    page.route("**/api/report", no_metrics)
    open_page(page)
    page.get_by_role("tab", name="Model").click()
    expect(page.locator("#eval-source")).to_have_text("No test-set numbers for this model")
    expect(page.locator("#report-stats .stat")).to_have_count(0)
    expect(page.locator("#calibration-stats .stat").first).to_contain_text("on the validation split")
    expect(page.locator("#calibration-note")).to_contain_text("the fit found no minimum")
    expect(page.locator("#calibration-note")).to_contain_text(
        "On the test split, which the fit never saw: ECE 10.0\u00a0% → 30.0\u00a0%, NLL 0.182 → 0.889."
    )


@pytest.mark.parametrize("has_pr", [False, True], ids=["accuracy-only", "f1-without-precision"])
def test_model_tab_leaves_out_numbers_the_report_lacks(page: Any, has_pr: bool) -> None:
    report: dict[str, Any] = {"accuracy": 0.8125}
    if has_pr:
        report["macro avg"] = {"f1-score": 0.7}  # a hand-written report: F1 without its P and R
    page.route("**/api/report", lambda route: route.fulfill(json=report))
    open_page(page)
    page.get_by_role("tab", name="Model").click()
    stats = page.locator("#report-stats .stat")
    # Tiles of dashes ("Macro F1 –", "P – · R –") were drawn for the numbers the report does not have.
    expect(stats).to_have_count(2 if has_pr else 1)
    expect(stats.first).to_have_text("Accuracy81.3\u00a0%")
    if has_pr:
        expect(stats.nth(1)).to_have_text("Macro F170.0\u00a0%")
    expect(page.locator("#report-stats")).not_to_contain_text("–")


def _calibration_note(page: Any, **changes: object) -> Any:
    """The Model tab's calibration note, for the served report with ``changes`` to its calibration."""

    def changed(route: Any) -> None:
        report = route.fetch().json()
        route.fulfill(json={**report, "calibration": {**report["calibration"], **changes}})

    page.route("**/api/report", changed)
    open_page(page)
    page.get_by_role("tab", name="Model").click()
    return page.locator("#calibration-note")


def test_model_tab_says_what_a_temperature_at_the_upper_bound_means(page: Any) -> None:
    note = _calibration_note(page, degenerate=True, temperature=100.0)
    expect(note).to_contain_text("the model was rarely right on the validation images")
    expect(note).not_to_contain_text("too easy")


@pytest.mark.parametrize(
    ("ece_after", "said"),
    [pytest.param(0.088, True, id="ece-rose"), pytest.param(0.05, False, id="ece-fell")],
)
def test_model_tab_says_when_the_temperature_did_not_lower_the_ece(
    page: Any, ece_after: float, said: bool
) -> None:
    # The fit minimises the NLL: on the demo model the ECE rose (8.3 % → 8.8 %) under "the shown
    # probabilities come closer to how often the model was right".
    note = _calibration_note(page, degenerate=False, ece_before=0.083, ece_after=ece_after)
    expect(note).to_contain_text("it does not change the ranking.")
    words = (
        "Here it did not lower the calibration error on the validation split (ECE 8.3\u00a0% → 8.8\u00a0%)"
    )
    if said:
        expect(note).to_contain_text(words)
    else:
        expect(note).not_to_contain_text("did not lower")


def test_model_tab_does_not_call_an_unfitted_temperature_calibrated(page: Any) -> None:
    # skin-export --no-data: T = 1, never fitted (report.json → calibration has only these two keys).
    def no_data(route: Any) -> None:
        skipped = "no dataset (--no-data): temperature not fitted (T = 1), parity on generated images"
        route.fulfill(json={**route.fetch().json(), "calibration": {"temperature": 1.0, "skipped": skipped}})

    page.route("**/api/report", no_data)
    open_page(page)
    page.get_by_role("tab", name="Model").click()
    expect(page.locator("#calibration-stats .stat")).to_have_text(["Temperature1.000not fitted"])
    expect(page.locator("#calibration-note")).to_have_text(
        "The probabilities are not calibrated: export had no validation images to fit a temperature on."
    )


def test_model_tab_without_a_report(page: Any, console: Console) -> None:
    console.allow(r"status of 404")
    page.route(
        "**/api/report",
        lambda route: route.fulfill(
            status=404,
            content_type="application/json",
            body=json.dumps({"error": {"code": "no_report", "message": "this model bundle has no report"}}),
        ),
    )
    page.goto("/#model")
    expect(page.locator("#panel-model")).to_be_visible()
    expect(page.locator("#report-missing")).to_have_text("This model bundle has no evaluation report.")
    expect(page.locator("#per-class")).to_be_hidden()
    expect(page.locator("#confusion")).to_be_hidden()
    expect(page.locator("#model-facts")).to_contain_text("skin-demo-b3")


def test_model_tab_says_which_runtime_serves_and_what_bf16_changes(page: Any, ui_server: str) -> None:
    with urllib.request.urlopen(ui_server + "/api/info") as response:
        info = json.load(response)
    page.goto("/#model")
    facts = page.locator("#model-facts")
    expect(facts).to_contain_text("onnxruntime " + info["onnxruntime"]["version"] + " · CPUExecutionProvider")

    def serve(**fields: Any) -> None:
        body = {**info, "onnxruntime": {**info["onnxruntime"], **fields}}
        page.unroute("**/api/info")
        page.route("**/api/info", lambda route: route.fulfill(content_type="application/json", json=body))
        page.reload()

    measured = {"measured": True, "safe": True, "agreement": 0.998}
    serve(openvino="bf16", providers=["OpenVINO CPU"], threads=2, bf16_check=measured)
    expect(facts).to_contain_text("OpenVINO bf16 · 2 threads · same top class as fp32 on " + pct(0.998))
    expect(facts).not_to_contain_text("heatmap")  # a report from before the heatmap check
    serve(
        openvino="bf16",
        providers=["OpenVINO CPU"],
        threads=2,
        bf16_check={**measured, "heatmap_agreement": 0.995},
    )
    expect(facts).to_contain_text(
        "same top class as fp32 on " + pct(0.998) + " of the test images, the same heatmap on " + pct(0.995)
    )
    serve(openvino="bf16", providers=["OpenVINO CPU"], threads=1, bf16_check=None)
    expect(facts).to_contain_text("OpenVINO bf16 · 1 thread · its agreement with fp32 was not measured")
    serve(openvino="f32", providers=["OpenVINO CPU"], threads=2, bf16_check=None)
    expect(facts).to_contain_text("OpenVINO f32 · 2 threads")
    expect(facts).not_to_contain_text("agreement")


def test_export_downloads_the_analysis_as_json(page: Any) -> None:
    open_page(page)
    result = analyse(page, [png("red")])
    with page.expect_download() as download:
        page.click("#export")
    assert re.fullmatch(
        r"analysis-red-\d{4}-\d\d-\d\dT\d\d-\d\d-\d\dZ\.json", download.value.suggested_filename
    )
    data = json.loads(Path(download.value.path()).read_text())
    assert data["file_name"] == "red.png"
    assert datetime.fromisoformat(data["timestamp"].replace("Z", "+00:00")).year >= 2024
    assert data["primary_prediction"] == result["primary"]
    assert [p["label"] for p in data["predictions"]] == sorted(
        result["predictions"], key=lambda k: -result["predictions"][k]
    )
    assert {p["label"]: p["probability"] for p in data["predictions"]} == result["predictions"]
    assert data["predictions"][1]["display_name"] == _display(data["predictions"][1]["label"])
    info = json.loads(urllib.request.urlopen(page.url.split("#")[0] + "api/info").read())
    assert data["model"] == {"name": info["model_name"], "version": info["model_version"], "demo": True}
    assert "not a medical device" in data["disclaimer"] and "not a diagnosis" in data["disclaimer"]
    assert "confidence" not in data
    # This bundle has no thresholds: the record says no check exists, not merely that no flag was raised.
    assert data["checks"] == {
        "confidence": False,
        "in_distribution": False,
        "note": "This model does not flag low confidence or images unlike the photos it learned from, so the "
        "absence of a flag in this record says nothing about either. ("
        + "; ".join(info["uncertainty"]["notes"])
        + ")",
    }


def test_one_check_missing_is_said_as_it_not_either(page: Any) -> None:
    # A model with its confidence threshold and no out-of-distribution score: one check is off, not two.
    def confidence_only(route: Any) -> None:
        info = route.fetch().json()
        info["uncertainty"] = {**info["uncertainty"], "confidence": True, "ood": False, "notes": []}
        route.fulfill(json=info)

    page.route("**/api/info", confidence_only)
    open_page(page)
    analyse(page, [png("red")])
    expect(page.locator("#warnings .checks-off")).to_have_text(
        "This model does not flag images unlike the photos it learned from, "
        "so the absence of a warning here says nothing about it."
    )
    with page.expect_download() as download:
        page.click("#export")
    data = json.loads(Path(download.value.path()).read_text())
    assert data["checks"] == {
        "confidence": True,
        "in_distribution": False,
        "note": "This model does not flag images unlike the photos it learned from, so the absence of a flag "
        "in this record says nothing about it.",
    }


def test_export_file_names_keep_letters_of_any_script(page: Any) -> None:
    open_page(page)
    analyse(page, [png("red", name="Фото родинки 1.png")])
    with page.expect_download() as download:
        page.click("#export")
    assert download.value.suggested_filename.startswith("analysis-Фото_родинки_1-")
    analyse(page, [png("red", name="फोटो Cafe\u0301.png")])  # marks, one of them decomposed (macOS)
    with page.expect_download() as download:
        page.click("#export")
    assert download.value.suggested_filename.startswith("analysis-फोटो_Caf\u00e9-")


def test_the_pickers_offer_only_the_formats_the_server_takes(page: Any) -> None:
    def png_only(route: Any) -> None:  # as SKIN_ALLOWED_FORMATS=PNG serves it
        response = route.fetch()
        body = response.json()
        body["limits"].update(allowed_formats=["PNG"], allowed_types=["image/png"])
        route.fulfill(response=response, json=body)

    page.route(re.compile(r"/api/info$"), png_only)
    open_page(page)
    expect(page.locator("#limits-hint")).to_contain_text("PNG, up to")
    expect(page.locator("#file-input")).to_have_attribute("accept", "image/png,.png")
    expect(page.locator("#camera-input")).to_have_attribute("accept", "image/png")


def test_a_server_that_takes_one_image_at_a_time_is_described_in_the_singular(page: Any) -> None:
    def one_at_a_time(route: Any) -> None:  # as SKIN_MAX_BATCH_FILES=1 serves it
        response = route.fetch()
        body = response.json()
        body["limits"]["max_batch_files"] = 1
        route.fulfill(response=response, json=body)

    page.route(re.compile(r"/api/info$"), one_at_a_time)
    open_page(page)
    expect(page.locator("#limits-hint")).to_have_text(
        "JPEG, PNG or WebP, up to 1\u00a0MB each; up to 1 image at once."
    )
    page.set_input_files("#file-input", files=[png("red"), png("green")])
    expect(page.locator("#input-error")).to_have_text(
        "At most 1 image can be analysed at once; the first was kept."
    )
    expect(page.locator("#preview-caption")).to_contain_text("red.png")
    expect(page.locator("#batch")).to_be_hidden()


def test_without_javascript_the_page_says_it_needs_it(new_page: Any) -> None:
    page = new_page(java_script_enabled=False)
    page.goto("/")
    expect(page.locator("noscript .alert, .noscript")).to_contain_text("This page needs JavaScript")


def test_confidence_warnings_are_shown_above_the_classes(page: Any) -> None:
    def flag(route: Any) -> None:
        response = route.fetch()
        body = {**response.json(), "confidence": "low", "in_distribution": False}
        route.fulfill(response=response, json=body)

    page.route(PREDICT, flag)
    open_page(page)
    analyse(page, [png("red")])
    warnings = page.locator("#warnings .alert")
    expect(warnings).to_have_count(2)
    expect(warnings.nth(0)).to_contain_text("This does not look like a skin photo.")
    expect(warnings.nth(1)).to_contain_text("The model is not confident about this image.")
    before = page.evaluate(
        "() => Boolean(document.getElementById('warnings').compareDocumentPosition("
        "document.getElementById('top-list')) & Node.DOCUMENT_POSITION_FOLLOWING)"
    )
    assert before
    with page.expect_download() as download:
        page.click("#export")
    data = json.loads(Path(download.value.path()).read_text())
    assert data["confidence"] == "low" and data["in_distribution"] is False


def test_theme_follows_the_system_and_the_toggle_is_remembered(new_page: Any) -> None:
    page = new_page(color_scheme="light")
    open_page(page)
    background = "() => getComputedStyle(document.body).backgroundColor"
    light = page.evaluate(background)
    toggle = page.locator("#theme-toggle")
    expect(toggle).to_have_attribute("aria-label", "Switch to dark theme")
    toggle.click()
    expect(page.locator("html")).to_have_attribute("data-theme", "dark")
    dark = page.evaluate(background)
    assert dark != light
    page.reload()
    expect(page.locator("html")).to_have_attribute("data-theme", "dark")
    expect(toggle).to_have_attribute("aria-label", "Switch to light theme (the system's)")
    assert page.evaluate(background) == dark
    # Back to the system's theme is back to following the system: nothing stored, and a change of the
    # system's preference is followed again.
    toggle.click()
    expect(page.locator("html")).not_to_have_attribute("data-theme", re.compile(".*"))
    assert page.evaluate("() => localStorage.getItem('skin-ui-theme')") is None
    assert page.evaluate(background) == light
    page.emulate_media(color_scheme="dark")
    expect(toggle).to_have_attribute("aria-label", "Switch to light theme")
    assert page.evaluate(background) == dark

    fresh = new_page(color_scheme="dark")  # a new profile: no stored choice, the system says dark
    open_page(fresh)
    assert fresh.evaluate("() => document.documentElement.dataset.theme") is None
    assert fresh.evaluate(background) == dark
    expect(fresh.locator("#theme-toggle")).to_have_attribute("aria-label", "Switch to light theme")


@pytest.mark.parametrize("chosen", [False, True], ids=["system-dark", "chosen-dark"])
def test_a_dark_theme_prints_dark_on_white(new_page: Any, chosen: bool) -> None:
    page = new_page(color_scheme="light" if chosen else "dark")
    open_page(page)
    if chosen:
        page.click("#theme-toggle")
        expect(page.locator("html")).to_have_attribute("data-theme", "dark")
    analyse(page, [png("red")])
    colour = "s => getComputedStyle(document.querySelector(s)).color"
    on_screen = page.evaluate(colour, "#primary-name")
    page.emulate_media(media="print")
    # Printing leaves backgrounds out: the dark theme's text (rgb(228, 234, 240)) went on white paper.
    for selector in ["#primary-name", ".bar-name", ".disclaimer p", "#result-note"]:
        r, g, b = map(int, re.findall(r"\d+", page.evaluate(colour, selector))[:3])
        assert 0.2126 * r + 0.7152 * g + 0.0722 * b < 110, (selector, r, g, b)
    page.emulate_media(media="screen")
    assert page.evaluate(colour, "#primary-name") == on_screen  # the screen keeps its dark theme


def test_a_printed_result_keeps_its_bars_and_leaves_out_the_controls(page: Any) -> None:
    open_page(page)
    analyse(page, [corner_image()])
    expect(page.locator("#heatmap")).to_be_visible()
    page.emulate_media(media="print")
    for control in [
        "#theme-toggle",
        "#tab-analyse",
        "#choose",
        "#analyse",
        "#export",
        "#clear",
        "#toggle-all",
    ]:
        expect(page.locator(control)).to_be_hidden()
    expect(page.locator("#heatmap-opacity")).to_be_hidden()
    for kept in ["#preview", "#heatmap", "#heatmap-caption", "#primary-name", "#top-list", "#result-note"]:
        expect(page.locator(kept)).to_be_visible()
    # The bars are backgrounds, which print leaves out unless asked: the top 5 printed as bare numbers.
    adjust = "e => getComputedStyle(e).printColorAdjust"
    assert page.locator("#top-list .bar-fill").first.evaluate(adjust) == "exact"
    assert page.locator("#primary-bar").evaluate(adjust) == "exact"
    # With the heatmap turned off, its caption and legend do not describe an overlay that is not there.
    page.emulate_media(media="screen")
    page.locator("label.switch").click()
    page.emulate_media(media="print")
    expect(page.locator("#heatmap")).to_be_hidden()
    expect(page.locator("#heatmap-caption")).to_be_hidden()
    # The Model tab's shading is what its legends describe.
    page.emulate_media(media="screen")
    page.click("#tab-model")
    expect(page.locator("#metrics-table tbody td.heat").first).to_be_visible()
    page.emulate_media(media="print")
    assert page.locator("#metrics-table tbody td.heat").first.evaluate(adjust) == "exact"
    assert page.locator("#confusion-table td.cm").first.evaluate(adjust) == "exact"
    # Paper does not scroll: on an A4 page (about 718 px inside its margins) the matrix fits, not cut off.
    page.set_viewport_size({"width": 718, "height": 1000})
    table, card = page.locator("#confusion-table").bounding_box(), page.locator("#confusion").bounding_box()
    assert table["x"] + table["width"] <= card["x"] + card["width"], (table, card)


@pytest.mark.parametrize("viewport", [{"width": 1280, "height": 900}, {"width": 1366, "height": 768}])
def test_the_focused_button_stays_in_view_when_the_heatmap_controls_appear(
    new_page: Any, viewport: dict[str, int]
) -> None:
    page = new_page(viewport=viewport, reduced_motion="reduce")
    open_page(page)
    picture = Image.new("RGB", (400, 300), (40, 255, 50))
    picture.paste((255, 0, 0), (0, 0, 120, 300))  # some contrast, for a heatmap to show
    page.set_input_files(
        "#file-input", files=[{"name": "p.png", "mimeType": "image/png", "buffer": encode(picture, "PNG")}]
    )
    page.focus("#analyse")
    with page.expect_response(PREDICT):
        page.keyboard.press("Enter")
    expect(page.locator("#heatmap-controls")).to_be_visible()
    assert page.evaluate("() => document.activeElement.id") == "analyse"
    box = page.locator("#analyse").bounding_box()
    assert box["y"] >= 0 and box["y"] + box["height"] <= viewport["height"]


def test_phone_width_has_no_sideways_scrolling(new_page: Any) -> None:
    page = new_page(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    open_page(page)
    expect(page.locator("#camera")).to_be_visible()
    assert page.locator("#camera-input").get_attribute("capture") == "environment"
    analyse(page, [png("red")])
    expect(page.locator("#disclaimer")).to_be_visible()
    width = "() => document.scrollingElement.scrollWidth"
    assert page.evaluate(width) <= 390
    page.get_by_role("tab", name="Model").click()
    expect(page.locator("#confusion-table td.cm").first).to_be_attached()
    assert page.evaluate(width) <= 390


def test_a_narrow_desktop_window_offers_no_camera(new_page: Any) -> None:
    # A desktop browser ignores `capture`: at 500 px (a narrow window, or 1280 px zoomed to 256 %) "Take a
    # photo" opened the ordinary file picker.
    page = new_page(viewport={"width": 500, "height": 800})
    open_page(page)
    expect(page.locator("#choose")).to_be_visible()
    expect(page.locator("#camera")).to_be_hidden()


def test_a_class_name_of_one_long_word_wraps_at_320_px(new_page: Any, ui_server: str) -> None:
    word = "Hautkrebsvorstufenerkrankungsverdachtsdiagnose"  # a display name a German bundle could carry
    info = _info(ui_server)
    info["classes"][0]["display_name"] = word
    page = new_page(viewport={"width": 320, "height": 640}, is_mobile=True, has_touch=True)
    page.route("**/api/info", lambda route: route.fulfill(status=200, json=info))
    open_page(page)
    page.set_input_files("#file-input", files=[png("red"), png("green")])
    with page.expect_response(re.compile(r"/api/predict/batch")) as answer:
        page.click("#analyse")
    body = answer.value.json()
    for entry in body["results"]:
        entry["primary"]["display_name"] = entry["top"][0]["display_name"] = word
    body["results"][0]["heatmap"] = {"label": "Acne", "height": 2, "width": 2, "values": [[0, 1], [0.5, 0]]}
    page.route(re.compile(r"/api/predict/batch"), lambda route: route.fulfill(status=200, json=body))
    page.click("#analyse")
    expect(page.locator("#primary-name")).to_have_text(word)
    expect(page.locator(".batch-item strong")).to_have_text([word, word])
    expect(page.locator("#heatmap-caption")).to_contain_text(word)
    assert page.evaluate("() => document.scrollingElement.scrollWidth") <= 320


def test_long_class_names_keep_the_model_tab_numbers_in_view_on_a_phone(
    new_page: Any, ui_server: str
) -> None:
    word = "Hautkrebsvorstufenerkrankungsverdachtsdiagnose"
    words = "Actinic keratosis and other premalignant lesions of sun-damaged skin (Bowen disease)"
    info = _info(ui_server)
    info["classes"][0]["display_name"] = word
    info["classes"][1]["display_name"] = words
    page = new_page(viewport={"width": 360, "height": 800}, is_mobile=True, has_touch=True)
    page.route("**/api/info", lambda route: route.fulfill(status=200, json=info))
    page.goto("/#model")
    expect(page.locator("#metrics-table tbody th").first).to_have_text(word)
    # The one-word name pushed precision, recall, F1 and support past the phone's edge.
    wrap = page.locator("#per-class .table-wrap")
    assert wrap.evaluate("e => e.scrollWidth <= e.clientWidth"), "the metrics table scrolls sideways"
    # The matrix is wider than a phone (it scrolls); its headings are cut, not its counts pushed away.
    head = page.locator("#confusion-table thead tr").bounding_box()
    assert head["height"] < 200, head
    first = page.locator("#confusion-table tbody th").nth(1)
    expect(first).to_have_text(words)  # the accessible name is whole; the title shows it too
    expect(first).to_have_attribute("title", words)
    assert first.bounding_box()["width"] < 220
    expect(page.locator("#confusion-table thead th.col-head").first).to_have_attribute("title", word)


def test_text_follows_the_readers_own_font_size(page: Any) -> None:
    # The browser's font-size setting (Settings > Appearance), not zoom: it moves only rem and em sizes.
    page.context.new_cdp_session(page).send("Page.setFontSizes", {"fontSizes": {"standard": 24}})
    open_page(page)
    size = "s => parseFloat(getComputedStyle(document.querySelector(s)).fontSize)"
    assert page.evaluate(size, "html") == 24
    for selector in ["#choose", "#analyse-label", "#tab-model", ".drop-title", "#model-line"]:
        assert page.evaluate(size, selector) >= 20, selector  # 15 px at the default 16 px, so 22.5 px here


def test_class_names_are_shown_in_full_on_a_phone_at_a_large_text_size(new_page: Any) -> None:
    # 412 px (a common Android phone) with the reader's text at twice the default: a name cut with "…"
    # ("Seborrheic Kerat…") could not be read, a touch screen having no tooltip.
    page = new_page(viewport={"width": 412, "height": 800}, is_mobile=True, has_touch=True)
    page.context.new_cdp_session(page).send("Page.setFontSizes", {"fontSizes": {"standard": 32}})
    open_page(page)
    analyse(page, [png("red")])
    page.click("#toggle-all")
    names = page.locator("#top-list .bar-name, #all-list .bar-name")
    expect(names).to_have_count(5 + 22)
    cut = names.evaluate_all(
        "names => names.filter(e => e.scrollWidth > e.clientWidth).map(e => e.textContent)"
    )
    assert cut == []
    assert page.evaluate("() => document.scrollingElement.scrollWidth") <= 412


def _rgba(css: str) -> tuple[float, ...]:
    """'rgb(1, 2, 3)' or 'rgba(1, 2, 3, 0.5)' (getComputedStyle's forms) -> (r, g, b, alpha)."""
    values = [float(v) for v in re.findall(r"[\d.]+", css)]
    return (*values[:3], values[3] if len(values) > 3 else 1.0)


def _over(top: tuple[float, ...], alpha: float, bottom: tuple[float, ...]) -> tuple[float, ...]:
    return tuple(alpha * t + (1 - alpha) * b for t, b in zip(top[:3], bottom[:3], strict=True))


def contrast(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """WCAG 2 contrast ratio of two opaque sRGB colours."""

    def luminance(rgb: tuple[float, ...]) -> float:
        c = [v / 255 for v in rgb[:3]]
        c = [v / 12.92 if v <= 0.03928 else ((v + 0.055) / 1.055) ** 2.4 for v in c]
        return 0.2126 * c[0] + 0.7152 * c[1] + 0.0722 * c[2]

    high, low = sorted((luminance(a), luminance(b)), reverse=True)
    return (high + 0.05) / (low + 0.05)


@pytest.mark.parametrize("theme", [pytest.param("light", id="light"), pytest.param("dark", id="dark")])
def test_faint_marks_keep_their_contrast(new_page: Any, theme: str) -> None:
    # WCAG AA: text 4.5:1 (axe leaves out a one-character cell such as a "0"), a control's state 3:1.
    page = new_page(color_scheme=theme)
    open_page(page)
    analyse(page, [corner_image()])
    page.locator("label.switch").click()
    expect(page.locator("#heatmap-toggle")).not_to_be_checked()
    card, track, knob = page.evaluate(
        """() => { const t = document.querySelector('.switch-track');
            document.getAnimations().forEach(a => a.finish());  // the switch's colour transition
            return [getComputedStyle(t.closest('.card')).backgroundColor, getComputedStyle(t).backgroundColor,
                    getComputedStyle(t, '::after').backgroundColor]; }"""
    )
    surface = _rgba(card)
    off = _over(_rgba(track), _rgba(track)[3], surface)
    assert contrast(off, surface) >= 3, "the switch, off, fades into its card"
    assert contrast(_rgba(knob), off) >= 3, "the switch's knob, off, fades into its track"

    page.get_by_role("tab", name="Model").click()
    zero = page.locator("#confusion-table td.cm.zero").first
    colour, opacity, cell = zero.evaluate(
        """e => [getComputedStyle(e).color, getComputedStyle(e).opacity,
                 getComputedStyle(e.closest('.card')).backgroundColor]"""
    )
    surface = _rgba(cell)
    text = _over(_rgba(colour), _rgba(colour)[3] * float(opacity), surface)
    assert contrast(text, surface) >= 4.5, "a zero in the confusion matrix is too faint to read"


def _changed(before: bytes, after: bytes) -> int:
    """How many pixels clearly differ between two screenshots of one element."""
    import io

    from PIL import ImageChops

    with Image.open(io.BytesIO(before)) as a, Image.open(io.BytesIO(after)) as b:
        diff = ImageChops.difference(a.convert("RGB"), b.convert("RGB")).convert("L")
    return sum(diff.histogram()[41:])


def test_states_are_drawn_in_forced_colours(new_page: Any) -> None:
    # Windows High Contrast (forced colours) drops backgrounds and shadows: states drawn with them are lost.
    page = new_page(forced_colors="active", color_scheme="dark")
    open_page(page)
    analyse(page, [corner_image(), png("green")])

    # A state must change at least 100 pixels (a 3 px bar under a tab does), more than a hairline such as the
    # 1 px gap a tab's dropped bar leaves in the border below it.
    def shot(locator: Any) -> bytes:
        # Thumbnails are masked: a tile redrawn on selection may still be decoding its image.
        shot: bytes = locator.screenshot(animations="disabled", mask=[page.locator(".thumb")])
        return shot

    track = page.locator(".switch-track")
    on = shot(track)
    page.locator("label.switch").click()
    expect(page.locator("#heatmap-toggle")).not_to_be_checked()
    assert _changed(on, shot(track)) >= 100, "the heatmap switch looks the same on and off"

    tile = page.locator(".batch-item").first
    pressed = shot(tile)
    page.locator(".batch-item").nth(1).click()
    expect(tile).to_have_attribute("aria-pressed", "false")
    assert _changed(pressed, shot(tile)) >= 100, "the chosen image tile looks like the others"

    tab = page.locator("#tab-analyse")
    selected = shot(tab)
    page.locator("#tab-model").click()
    expect(tab).to_have_attribute("aria-selected", "false")
    assert _changed(selected, shot(tab)) >= 100, "the selected tab looks like the others"


@pytest.mark.parametrize(
    ("theme", "viewport"),
    [
        pytest.param("light", {"width": 1280, "height": 900}, id="light-desktop"),
        pytest.param("dark", {"width": 320, "height": 640}, id="dark-320px"),
    ],
)
def test_axe_finds_no_serious_violations(
    new_page: Any, axe: Any, theme: str, viewport: dict[str, int]
) -> None:
    def flag(route: Any) -> None:  # the uncertain result: both warnings above the classes
        response = route.fetch()
        route.fulfill(
            response=response, json={**response.json(), "confidence": "low", "in_distribution": False}
        )

    page = new_page(color_scheme=theme, viewport=viewport)
    page.route(PREDICT, flag)
    open_page(page)
    found: dict[str, list[str]] = {}

    def check(state: str) -> None:
        violations = axe.run(page).response["violations"]
        found[state] = [
            f"{v['id']} ({v['impact']}): {[n['target'] for n in v['nodes']][:3]}"
            for v in violations
            if v["impact"] in ("serious", "critical")
        ]

    check("empty")
    analyse(page, [corner_image()])
    expect(page.locator("#heatmap")).to_be_visible()
    expect(page.locator("#warnings .alert")).to_have_count(2)
    page.click("#toggle-all")
    check("uncertain result with heatmap")
    broken = {"name": "broken.png", "mimeType": "image/png", "buffer": b"not an image"}
    analyse(page, [png("red"), broken])
    expect(page.locator(".batch-error")).to_have_count(1)
    page.locator(".batch-item").nth(1).click()
    check("batch with a refused image")
    page.get_by_role("tab", name="Model").click()
    expect(page.locator("#confusion-table td.cm").first).to_be_attached()
    check("model tab")
    assert found == dict.fromkeys(found, []), found


def test_the_keyboard_reaches_every_control_and_each_has_a_label(page: Any) -> None:
    open_page(page)
    reached = []

    def tab_to(target: str) -> None:
        for _ in range(20):
            page.keyboard.press("Tab")
            reached.append(
                page.evaluate("() => document.activeElement.id || document.activeElement.className")
            )
            if reached[-1] == target:
                return
        raise AssertionError(f"Tab never reached #{target}: {reached}")

    tab_to("skip-link")
    assert reached == ["skip-link"]
    tab_to("choose")
    assert reached[1:3] == ["theme-toggle", "tab-analyse"]
    page.set_input_files("#file-input", files=[png("red")])  # what the file dialog would do
    tab_to("analyse")
    page.keyboard.press("Enter")
    expect(page.locator("#primary-name")).to_have_text("Acne")
    tab_to("export")

    unlabelled = page.evaluate(
        """() => [...document.querySelectorAll('button, input, select, textarea')]
            .filter(e => !(e.getAttribute('aria-label') || (e.labels && e.labels.length)
                           || e.textContent.trim()))
            .map(e => e.outerHTML.slice(0, 80))"""
    )
    assert unlabelled == []


def test_page_has_no_inline_script_or_style(ui_server: str) -> None:
    class Inline(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.problems: list[str] = []

        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            names = {name for name, _ in attrs}
            if tag == "style" or (tag == "script" and "src" not in names):
                self.problems.append(f"inline <{tag}>")
            self.problems += [
                f"{name}= on <{tag}>" for name in names if name == "style" or name.startswith("on")
            ]

    parser = Inline()
    parser.feed((WEBUI / "index.html").read_text())
    assert parser.problems == []
    assert "innerHTML" not in (WEBUI / "app.js").read_text()  # page text is built with textContent only
    with urllib.request.urlopen(ui_server + "/") as response:
        assert "default-src 'self'" in response.headers["content-security-policy"]
        assert b'src="app.js"' in response.read()


@pytest.mark.slow
def test_screenshot_script_writes_all_views(browser: Any, ui_server: str, tmp_path: Path) -> None:
    paths = take_screenshots(browser, ui_server, tmp_path)
    names = {p.name for p in paths}
    for view in ("analyse", "model"):
        for device in ("desktop", "phone"):
            for theme in ("light", "dark"):
                assert f"{view}-{device}-{theme}.png" in names
    with Image.open(tmp_path / "analyse-desktop-light.png") as shot:
        assert shot.width == 1280 and shot.height >= 900
    with Image.open(tmp_path / "analyse-phone-dark.png") as shot:
        assert shot.width == 390 * 2
