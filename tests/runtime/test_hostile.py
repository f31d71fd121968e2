"""Hostile and odd input through the HTTP API: always a JSON answer, never a 5xx, never a hang."""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from starlette.testclient import TestClient

from runtime.app import create_app
from runtime.preprocess import ImageError, preprocess
from runtime.settings import Settings
from tests.images import encode, solid


@pytest.fixture(scope="module")
def client(tiny_bundle: Path) -> Iterator[TestClient]:
    with TestClient(
        create_app(Settings(bundle=str(tiny_bundle), threads=1)), raise_server_exceptions=False
    ) as c:
        yield c


def _post(client: TestClient, data: bytes, name: str = "x.jpg", kind: str = "image/jpeg"):  # type: ignore[no-untyped-def]
    return client.post("/api/predict", files={"file": (name, data, kind)})


def _animated(fmt: str) -> bytes:
    frames = [Image.new("RGB", (40, 40), c) for c in ((30, 40, 220), (220, 30, 30), (30, 200, 40))]
    buf = io.BytesIO()
    frames[0].save(buf, fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_animated_images_use_their_first_frame(client: TestClient, fmt: str) -> None:
    response = _post(client, _animated(fmt), f"x.{fmt.lower()}", f"image/{fmt.lower()}")
    assert response.status_code == 200
    assert response.json()["primary"]["label"] == "Moles"  # the first frame is blue


@pytest.mark.parametrize(
    ("data", "status", "code"),
    [
        # An iPhone's photo: "not a recognised image" read as if the file were broken, not its format refused.
        pytest.param(
            b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\0" * 64,
            415,
            "unsupported_format",
            id="heic",
        ),
        pytest.param(b"\x00\x00\x00\x1cftypavif" + b"\0" * 64, 415, "unsupported_format", id="avif"),
        pytest.param(
            b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"></svg>',
            400,
            "not_an_image",
            id="svg",
        ),
        pytest.param(encode(Image.new("RGB", (8, 8)), "BMP"), 415, "unsupported_format", id="bmp"),
        pytest.param(encode(Image.new("RGB", (8, 8)), "TIFF"), 415, "unsupported_format", id="tiff"),
        pytest.param(encode(Image.new("RGB", (8, 8)), "GIF"), 415, "unsupported_format", id="gif"),
        pytest.param(b"%PDF-1.4\n" + b"0" * 100, 400, "not_an_image", id="pdf"),
        pytest.param(b"\xff\xd8\xff" + b"\x00" * 50, 400, "corrupt_image", id="jpeg-magic-only"),
    ],
)
def test_refused_formats_are_clean_4xx(client: TestClient, data: bytes, status: int, code: str) -> None:
    response = _post(client, data)
    assert response.status_code == status
    assert response.json()["error"]["code"] == code


@pytest.mark.parametrize("cut", [2, 20, 100, 400, 0.5, 0.9])
def test_truncated_jpeg_through_the_api(client: TestClient, cut: float) -> None:
    rng = np.random.default_rng(3)
    data = encode(Image.fromarray(rng.integers(0, 255, (120, 120, 3), dtype=np.uint8)), "JPEG")
    end = int(cut) if cut >= 1 else int(len(data) * cut)
    response = _post(client, data[:end])
    assert response.status_code == 400 and response.json()["error"]["code"] in (
        "corrupt_image",
        "not_an_image",
    )


def test_polyglot_jpeg_with_trailing_html_is_read_as_the_image_only(client: TestClient) -> None:
    data = solid("green") + b"<html><script>alert(1)</script></html>"
    response = _post(client, data, "x.html", "text/html")
    assert response.status_code == 200
    assert response.json()["primary"]["label"] == "Eczema"
    assert "script" not in response.text


@pytest.mark.parametrize("charset", ["undefined", "idna"])
@pytest.mark.parametrize("path", ["/api/predict", "/api/predict/batch"])
def test_a_charset_that_cannot_decode_the_fields_is_a_400(
    client: TestClient, charset: str, path: str
) -> None:
    # Python's "undefined" and "idna" codecs raise a bare UnicodeError, which Starlette's parser lets through.
    body = (
        b'--B\r\nContent-Disposition: form-data; name="xn--zz"\r\n\r\nxn--zz\r\n'
        b'--B\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\n'
        b"Content-Type: image/jpeg\r\n\r\n" + solid() + b"\r\n--B--\r\n"
    )
    headers = {"content-type": f"multipart/form-data; boundary=B; charset={charset}"}
    response = client.post(path, content=body, headers=headers)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "bad_multipart"


def test_extreme_aspect_ratio(client: TestClient) -> None:
    response = _post(client, encode(Image.new("RGB", (1, 20000), (220, 30, 30)), "PNG"), "x.png", "image/png")
    assert response.status_code == 200 and response.json()["primary"]["label"] == "Acne"


def test_cors_off_by_default_and_on_when_configured(client: TestClient, tiny_bundle: Path) -> None:
    origin = {"origin": "https://elsewhere.example"}
    assert "access-control-allow-origin" not in client.get("/api/info", headers=origin).headers
    settings_ = dataclasses.replace(
        Settings(bundle=str(tiny_bundle), threads=1), cors_origins=("https://elsewhere.example",)
    )
    with TestClient(create_app(settings_)) as other:
        headers = other.get("/api/info", headers=origin).headers
        assert headers["access-control-allow-origin"] == "https://elsewhere.example"


# Fuzzing: mutations of valid images must give a valid array or a clean ImageError, nothing else.
_SEEDS = [
    solid("red"),
    encode(Image.new("RGBA", (20, 12), (1, 2, 3, 4)), "PNG"),
    encode(Image.new("RGB", (16, 16), (9, 90, 200)), "WEBP"),
    encode(Image.new("P", (10, 30)), "PNG"),
]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.sampled_from(_SEEDS),
    edits=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=8),
    cut=st.integers(0, 10_000),
)
def test_fuzzed_images_never_crash_preprocessing(seed: bytes, edits: list[tuple[int, int]], cut: int) -> None:
    data = bytearray(seed)
    for position, value in edits:
        data[position % len(data)] = value
    data = data[: max(1, len(data) - cut % len(data))]
    try:
        out = preprocess(bytes(data), (32, 32), max_pixels=4_000_000)
    except ImageError as exc:
        assert 400 <= exc.status < 500 and exc.message
    else:
        assert out.shape == (32, 32, 3) and out.dtype == np.uint8


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=2048))
def test_random_bytes_are_refused_cleanly(data: bytes) -> None:
    with pytest.raises(ImageError):
        preprocess(data, (16, 16))
