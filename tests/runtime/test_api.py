from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image
from starlette.applications import Starlette
from starlette.routing import Mount, Route
from starlette.testclient import TestClient
from starlette.types import Message

from runtime.app import create_app
from runtime.bundle import K_CAM_GRID, REPORT_FILE
from runtime.page import PageFiles
from runtime.settings import DEFAULT_WEBUI, Settings
from tests.bundle_factory import CLASS_NAMES, make_bundle
from tests.images import encode, solid

MB = 1024 * 1024


def _client(bundle: Path, **overrides: object) -> TestClient:
    settings = dataclasses.replace(Settings(bundle=str(bundle), threads=1), **overrides)  # type: ignore[arg-type]
    return TestClient(create_app(settings), raise_server_exceptions=False)


@pytest.fixture(scope="module")
def client(tiny_bundle: Path) -> Iterator[TestClient]:
    with _client(tiny_bundle, max_image_bytes=1 * MB, max_body_bytes=2 * MB, max_batch_files=3) as c:
        yield c


def _error(response, status: int, code: str) -> None:  # type: ignore[no-untyped-def]
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["error"]["code"] == code
    assert body["error"]["message"]
    # The bundles are in the temporary folder: TMPDIR may put it elsewhere than /tmp.
    assert "Traceback" not in response.text and tempfile.gettempdir() not in response.text


@pytest.mark.parametrize(
    ("colour", "label"),
    [
        pytest.param("red", "Acne", id="red"),
        pytest.param("green", "Eczema", id="green"),
        pytest.param("blue", "Moles", id="blue"),
    ],
)
def test_predict_returns_the_right_class(client: TestClient, colour: str, label: str) -> None:
    response = client.post("/api/predict", files={"file": ("x.jpg", solid(colour), "image/jpeg")})
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body["predictions"]) == set(CLASS_NAMES)
    assert abs(sum(body["predictions"].values()) - 1) < 1e-3
    assert body["primary"]["label"] == label
    assert body["primary"]["display_name"] == label
    assert [t["label"] for t in body["top"]][0] == label
    assert len(body["top"]) == 5
    assert body["model"] == {"name": "tiny-test-model", "version": "0.0.1", "demo": False}
    heat = body["heatmap"]
    assert heat["label"] == label and (heat["height"], heat["width"]) == (8, 8)
    assert len(heat["values"]) == 8 and all(0 <= v <= 1 for row in heat["values"] for v in row)
    # The factory's average pooling tiles the image: its cells cover it exactly.
    assert heat["extent"] == {"left": 0.0, "top": 0.0, "width": 1.0, "height": 1.0}


def test_heatmap_extent_follows_the_bundles_cam_grid(tmp_path: Path) -> None:
    grid = {"stride": [8, 8], "offset": [0.5, 4]}  # rows centred on their first pixel, columns as tiles
    with _client(make_bundle(tmp_path, meta_overrides={K_CAM_GRID: grid})) as client:
        body = client.post(
            "/api/predict", files={"file": ("x.png", solid("red", fmt="PNG"), "image/png")}
        ).json()
    assert body["heatmap"]["extent"] == {"left": 0.0, "top": -0.054688, "width": 1.0, "height": 1.0}


def test_heatmap_peaks_where_the_colour_is(client: TestClient) -> None:
    img = Image.new("RGB", (64, 64), (128, 128, 128))
    img.paste((255, 0, 0), (40, 8, 64, 32))  # red patch: top right
    body = client.post("/api/predict", files={"file": ("x.png", encode(img, "PNG"), "image/png")}).json()
    assert body["primary"]["label"] == "Acne"
    values = body["heatmap"]["values"]
    peak = max((v, r, c) for r, row in enumerate(values) for c, v in enumerate(row))
    assert peak[1] < 4 and peak[2] >= 5


def test_heatmap_is_the_primary_class_map_scaled_to_0_1(client: TestClient) -> None:
    # Green is class 1, not 0: the map must be the primary class's own, with its own min → 0 and max → 1.
    img = Image.new("RGB", (64, 64), (128, 128, 128))
    img.paste((0, 255, 0), (40, 8, 64, 32))  # green patch: top right (rows 1-3, columns 5-7 of 8)
    body = client.post("/api/predict", files={"file": ("x.png", encode(img, "PNG"), "image/png")}).json()
    assert body["primary"]["label"] == "Eczema" and body["heatmap"]["label"] == "Eczema"
    values = body["heatmap"]["values"]
    patch = [values[r][c] for r in range(1, 4) for c in range(5, 8)]
    rest = [v for r, row in enumerate(values) for c, v in enumerate(row) if not (1 <= r < 4 and c >= 5)]
    assert min(patch) == 1 and max(rest) < 1
    assert min(v for row in values for v in row) == 0


def test_top_k_and_heatmap_off(client: TestClient) -> None:
    body = client.post(
        "/api/predict?top_k=2&heatmap=false", files={"file": ("x.png", solid("red", fmt="PNG"), "image/png")}
    ).json()
    assert len(body["top"]) == 2 and body["heatmap"] is None
    assert len(client.post("/api/predict?top_k=99", files={"file": ("x", solid())}).json()["top"]) == 5
    huge = "9" * 5000  # more digits than int() takes: still means "all of them", not a 500
    assert len(client.post(f"/api/predict?top_k={huge}", files={"file": ("x", solid())}).json()["top"]) == 5
    one = "0" * 30 + "1"  # leading zeros do not make a number large
    assert len(client.post(f"/api/predict?top_k={one}", files={"file": ("x", solid())}).json()["top"]) == 1


@pytest.mark.parametrize(("flag", "on"), [("1", True), ("TRUE", True), ("0", False), ("False", False)])
def test_heatmap_flag_takes_1_and_0_in_any_case(client: TestClient, flag: str, on: bool) -> None:
    body = client.post(f"/api/predict?heatmap={flag}", files={"file": ("x", solid())}).json()
    assert (body["heatmap"] is not None) is on


def test_probabilities_keep_their_precision(client: TestClient) -> None:
    body = client.post("/api/predict", files={"file": ("x", solid())}).json()
    # Not rounded for display (the page does that): the small ones would all read 0.0.
    for probabilities in (list(body["predictions"].values()), [t["probability"] for t in body["top"]]):
        assert any(p != round(p, 2) for p in probabilities), probabilities


@pytest.mark.parametrize(
    "query",
    [
        *["top_k=0", "top_k=abc", "top_k=-1", "top_k=%C2%B2", "top_k=", "top_k=1.5", "heatmap=maybe"],
        # Given twice, whichever comes last: "top_k=abc&top_k=2" was read as 2, the reverse refused.
        *["top_k=abc&top_k=2", "top_k=2&top_k=3", "heatmap=maybe&heatmap=true"],
    ],
)
def test_bad_query_is_422(client: TestClient, query: str) -> None:
    _error(
        client.post(f"/api/predict?{query}", files={"file": ("x", solid())}),
        422,
        query.split("=")[0].join(["bad_", ""]),
    )


def test_predict_webp(client: TestClient) -> None:
    body = client.post(
        "/api/predict", files={"file": ("x.webp", solid("blue", fmt="WEBP"), "image/webp")}
    ).json()
    assert body["primary"]["label"] == "Moles"


def test_label_does_not_matter_content_does(client: TestClient) -> None:
    # A PNG sent as "photo.jpg" with a JPEG content type is decoded as what it is.
    response = client.post(
        "/api/predict", files={"file": ("photo.jpg", solid("green", fmt="PNG"), "image/jpeg")}
    )
    assert response.json()["primary"]["label"] == "Eczema"


@pytest.mark.parametrize(
    ("kwargs", "status", "code"),
    [
        pytest.param({"files": {"file": ("x.jpg", b"", "image/jpeg")}}, 400, "empty_file", id="empty-file"),
        pytest.param(
            {"files": {"file": ("x.jpg", b"not an image at all", "image/jpeg")}},
            400,
            "not_an_image",
            id="text-named-jpg",
        ),
        pytest.param(
            {"files": {"image": ("x.jpg", solid(), "image/jpeg")}}, 400, "missing_file", id="wrong-field"
        ),
        pytest.param(
            {"data": {"file": "just text"}, "files": {"other": ("a.jpg", solid())}},
            400,
            "missing_file",
            id="text-field",
        ),
        pytest.param({"data": {"file": "just text"}}, 400, "not_multipart", id="urlencoded"),
        pytest.param(
            {"content": b"raw bytes", "headers": {"content-type": "image/jpeg"}},
            400,
            "not_multipart",
            id="raw-body",
        ),
        pytest.param({}, 400, "not_multipart", id="empty-body"),
        pytest.param(
            {"content": b"--B--\r\n", "headers": {"content-type": "multipart/form-datax; boundary=B"}},
            400,
            "not_multipart",
            id="another-media-type",
        ),
        pytest.param(
            {
                "content": b'--B\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\n\r\n'
                + solid(),
                "headers": {"content-type": "multipart/form-data; boundary=B"},
            },
            400,
            "bad_multipart",
            id="no-closing-boundary",
        ),
        pytest.param(
            {
                "files": [
                    ("file", ("a.jpg", solid(), "image/jpeg")),
                    ("file", ("b.jpg", solid(), "image/jpeg")),
                ]
            },
            400,
            "too_many_files",
            id="two-files",
        ),
        pytest.param(
            {"files": {"file": ("x.gif", encode(Image.new("RGB", (8, 8)), "GIF"), "image/gif")}},
            415,
            "unsupported_format",
            id="gif",
        ),
        pytest.param(
            {"files": {"file": ("x.jpg", solid()[:200], "image/jpeg")}}, 400, "corrupt_image", id="truncated"
        ),
        pytest.param(
            {"files": {"file": ("x.png", encode(Image.new("L", (8000, 6000)), "PNG"), "image/png")}},
            413,
            "image_too_large",
            id="too-many-pixels",
        ),
    ],
)
def test_predict_errors(client: TestClient, kwargs: dict[str, object], status: int, code: str) -> None:
    _error(client.post("/api/predict", **kwargs), status, code)  # type: ignore[arg-type]


@pytest.mark.parametrize("path", ["/api/predict", "/api/predict/batch"])
@pytest.mark.parametrize("size", [100, 400], ids=["small", "over-64-KB"])
def test_a_file_part_without_a_filename_is_missing_file_at_any_size(
    client: TestClient, path: str, size: int
) -> None:
    # curl -F 'file=<photo.jpg' sends no filename: a photo over 64 KB got "Part exceeded maximum size…".
    field = "file" if path == "/api/predict" else "files"
    image = encode(Image.effect_noise((size, size), 64).convert("RGB"), "PNG")
    head = f'--B\r\nContent-Disposition: form-data; name="{field}"\r\nContent-Type: image/png\r\n\r\n'
    body = head.encode() + image + b"\r\n--B--\r\n"
    response = client.post(path, content=body, headers={"content-type": "multipart/form-data; boundary=B"})
    _error(response, 400, "missing_file")
    assert "a part with a filename" in response.json()["error"]["message"]


def test_file_over_the_image_limit_is_413(client: TestClient) -> None:
    big = b"\xff\xd8" + b"0" * (1 * MB + 10)
    _error(client.post("/api/predict", files={"file": ("x.jpg", big, "image/jpeg")}), 413, "file_too_large")


def test_body_over_limit_refused_from_content_length(client: TestClient) -> None:
    response = client.post("/api/predict", content=b"0" * 10, headers={"content-length": str(3 * MB)})
    _error(response, 413, "body_too_large")
    assert response.headers["connection"] == "close"


@pytest.mark.parametrize("length", ["-5", "abc", "1e3", ""])
def test_content_length_that_is_not_a_size_is_400(client: TestClient, length: str) -> None:
    response = client.post("/api/predict", content=b"0" * 10, headers={"content-length": length})
    _error(response, 400, "bad_content_length")
    assert response.headers["connection"] == "close"  # the body was not read: the connection cannot go on


def test_limits_are_inclusive(tiny_bundle: Path) -> None:
    # A body, a file and an image exactly at their limits pass; one byte or one pixel more does not.
    image = encode(Image.new("RGB", (64, 50), (220, 30, 30)), "PNG")
    boundary = "B"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n'.encode()
        + image
        + f"\r\n--{boundary}--\r\n".encode()
    )
    headers = {"content-type": f"multipart/form-data; boundary={boundary}"}
    exact = {"max_body_bytes": len(body), "max_image_bytes": len(image), "max_pixels": 64 * 50}
    with _client(tiny_bundle, **exact) as c:
        response = c.post("/api/predict", content=body, headers=headers)
        assert response.status_code == 200, response.text
    for name, code in [
        ("max_body_bytes", "body_too_large"),
        ("max_image_bytes", "file_too_large"),
        ("max_pixels", "image_too_large"),
    ]:
        with _client(tiny_bundle, **{**exact, name: exact[name] - 1}) as c:
            _error(c.post("/api/predict", content=body, headers=headers), 413, code)


def test_each_body_check_is_inclusive_on_its_own(tiny_bundle: Path) -> None:
    # In the test above, the check while streaming refuses what an off-by-one in the Content-Length one lets
    # through (and the other way round): each is tried here without the other.
    image = encode(Image.new("RGB", (64, 50), (220, 30, 30)), "PNG")
    head = b'--B\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n'
    body = head + image + b"\r\n--B--\r\n"
    headers = {"content-type": "multipart/form-data; boundary=B"}
    with _client(tiny_bundle, max_body_bytes=len(body)) as c:
        declared = {**headers, "content-length": str(len(body) + 1)}  # one byte over, refused unread
        _error(c.post("/api/predict", content=b"0" * 10, headers=declared), 413, "body_too_large")
        chunked = c.post("/api/predict", content=iter([body]), headers=headers)  # no Content-Length
        assert chunked.status_code == 200, chunked.text
    with _client(tiny_bundle, max_body_bytes=len(body) - 1) as c:
        _error(c.post("/api/predict", content=iter([body]), headers=headers), 413, "body_too_large")


def test_body_over_limit_refused_while_streaming(client: TestClient) -> None:
    sent = 0

    def chunks() -> Iterator[bytes]:
        nonlocal sent
        yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="x.jpg"\r\n\r\n'
        for _ in range(64):
            sent += 64 * 1024
            yield b"0" * (64 * 1024)

    response = client.post(
        "/api/predict", content=chunks(), headers={"content-type": "multipart/form-data; boundary=b"}
    )
    _error(response, 413, "body_too_large")


def test_many_multipart_fields_are_refused(client: TestClient) -> None:
    data = {f"f{i}": "x" for i in range(2000)}
    _error(client.post("/api/predict", data=data, files={"file": ("x.jpg", solid())}), 400, "bad_multipart")


@pytest.mark.parametrize(("path", "status"), [("/api/predict", 400), ("/api/predict/batch", 413)])
@pytest.mark.parametrize("count", [5, 8, 3000])
def test_too_many_files_is_one_answer_whatever_the_count(
    client: TestClient, path: str, status: int, count: int
) -> None:
    # Past the limit by one or by thousands (where the multipart parser's own bound stops first): the same.
    files = [("files" if "batch" in path else "file", (f"{i}.jpg", b"x", "image/jpeg")) for i in range(count)]
    _error(client.post(path, files=files), status, "too_many_files")


def test_files_in_other_fields_past_the_parsers_bound_are_said_as_such(client: TestClient) -> None:
    # One file in 'file' and five in another field: it was told "send one file in 'file'", which it did.
    files = [("file", ("x.jpg", solid(), "image/jpeg"))]
    files += [("other", (f"{i}.jpg", b"x", "image/jpeg")) for i in range(5)]
    response = client.post("/api/predict", files=files)
    _error(response, 400, "too_many_files")
    said = "send one file in 'file' (the body holds more than 5 files in all its fields)"
    assert response.json()["error"]["message"] == said


def test_multipart_media_type_is_case_insensitive(client: TestClient) -> None:
    body = (
        b'--B\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\n\r\n'
        + solid()
        + b"\r\n--B--\r\n"
    )
    headers = {"content-type": "Multipart/Form-Data; boundary=B"}
    response = client.post("/api/predict?heatmap=false", content=body, headers=headers)
    assert response.status_code == 200 and response.json()["primary"]["label"] == "Acne"


@pytest.mark.parametrize("method", ["OPTIONS", "TRACE", "PUT", "PROPFIND"])
def test_other_methods_on_an_api_route_name_the_allowed_one(client: TestClient, method: str) -> None:
    response = client.request(method, "/api/predict")
    _error(response, 405, "method_not_allowed")
    assert response.headers["allow"] == "POST"
    _error(client.request(method, "/api/nothing-here"), 404, "not_found")


@pytest.mark.parametrize(
    ("path", "meant"),
    [
        pytest.param("/api/predict/", "/api/predict", id="predict"),
        pytest.param("/api/predict/batch/", "/api/predict/batch", id="batch"),
        pytest.param("/api/info//", "/api/info", id="info-two-slashes"),
    ],
)
def test_a_trailing_slash_gets_a_404_naming_the_endpoint_meant(
    client: TestClient, path: str, meant: str
) -> None:
    # Not a redirect: a client would upload its image a second time.
    response = client.post(path, files={"file": ("a.jpg", solid())}, follow_redirects=False)
    _error(response, 404, "not_found")
    assert response.json()["error"]["message"] == f"no such endpoint; did you mean {meant}?"


def test_body_refused_early_is_counted_and_names_fractional_limits(tiny_bundle: Path) -> None:
    with _client(tiny_bundle, max_body_bytes=MB // 2) as small:
        response = small.post("/api/predict", content=b"0" * 10, headers={"content-length": str(MB)})
        _error(response, 413, "body_too_large")
        assert "larger than 0.5 MB" in response.json()["error"]["message"]
        assert 'skin_rejected_total{reason="body_too_large"} 1.0' in small.get("/metrics").text


def test_every_error_answer_is_counted_by_its_code_once(tiny_bundle: Path) -> None:
    # Whoever answers: a handler (ApiError), routing (404, 405), the page's files (416), or a bug (500).
    with _client(tiny_bundle) as c:
        c.app.state.engine.run = None  # type: ignore[attr-defined]  # any call fails: 500 inference_failed
        answers = [
            c.post("/api/predict", files={"file": ("x.jpg", b"junk", "image/jpeg")}),
            c.get("/api/nothing-here"),
            c.put("/api/info"),
            c.get("/app.js", headers={"range": "bytes=99999999-"}),
            c.post("/api/predict", files={"file": ("x.jpg", solid(), "image/jpeg")}),
            c.get("/api/info"),
        ]
        assert [a.status_code for a in answers] == [400, 404, 405, 416, 500, 200]
        counted = {
            line.split('"')[1]: line.rsplit(" ", 1)[1]
            for line in c.get("/metrics").text.splitlines()
            if line.startswith("skin_rejected_total{")
        }
    assert counted == {
        code: "1.0"
        for code in (
            "not_an_image",
            "not_found",
            "method_not_allowed",
            "range_not_satisfiable",
            "inference_failed",
        )
    }


def test_client_leaving_mid_upload_is_499_not_a_server_error() -> None:
    import asyncio

    from starlette.requests import Request

    from runtime.upload import ApiError, read_files

    messages = [
        {
            "type": "http.request",
            "body": b'--B\r\nContent-Disposition: form-data; name="file"',
            "more_body": True,
        },
        {"type": "http.disconnect"},
    ]

    async def receive() -> dict[str, object]:
        return messages.pop(0)

    headers = [(b"content-type", b"multipart/form-data; boundary=B")]
    request = Request({"type": "http", "method": "POST", "headers": headers}, receive)  # type: ignore[arg-type]
    with pytest.raises(ApiError) as info:
        asyncio.run(read_files(request, "file", max_files=1))
    assert (info.value.status, info.value.code) == (499, "client_closed")


def test_cors_lets_clients_send_and_read_the_request_id(tiny_bundle: Path) -> None:
    origin = "https://app.example"
    with _client(tiny_bundle, cors_origins=(origin,)) as cors:
        preflight = {"origin": origin, "access-control-request-method": "POST"}
        ok = cors.options(
            "/api/predict", headers={**preflight, "access-control-request-headers": "x-request-id"}
        )
        assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == origin
        assert ok.content == b"" and "content-type" not in ok.headers  # not Starlette's text/plain "OK"
        refused = cors.options("/api/predict", headers={**preflight, "origin": "https://elsewhere.example"})
        _error(refused, 400, "cors_refused")
        assert "origin" in refused.json()["error"]["message"]
        answer = cors.get("/api/info", headers={"origin": origin, "x-request-id": "abc"})
        assert "x-request-id" in answer.headers["access-control-expose-headers"]
        assert answer.headers["x-request-id"] == "abc"
        # Preflights are not counted as predictions.
        metrics = cors.get("/metrics").text
        assert 'skin_requests_total{route="options",status="200"} 1.0' in metrics
        assert 'skin_requests_total{route="options",status="400"} 1.0' in metrics
        assert 'route="/api/predict"' not in metrics


def test_without_the_web_page_the_api_still_serves(tiny_bundle: Path, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import runtime.app

    # A wheel installed without webui/ (the default folder is missing): JSON 404s for pages, API as usual.
    monkeypatch.setattr(runtime.app, "DEFAULT_WEBUI", tmp_path / "webui")
    with _client(tiny_bundle, webui_dir=str(tmp_path / "webui")) as bare:
        _error(bare.get("/"), 404, "not_found")
        assert bare.get("/api/info").status_code == 200
    # Set explicitly to a folder that is not there: a start-up error naming the setting.
    with pytest.raises(ValueError, match="SKIN_WEBUI_DIR"):
        create_app(Settings(bundle=str(tiny_bundle), webui_dir=str(tmp_path / "typo")))
    # One without the page (the folder above it, an empty one): it served, and / was a 404
    (tmp_path / "webui").mkdir()
    (tmp_path / "webui" / "app.js").write_text("")
    with pytest.raises(ValueError, match=r"SKIN_WEBUI_DIR .* has no index\.html \(the page at /\)$"):
        create_app(Settings(bundle=str(tiny_bundle), webui_dir=str(tmp_path)))
    # One that cannot be read (no permission, a name too long): every visit would be a 500, or a traceback
    with pytest.raises(ValueError, match="SKIN_WEBUI_DIR .* cannot be read: File name too long"):
        create_app(Settings(bundle=str(tiny_bundle), webui_dir=str(tmp_path / ("w" * 300))))


def test_a_page_file_that_cannot_be_read_stops_start_up(
    tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # StaticFiles finds a file by its stat alone: an app.js it could not open was a 200 cut off at once.
    for name in ("index.html", "app.js"):
        (tmp_path / name).write_text("page")
    opened = Path.open

    def refuse_app_js(self: Path, *args: object, **kwargs: object) -> object:
        if self.name == "app.js":  # as a file mode 600 of another user is (root reads anything, so patched)
            raise PermissionError(13, "Permission denied", str(self))
        return opened(self, *args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr(Path, "open", refuse_app_js)
    with pytest.raises(ValueError, match=r"SKIN_WEBUI_DIR .* cannot be read: Permission denied \(app\.js\)"):
        create_app(Settings(bundle=str(tiny_bundle), webui_dir=str(tmp_path)))


def test_batch_keeps_order_and_isolates_bad_files(client: TestClient) -> None:
    files = [
        ("files", ("red.jpg", solid("red"), "image/jpeg")),
        ("files", ("notes.txt", b"hello", "text/plain")),
        ("files", ("blue.png", solid("blue", fmt="PNG"), "image/png")),
    ]
    body = client.post("/api/predict/batch?heatmap=false", files=files).json()
    results = body["results"]
    assert [r["filename"] for r in results] == ["red.jpg", "notes.txt", "blue.png"]
    assert results[0]["primary"]["label"] == "Acne" and results[2]["primary"]["label"] == "Moles"
    assert results[1]["error"]["code"] == "not_an_image" and "predictions" not in results[1]
    assert body["model"]["name"] == "tiny-test-model"


def test_batch_files_over_the_image_limit_are_refused_one_by_one(tiny_bundle: Path) -> None:
    # A readable image over SKIN_MAX_IMAGE_MB: only the size check refuses it, not decoding.
    small = solid("red")
    big = encode(Image.effect_noise((64, 64), 64).convert("RGB"), "PNG")
    assert len(big) > len(small)
    files = [("files", ("big.png", big, "image/png")), ("files", ("small.jpg", small, "image/jpeg"))]
    with _client(tiny_bundle, max_image_bytes=len(small)) as c:
        results = c.post("/api/predict/batch?heatmap=false", files=files).json()["results"]
    assert results[0]["error"]["code"] == "file_too_large" and "predictions" not in results[0]
    assert results[1]["primary"]["label"] == "Acne"


def test_batch_all_bad_is_still_200_with_errors(client: TestClient) -> None:
    body = client.post("/api/predict/batch", files=[("files", ("a", b"", "image/jpeg"))]).json()
    assert body["results"][0]["error"]["code"] == "empty_file"


def test_batch_refusals_are_counted(tiny_bundle: Path) -> None:
    with _client(tiny_bundle) as c:
        files = [("files", ("a.jpg", solid(), "image/jpeg")), ("files", ("b.jpg", b"", "image/jpeg"))]
        assert c.post("/api/predict/batch", files=files).status_code == 200
        assert 'skin_rejected_total{reason="empty_file"} 1.0' in c.get("/metrics").text

        def broken(images):  # type: ignore[no-untyped-def]
            raise RuntimeError("no model")

        # A batch whose run fails answers one 500: its refused file's entry is never sent, so not counted.
        c.app.state.engine.run = broken  # type: ignore[attr-defined]
        _error(c.post("/api/predict/batch", files=files), 500, "inference_failed")
        text = c.get("/metrics").text
        assert 'skin_rejected_total{reason="empty_file"} 1.0' in text
        assert 'skin_rejected_total{reason="inference_failed"} 1.0' in text


def test_batch_limits(client: TestClient) -> None:
    files = [("files", (f"{i}.jpg", solid(), "image/jpeg")) for i in range(4)]
    _error(client.post("/api/predict/batch", files=files), 413, "too_many_files")
    _error(client.post("/api/predict/batch", files={"file": ("x.jpg", solid())}), 400, "missing_file")


def test_batch_file_names_are_sanitised(client: TestClient) -> None:
    files = [("files", ("../../etc/passwd.jpg", solid(), "image/jpeg"))]
    assert client.post("/api/predict/batch", files=files).json()["results"][0]["filename"] == "passwd.jpg"


@pytest.mark.parametrize(
    ("sent", "shown"),
    [
        pytest.param("C:\\Users\\jane\\x.jpg", "x.jpg", id="windows-path"),
        pytest.param("jane\\2024\\x.jpg", "x.jpg", id="windows-relative-path"),
        pytest.param("photo\u202egpj.exe", "photogpj.exe", id="right-to-left-override"),
        pytest.param("a\tb\x7fc.jpg", "abc.jpg", id="control-characters"),
        pytest.param("n" * 200 + ".jpg", "n" * 120, id="long"),
    ],
)
def test_batch_file_names_are_base_names_printable_and_bounded(
    client: TestClient, sent: str, shown: str
) -> None:
    # Sent as a browser would, unescaped: the multipart parser itself only cuts paths with a drive letter.
    body = (
        f'--B\r\nContent-Disposition: form-data; name="files"; filename="{sent}"\r\n\r\n'.encode()
        + solid()
        + b"\r\n--B--\r\n"
    )
    headers = {"content-type": "multipart/form-data; boundary=B"}
    response = client.post("/api/predict/batch?heatmap=false", content=body, headers=headers)
    assert response.json()["results"][0]["filename"] == shown


def test_info(client: TestClient) -> None:
    body = client.get("/api/info").json()
    assert body["model_name"] == "tiny-test-model" and body["model_version"] == "0.0.1"
    assert [c["label"] for c in body["classes"]] == CLASS_NAMES
    assert body["input_size"] == [64, 64]
    assert body["onnxruntime"]["providers"] == ["CPUExecutionProvider"]
    assert len(body["model_sha256"]) == 64
    assert body["limits"]["allowed_formats"] == ["JPEG", "PNG", "WEBP"]
    assert body["limits"]["allowed_types"] == ["image/jpeg", "image/png", "image/webp"]
    assert body["limits"]["max_image_bytes"] == 1 * MB
    assert body["has_heatmap"] is True and body["demo"] is False


def test_info_limits_follow_the_allowed_formats(tiny_bundle: Path) -> None:
    with _client(tiny_bundle, allowed_formats=("PNG",)) as c:
        limits = c.get("/api/info").json()["limits"]
    assert limits["allowed_formats"] == ["PNG"] and limits["allowed_types"] == ["image/png"]


@pytest.mark.parametrize(
    ("calibration", "said"),
    [
        pytest.param(
            {"temperature": 1.3, "degenerate": False}, {"fitted": True, "degenerate": False}, id="fit"
        ),
        pytest.param(
            {"temperature": 0.05, "degenerate": True}, {"fitted": True, "degenerate": True}, id="no-min"
        ),
        pytest.param(
            {"temperature": 1.0, "skipped": "no dataset"},
            {"fitted": False, "degenerate": False},
            id="no-data",
        ),
        pytest.param(None, None, id="no-calibration"),
    ],
)
def test_info_says_whether_the_temperature_fit_found_a_minimum(
    tmp_path: Path, calibration: dict[str, object] | None, said: dict[str, bool] | None
) -> None:
    # Export marks a fit at a bound of T "degenerate" (no real fit): the page must not call it calibrated.
    directory = make_bundle(tmp_path)
    report = json.loads((directory / REPORT_FILE).read_text())
    report.pop("calibration", None)
    if calibration is not None:
        report["calibration"] = calibration
    (directory / REPORT_FILE).write_text(json.dumps(report))
    with _client(directory) as c:
        assert c.get("/api/info").json()["calibration"] == said


def test_report(client: TestClient) -> None:
    body = client.get("/api/report").json()
    assert {"accuracy", "macro avg", "weighted avg"} <= set(body)
    assert body["Acne"]["support"] == 10


def test_report_missing_is_404(tmp_path: Path) -> None:
    with _client(make_bundle(tmp_path, report=False)) as c:
        _error(c.get("/api/report"), 404, "no_report")
        assert c.get("/api/info").json()["has_report"] is False


def test_health_and_ready(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"


def test_not_ready_is_503(tiny_bundle: Path) -> None:
    # Before start-up has run (no engine yet), and while the model is loaded but not warmed up.
    _assert_starting(_client(tiny_bundle).get("/readyz"))
    with _client(tiny_bundle) as c:
        c.app.state.engine.ready = False  # type: ignore[attr-defined]
        _assert_starting(c.get("/readyz"))
        spec = c.get("/api/openapi.json").json()
        described = spec["paths"]["/readyz"]["get"]["responses"]["503"]["content"]["application/json"]
        assert _problems(c.get("/readyz").json(), described["schema"], spec) == []
        assert c.get("/healthz").status_code == 200  # alive all the same


def _assert_starting(response) -> None:
    assert response.status_code == 503
    assert response.headers["content-type"].startswith("application/json")
    assert response.json() == {"status": "starting"}


def test_openapi_lists_every_endpoint(client: TestClient) -> None:
    # Taken from the app's own routes: the page at / (a Mount) was in none of the document's paths.
    spec = client.get("/api/openapi.json").json()
    assert spec["openapi"].startswith("3.")
    served = {
        route.path: set(route.methods or ()) - {"HEAD"}
        for route in client.app.routes  # type: ignore[attr-defined]
        if isinstance(route, Route) and route.path != "/api/{rest:path}"  # the JSON 404/405 for the rest
    }
    served["/"] = {"GET"}  # the page's Mount
    assert {path: {m.upper() for m in ops} for path, ops in spec["paths"].items()} == served
    assert client.get("/").headers["content-type"].startswith("text/html")


def test_openapi_describes_the_request_id_a_client_may_send(client: TestClient) -> None:
    # The answer's X-Request-ID was described, not the client's own one it echoes: no operation took it.
    spec = client.get("/api/openapi.json").json()
    param = spec["components"]["parameters"]["RequestId"]
    assert (param["name"], param["in"], param["required"]) == ("X-Request-ID", "header", False)
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            assert {"$ref": "#/components/parameters/RequestId"} in operation["parameters"], (path, method)
    assert client.get("/healthz", headers={"X-Request-ID": "abc-1"}).headers["x-request-id"] == "abc-1"


def test_openapi_leaves_out_the_page_where_none_is_served(
    tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import runtime.app

    monkeypatch.setattr(runtime.app, "DEFAULT_WEBUI", tmp_path / "webui")
    with _client(tiny_bundle, webui_dir=str(tmp_path / "webui")) as bare:
        assert "/" not in bare.get("/api/openapi.json").json()["paths"]
        _error(bare.get("/"), 404, "not_found")


def test_openapi_matches_what_the_routes_answer(client: TestClient) -> None:
    spec = client.get("/api/openapi.json").json()
    single = spec["paths"]["/api/predict"]["post"]["responses"]
    batch = spec["paths"]["/api/predict/batch"]["post"]["responses"]
    # body timeout, server error and busy can end either route; a bad format is a 415 only for one file
    assert {"200", "400", "408", "413", "415", "422", "500", "503", "default"} == set(single)
    assert set(batch) == set(single) - {"415"}
    answer = client.post("/api/predict", files={"file": ("x.jpg", solid())}).json()
    schema = spec["components"]["schemas"]["Prediction"]
    assert set(answer) <= set(schema["properties"]) and set(schema["required"]) <= set(answer)
    assert "timing_ms" not in schema["properties"]  # listed once, never sent


_TYPES = {
    "object": dict,
    "array": list,
    "string": str,
    "integer": int,
    "number": (int, float),
    "boolean": bool,
    "null": type(None),
}


def _problems(value: object, schema: dict, spec: dict, at: str = "$") -> list[str]:  # type: ignore[type-arg]
    """Where ``value`` breaks ``schema`` (the JSON Schema parts the description uses; $ref into ``spec``)."""
    if "$ref" in schema:
        target: dict = spec  # type: ignore[type-arg]
        for key in schema["$ref"].removeprefix("#/").split("/"):
            target = target[key]
        return _problems(value, target, spec, at)
    if "oneOf" in schema:
        fits = [option for option in schema["oneOf"] if not _problems(value, option, spec, at)]
        return [] if len(fits) == 1 else [f"{at}: fits {len(fits)} of oneOf"]
    kinds = schema.get("type")
    if kinds is not None:
        names = kinds if isinstance(kinds, list) else [kinds]
        ok = any(
            isinstance(value, _TYPES[n]) and not (n in ("integer", "number") and value is True) for n in names
        )
        if not ok or (value is True or value is False) and "boolean" not in names:
            return [f"{at}: {type(value).__name__} is not {kinds}"]
    if "enum" in schema and value not in schema["enum"]:
        return [f"{at}: {value!r} not in {schema['enum']}"]
    out = []
    if isinstance(value, dict):
        out += [f"{at}: missing {key!r}" for key in schema.get("required", []) if key not in value]
        for key, item in value.items():
            sub = schema.get("properties", {}).get(key)
            if sub is None and isinstance(schema.get("additionalProperties"), dict):
                sub = schema["additionalProperties"]
            if (
                sub is None
                and "properties" in schema
                and schema.get("additionalProperties", True) is not True
            ):
                out.append(f"{at}: unexpected {key!r}")
            elif sub is not None:
                out += _problems(item, sub, spec, f"{at}.{key}")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            out += _problems(item, schema["items"], spec, f"{at}[{i}]")
    return out


def test_answers_fit_the_openapi_description(client: TestClient) -> None:
    spec = client.get("/api/openapi.json").json()

    def fits(response, path: str, method: str) -> None:  # type: ignore[no-untyped-def]
        responses = spec["paths"][path][method]["responses"]
        described = responses.get(str(response.status_code), responses.get("default"))
        assert described, (path, response.status_code)
        schema = described["content"]["application/json"]["schema"]
        assert _problems(response.json(), schema, spec) == [], (path, response.json())
        assert "x-request-id" in response.headers and "X-Request-ID" in described["headers"]

    image = ("x.jpg", solid(), "image/jpeg")
    fits(client.post("/api/predict", files={"file": image}), "/api/predict", "post")
    both = client.post(
        "/api/predict/batch", files=[("files", image), ("files", ("y.jpg", b"junk", "image/jpeg"))]
    )
    assert [set(r) >= {"error"} for r in both.json()["results"]] == [False, True]
    fits(both, "/api/predict/batch", "post")
    fits(client.post("/api/predict", files={"file": ("y.jpg", b"junk")}), "/api/predict", "post")
    fits(client.post("/api/predict?top_k=0", files={"file": image}), "/api/predict", "post")
    fits(client.put("/api/predict"), "/api/predict", "post")  # 405: the default answer
    fits(client.get("/readyz"), "/readyz", "get")
    top_k = spec["paths"]["/api/predict"]["post"]["parameters"][0]
    assert top_k["name"] == "top_k" and top_k["schema"]["default"] == 5
    batch = spec["paths"]["/api/predict/batch"]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert batch["schema"]["properties"]["files"]["maxItems"] == 3  # this client's SKIN_MAX_BATCH_FILES
    # The checker itself: a batch entry with neither a prediction nor an error fits nothing.
    assert _problems(
        {"results": [{"filename": "x"}], "model": both.json()["model"]}, batch_schema(spec), spec
    )


def test_probe_answers_and_the_405_header_are_all_described(client: TestClient) -> None:
    spec = client.get("/api/openapi.json").json()
    for path in ("/healthz", "/readyz"):
        answer = client.get(path).json()
        schema = spec["paths"][path]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
        assert set(answer) == set(schema["properties"]) == set(schema["required"]), path
    refused = client.put("/api/predict")
    assert refused.status_code == 405 and refused.headers["allow"] == "POST"
    assert "Allow" in spec["paths"]["/api/predict"]["post"]["responses"]["default"]["headers"]


def test_openapi_follows_the_settings_and_describes_the_busy_answer(tiny_bundle: Path) -> None:
    with _client(tiny_bundle, top_k=2) as c:
        spec = c.get("/api/openapi.json").json()
    predict = spec["paths"]["/api/predict"]["post"]
    top_k = predict["parameters"][0]
    assert top_k["schema"]["default"] == 2  # this client's SKIN_TOP_K
    assert "more than the 5 classes lists them all" in top_k["description"]
    for path in ("/api/predict", "/api/predict/batch"):  # both routes answer 503 with Retry-After
        busy = spec["paths"][path]["post"]["responses"]["503"]
        assert {"X-Request-ID", "Retry-After"} <= set(busy["headers"])
    # the longest client X-Request-ID kept, as the middleware keeps it
    assert spec["components"]["headers"]["RequestId"]["schema"]["maxLength"] == 64


@pytest.mark.parametrize(
    ("formats", "words"),
    [
        pytest.param(("JPEG", "PNG", "WEBP"), "JPEG, PNG or WebP", id="default"),
        pytest.param(("JPEG", "PNG"), "JPEG or PNG", id="no-webp"),
        pytest.param(("JPEG",), "JPEG", id="jpeg-only"),
    ],
)
def test_openapi_names_the_formats_this_server_takes(
    tiny_bundle: Path, formats: tuple[str, ...], words: str
) -> None:
    # The README's advice where memory is tight (WebP left out): the description still offered WebP, a 415.
    with _client(tiny_bundle, allowed_formats=formats) as c:
        summary = c.get("/api/openapi.json").json()["paths"]["/api/predict"]["post"]["summary"]
    assert summary == f"Classify one image ({words})"


def batch_schema(spec: dict) -> dict:  # type: ignore[type-arg]
    return spec["components"]["schemas"]["Batch"]  # type: ignore[no-any-return]


def test_the_readme_names_every_metric_the_app_exports(client: TestClient) -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")
    families = {
        line.split()[2]
        for line in client.get("/metrics").text.splitlines()
        if line.startswith("# TYPE skin_") and not line.split()[2].endswith("_created")
    }
    assert families == set(re.findall(r"`(skin_[a-z_]+)", readme))


def test_metrics(client: TestClient) -> None:
    client.post("/api/predict", files={"file": ("x.jpg", solid())})
    text = client.get("/metrics").text
    assert 'skin_requests_total{route="/api/predict",status="200"}' in text
    assert "skin_inference_seconds_bucket" in text and "skin_decode_seconds_count" in text
    assert 'skin_model_info{name="tiny-test-model"' in text
    assert "\nskin_images_total " in text
    assert "\nskin_in_flight_requests 1.0" in text  # this /metrics request itself
    # images per gathered run, not seconds: buckets up to SKIN_GATHER's largest
    gathered = [line for line in text.splitlines() if line.startswith("skin_gathered_images_bucket")]
    assert [line.split('"')[1] for line in gathered] == [
        "1.0",
        "2.0",
        "3.0",
        "4.0",
        "6.0",
        "8.0",
        "12.0",
        "16.0",
        "+Inf",
    ]


def test_security_headers_and_request_id(client: TestClient) -> None:
    response = client.get("/api/info", headers={"x-request-id": "abc-123"})
    assert response.headers["x-request-id"] == "abc-123"
    assert "default-src 'self'" in response.headers["content-security-policy"]
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["cache-control"] == "no-store"
    assert len(client.get("/healthz").headers["x-request-id"]) == 32


@pytest.mark.parametrize(
    ("sent", "kept"),
    [
        pytest.param(b"r" * 64, True, id="64-characters"),
        pytest.param(b"r" * 65, False, id="65-characters"),
        pytest.param(b"a\x01b", False, id="control-character"),
        pytest.param(b"caf\xe9", False, id="not-ascii"),
    ],
)
def test_request_ids_that_cannot_be_logged_as_sent_are_replaced(
    client: TestClient, sent: bytes, kept: bool
) -> None:
    answered = client.get("/healthz", headers={b"x-request-id": sent}).headers["x-request-id"]
    if kept:
        assert answered == sent.decode()
    else:
        assert len(answered) == 32 and int(answered, 16) >= 0  # a fresh id of its own


def test_unknown_paths_and_methods_are_json(client: TestClient) -> None:
    _error(client.get("/api/nope"), 404, "not_found")
    _error(client.get("/api/predict"), 405, "method_not_allowed")


def test_the_page_is_revalidated_and_api_answers_are_never_cached(client: TestClient) -> None:
    page = client.get("/")
    assert page.headers.get_list("cache-control") == ["no-cache"] and page.headers["etag"]
    for path in ("/api/nope", "/api/predict/"):  # not routes, but API answers all the same
        assert client.get(path).headers.get_list("cache-control") == ["no-store"]
    text = client.get("/metrics").text
    assert 'skin_requests_total{route="api-other",status="404"}' in text


@pytest.mark.parametrize("path", ["/..%2f..%2fetc/passwd", "/%2e%2e/%2e%2e/etc/passwd", "/../pyproject.toml"])
def test_no_path_traversal_through_static_files(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 404
    assert "root:" not in response.text and "[project]" not in response.text


def test_page_is_served(client: TestClient) -> None:
    response = client.get("/")
    assert response.status_code == 200 and "<html" in response.text.lower()


def test_the_page_folder_redirect_names_no_host(client: TestClient) -> None:
    # Starlette built the Location from the Host header: a forged one, behind a cache, redirected everyone.
    answer = client.get("/%2e", headers={"host": "evil.example"}, follow_redirects=False)
    assert answer.status_code == 307 and answer.headers["location"] == "/"


@pytest.mark.parametrize(
    ("path", "root_path", "location"),
    [
        pytest.param("/docs", "", "/docs/", id="folder"),
        pytest.param("/docs?lang=de", "", "/docs/?lang=de", id="query"),
        pytest.param("/x/%2e%2e/docs", "", "/docs/", id="dots"),
        pytest.param("/docs", "/skin", "/skin/docs/", id="root-path"),
    ],
)
def test_a_folder_without_its_slash_redirects_to_a_path_only(
    tmp_path: Path, path: str, root_path: str, location: str
) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "index.html").write_text("<html></html>")
    app = Starlette(routes=[Mount("/", PageFiles(directory=tmp_path, html=True))])
    with TestClient(app, root_path=root_path) as c:
        answer = c.get(root_path + path, headers={"host": "evil.example"}, follow_redirects=False)
    assert answer.status_code == 307 and answer.headers["location"] == location


def test_page_ranges_follow_rfc_9110(client: TestClient) -> None:
    whole = client.get("/app.js").content
    part = client.get("/app.js", headers={"range": "bytes=0-9"})
    assert part.status_code == 206 and part.content == whole[:10]
    # One that cannot be parsed, or in a unit the server does not know, is ignored: the whole file.
    for bad in ("bytes=abc", "items=0-1", "bytes=9-1"):
        answer = client.get("/app.js", headers={"range": bad})
        assert answer.status_code == 200 and answer.content == whole, bad
    # One past the end is a 416 in the API's error shape, with the size.
    past = client.get("/app.js", headers={"range": f"bytes={len(whole)}-"})
    _error(past, 416, "range_not_satisfiable")
    assert past.headers["content-range"] == f"bytes */{len(whole)}"
    assert str(len(whole)) in past.json()["error"]["message"]
    assert past.headers["x-request-id"]
    assert client.get("/nowhere.js", headers={"range": "bytes=0-1"}).status_code == 404
    # A set is satisfiable when one of its ranges is: that one is served, in either order.
    for mixed in (f"bytes=0-9,{len(whole)}-", f"bytes={len(whole) + 5}-, 0-9", "bytes=0-9,-0"):
        answer = client.get("/app.js", headers={"range": mixed})
        assert answer.status_code == 206 and answer.content == whole[:10], mixed
    for none_inside in (f"bytes={len(whole)}-,{len(whole) + 1}-", f"bytes=-0,{len(whole)}-"):
        _error(client.get("/app.js", headers={"range": none_inside}), 416, "range_not_satisfiable")
    # What is left of a set is handled as any Range: one that cannot be parsed is ignored (the whole file).
    answer = client.get("/app.js", headers={"range": f"bytes=0-5,{len(whole)}-,7-3"})
    assert answer.status_code == 200 and answer.content == whole


def test_open_ended_and_suffix_ranges_of_a_set_are_kept_beside_one_past_the_end(client: TestClient) -> None:
    whole = client.get("/app.js").content
    for mixed, expected in (
        (f"bytes={len(whole)}-,-10", whole[-10:]),  # the last 10 bytes
        (f"bytes={len(whole)}-,-1", whole[-1:]),  # the last byte
        (f"bytes=10-,{len(whole)}-", whole[10:]),  # from byte 10 to the end
    ):
        answer = client.get("/app.js", headers={"range": mixed})
        assert answer.status_code == 206 and answer.content == expected, mixed


@pytest.mark.parametrize(
    ("extra", "status"),
    [
        pytest.param("9" * 5000 + "-", 416, id="start"),  # int() refuses 4,300 digits and more
        pytest.param("-" + "9" * 5000, 200, id="suffix"),  # the last 10^5000 bytes: the whole file
    ],
)
def test_a_range_set_with_a_5000_digit_number_is_no_server_error(
    client: TestClient, extra: str, status: int
) -> None:
    # Beside a range past the end, so that the page's own code sorts the set.
    whole = client.get("/app.js").content
    answer = client.get("/app.js", headers={"range": f"bytes={len(whole)}-,{extra}"})
    assert answer.status_code == status, answer.text[:200]
    if status == 416:
        _error(answer, 416, "range_not_satisfiable")
    else:
        assert answer.content == whole


@pytest.mark.parametrize("extra", [pytest.param(b"\xb2-", id="start"), pytest.param(b"-\xb9", id="suffix")])
def test_a_range_in_latin_1_superscript_digits_is_no_server_error(extra: bytes) -> None:
    # A header is Latin-1, and str.isdigit() takes "²", which int() refuses. Sent raw: httpx would send UTF-8.
    sent: list[Message] = []

    async def receive() -> Message:
        await asyncio.Event().wait()  # the client stays
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    headers = [(b"range", b"bytes=99999999-," + extra)]
    scope = {"type": "http", "method": "GET", "path": "/app.js", "root_path": "", "headers": headers}
    asyncio.run(PageFiles(directory=DEFAULT_WEBUI)(scope, receive, send))
    assert sent[0]["status"] == 416 and b"range_not_satisfiable" in sent[1]["body"]


def test_inference_failure_is_a_generic_500_logged_with_the_request_id(
    tiny_bundle: Path, runtime_log: pytest.LogCaptureFixture
) -> None:
    with _client(tiny_bundle) as c:

        def broken(images):  # type: ignore[no-untyped-def]
            raise RuntimeError("onnxruntime exploded in /secret/path")

        c.app.state.engine.run = broken  # type: ignore[attr-defined]
        response = c.post(
            "/api/predict", files={"file": ("x.jpg", solid())}, headers={"x-request-id": "req-77"}
        )
        _error(response, 500, "inference_failed")
        assert "secret" not in response.text and response.headers["x-request-id"] == "req-77"
        failures = [r for r in runtime_log.records if r.levelname == "ERROR"]
        assert failures and "req-77" in failures[0].getMessage() and failures[0].exc_info
        assert c.get("/healthz").status_code == 200
        assert c.post("/api/predict", files={"file": ("x.jpg", solid())}).status_code == 500  # still serving


def test_wrong_method_names_the_allowed_ones(client: TestClient) -> None:
    response = client.post("/api/info")
    _error(response, 405, "method_not_allowed")
    assert "GET" in response.headers["allow"]
