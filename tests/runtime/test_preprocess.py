from __future__ import annotations

import io
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from runtime.preprocess import ImageError, decode_rgb, open_image, preprocess
from tests.images import encode


def _arrow(size: tuple[int, int] = (120, 80)) -> Image.Image:
    """Red left half, blue right half: orientation is visible after decoding."""
    img = Image.new("RGB", size, (200, 20, 20))
    img.paste((20, 20, 200), (size[0] // 2, 0, size[0], size[1]))
    return img


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: Image.new("L", (50, 40), 128), id="grayscale"),
        pytest.param(lambda: Image.new("1", (50, 40), 1), id="bilevel"),
        pytest.param(lambda: Image.new("LA", (50, 40), (128, 255)), id="grey-alpha"),
        pytest.param(lambda: Image.new("RGBA", (50, 40), (10, 20, 30, 255)), id="rgba"),
        pytest.param(lambda: Image.new("RGB", (50, 40), (10, 20, 30)).convert("P"), id="palette"),
        pytest.param(lambda: Image.new("I;16", (50, 40), 40000), id="16-bit-grey"),
    ],
)
def test_png_modes_become_rgb(make) -> None:  # type: ignore[no-untyped-def]
    out = preprocess(encode(make(), "PNG"), (32, 32))
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8


def test_sixteen_bit_grey_is_scaled_not_clipped() -> None:
    out = preprocess(encode(Image.new("I;16", (20, 20), 32768), "PNG"), (8, 8))
    assert 120 <= int(out.mean()) <= 135


def test_sixteen_bit_grey_has_one_scale_at_every_size() -> None:
    # A dark 16-bit image is dark whether shrink() reduces it first (640 px) or not (20 px).
    small, large = (preprocess(encode(Image.new("I;16", (n, n), 200), "PNG"), (8, 8)) for n in (20, 640))
    assert small.max() == large.max() == 1  # 200 / 65535 of white


@pytest.mark.parametrize(
    ("mode", "value", "grey"),
    [
        pytest.param("I", 200, 200, id="32-bit-8-bit-values"),
        pytest.param("I", 40000, 156, id="32-bit-16-bit-values"),
        pytest.param("F", 200.0, 200, id="float-8-bit-values"),
    ],
)
def test_wide_grey_is_scaled_by_its_values(mode: str, value: float, grey: int) -> None:
    # 32-bit grey (e.g. TIFF, for training's evaluation) says nothing of its depth: values up to 255 are
    # 8-bit, not nearly black 16-bit.
    from runtime.preprocess import to_rgb

    assert to_rgb(Image.new(mode, (20, 20), value)).getpixel((0, 0)) == (grey, grey, grey)


def test_transparency_is_flattened_onto_white() -> None:
    out = preprocess(encode(Image.new("RGBA", (20, 20), (0, 0, 0, 0)), "PNG"), (8, 8))
    assert out.min() == 255


def test_palette_with_transparency() -> None:
    img = Image.new("P", (20, 20), 0)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    img.info["transparency"] = 0
    assert preprocess(encode(img, "PNG", transparency=0), (8, 8)).min() == 255


def test_cmyk_jpeg() -> None:
    out = preprocess(encode(Image.new("CMYK", (40, 40), (0, 255, 255, 0)), "JPEG"), (16, 16))
    r, g, b = out.reshape(-1, 3).mean(axis=0)
    assert r > 200 and g < 60 and b < 60


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_allowed_formats(fmt: str) -> None:
    out = preprocess(encode(Image.new("RGB", (40, 30), (0, 200, 0)), fmt), (16, 16))
    assert out[..., 1].mean() > 150


@pytest.mark.parametrize(
    ("orientation", "left_colour_channel"),
    [
        pytest.param(1, 0, id="1-normal"),
        pytest.param(2, 2, id="2-mirrored"),
        pytest.param(3, 2, id="3-rotated-180"),
        pytest.param(4, 0, id="4-flipped"),
    ],
)
def test_exif_orientation_horizontal(orientation: int, left_colour_channel: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    out = decode_rgb(encode(_arrow(), "JPEG", exif=exif))
    assert out.size == (120, 80)
    left = np.asarray(out)[:, :10].reshape(-1, 3).mean(axis=0)
    assert int(np.argmax(left)) == left_colour_channel


@pytest.mark.parametrize("orientation", [5, 6, 7, 8])
def test_exif_orientation_quarter_turns(orientation: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    out = decode_rgb(encode(_arrow(), "JPEG", exif=exif))
    assert out.size == (80, 120)  # width and height swap


_XMP_TURNED = (
    b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
    b'<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="6"/>'
    b"</rdf:RDF></x:xmpmeta>"
)


def _png_with_exif_text_chunk() -> bytes:
    """EXIF (orientation 6) in ImageMagick's 'Raw profile type exif' text chunk, not in an eXIf chunk."""
    from PIL import PngImagePlugin

    exif = Image.Exif()
    exif[0x0112] = 6
    raw = (b"Exif\0\0" + exif.tobytes()).hex()
    info = PngImagePlugin.PngInfo()
    info.add_text("Raw profile type exif", f"\nexif\n{len(raw) // 2:8d}\n{raw}\n")
    return encode(_arrow(), "PNG", pnginfo=info)


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: encode(_arrow(), "JPEG", xmp=_XMP_TURNED), id="jpeg-xmp"),
        pytest.param(lambda: encode(_arrow(), "WEBP", xmp=_XMP_TURNED), id="webp-xmp"),
        pytest.param(_png_with_exif_text_chunk, id="png-exif-text-chunk"),
    ],
)
def test_an_orientation_outside_the_exif_block_is_not_applied(make: Any) -> None:
    # Browsers (Chromium) show these files as stored: the page draws the heatmap over what the model saw.
    out = decode_rgb(make())
    assert out.size == (120, 80)
    assert np.asarray(out)[:, :10].reshape(-1, 3).mean(axis=0)[0] > 150  # red still on the left


def _exif_of_many_tags(orientation: int, order: str = "<") -> bytes:
    """A TIFF-style EXIF block whose first directory holds 65,535 tags (its most), Orientation the last."""
    others = [tag for tag in range(1, 65536) if tag != 0x0112]  # each its own: Pillow skips a repeated one
    tags = [struct.pack(order + "HHII", tag, 7, 100, 8) for tag in others]
    tags.append(struct.pack(order + "HHIHH", 0x0112, 3, 1, orientation, 0))
    head = (b"II*\0" if order == "<" else b"MM\0*") + struct.pack(order + "IH", 8, len(tags))
    return head + b"".join(tags) + b"\0" * 4


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
@pytest.mark.parametrize("order", ["<", ">"], ids=["little-endian", "big-endian"])
def test_an_exif_block_of_many_tags_is_not_parsed_whole_and_still_turns(
    fmt: str, order: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # PNG's and WebP's EXIF chunks have no 64 KB bound: Pillow's Exif, which parses every tag in Python, took
    # ~1 s of CPU for this 0.8 MB block. Only the Orientation tag is read now.
    parsed: list[int] = []
    load = Image.Exif.load
    monkeypatch.setattr(Image.Exif, "load", lambda self, raw: (parsed.append(len(raw)), load(self, raw))[1])
    data = encode(_arrow(), fmt, exif=_exif_of_many_tags(6, order))
    out = decode_rgb(data)
    assert parsed == []
    assert out.size == (80, 120)  # turned: the arrow image is 120 x 80 as stored


def _png_with_a_bad_header_crc() -> bytes:
    data = bytearray(encode(Image.new("RGB", (8, 8), (200, 20, 20)), "PNG"))
    data[29] ^= 0xFF  # IHDR's CRC: after the 8-byte signature, its length, type and 13 bytes
    return bytes(data)


@pytest.mark.parametrize(
    ("data", "said"),
    [
        pytest.param(_png_with_a_bad_header_crc(), "PNG", id="png-bad-crc"),
        pytest.param(b"\xff\xd8\xff" + b"junk" * 10, "JPEG", id="jpeg-junk-after-start"),
        pytest.param(b"RIFF\x10\x00\x00\x00WEBP" + b"junk" * 3, "WebP", id="webp-junk-after-start"),
    ],
)
def test_an_image_with_a_damaged_header_is_corrupt_not_not_an_image(data: bytes, said: str) -> None:
    # It was "the file is not a recognised image", for a file that is plainly a PNG (or JPEG, WebP).
    with pytest.raises(ImageError) as info:
        decode_rgb(data)
    assert (info.value.code, str(info.value)) == (
        "corrupt_image",
        f"the {said} image's header could not be read",
    )


@pytest.mark.parametrize(("brand", "said"), [(b"heic", "HEIC"), (b"mif1", "HEIC"), (b"avif", "AVIF")])
def test_an_iphone_photo_is_named_as_a_format_not_taken(brand: bytes, said: str) -> None:
    with pytest.raises(ImageError) as info:
        decode_rgb(b"\x00\x00\x00\x18ftyp" + brand + b"\x00" * 64)
    assert (info.value.code, info.value.status) == ("unsupported_format", 415)
    assert str(info.value) == f"{said} images are not accepted; send one of JPEG, PNG, WEBP"


def test_junk_is_still_not_an_image() -> None:
    with pytest.raises(ImageError) as info:
        decode_rgb(b"junk" * 10)
    assert info.value.code == "not_an_image"


def test_phone_photo_rotation_reaches_model_input() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    out = preprocess(encode(_arrow((200, 100)), "JPEG", exif=exif), (20, 20))
    # Displayed upright: the red half (originally left) is now on top.
    assert out[:5].reshape(-1, 3).mean(axis=0)[0] > 150
    assert out[-5:].reshape(-1, 3).mean(axis=0)[2] > 150


@pytest.mark.parametrize(
    ("data", "code", "status"),
    [
        pytest.param(b"", "empty_file", 400, id="empty"),
        pytest.param(b"hello, this is text" * 10, "not_an_image", 400, id="text"),
        pytest.param(encode(Image.new("RGB", (8, 8)), "GIF"), "unsupported_format", 415, id="gif"),
        pytest.param(encode(Image.new("RGB", (8, 8)), "BMP"), "unsupported_format", 415, id="bmp"),
        pytest.param(encode(Image.new("RGB", (8, 8)), "TIFF"), "unsupported_format", 415, id="tiff"),
        pytest.param(b'<svg xmlns="http://www.w3.org/2000/svg"/>', "not_an_image", 400, id="svg"),
    ],
)
def test_refused_inputs(data: bytes, code: str, status: int) -> None:
    with pytest.raises(ImageError) as info:
        preprocess(data, (16, 16))
    assert (info.value.code, info.value.status) == (code, status)


def test_an_empty_file_on_disk_is_said_to_be_empty(tmp_path: Path) -> None:
    # Training reads paths: a zero-byte file was "not_an_image", which sends people looking at its format.
    (tmp_path / "IMG_0001.jpg").write_bytes(b"")
    with pytest.raises(ImageError) as info:
        preprocess(tmp_path / "IMG_0001.jpg", (16, 16))
    assert (info.value.code, info.value.message) == ("empty_file", "the file is empty")


@pytest.mark.parametrize("from_path", [pytest.param(False, id="bytes"), pytest.param(True, id="path")])
def test_jpeg_with_too_many_scans_is_refused_before_decoding(tmp_path, from_path: bool) -> None:  # type: ignore[no-untyped-def]
    # Each scan is a decoding pass over the whole image: repeating the last one 160,000 times fits in 10 MB.
    data = encode(Image.new("L", (64, 64), 128), "JPEG", progressive=True)
    last = data.rindex(b"\xff\xda")

    def source(scans: int) -> bytes | str:
        repeated = data[:-2] + data[last:-2] * (scans - data.count(b"\xff\xda")) + b"\xff\xd9"
        if not from_path:
            return repeated
        (tmp_path / "scans.jpg").write_bytes(repeated)
        return str(tmp_path / "scans.jpg")

    assert preprocess(source(500), (16, 16)).shape == (16, 16, 3)
    with pytest.raises(ImageError) as info:
        preprocess(source(501), (16, 16))
    assert (info.value.code, info.value.status) == ("corrupt_image", 400)
    assert "more than 500 scans" in info.value.message


@pytest.mark.parametrize(
    ("size", "limit"),
    [
        pytest.param((8000, 5000), 20, id="40-mp"),  # at the default pixel cap: 50 scans took 2 s of CPU
        pytest.param((4000, 3000), 66, id="12-mp"),
        pytest.param((2000, 2000), 200, id="4-mp"),  # 500 took 2.5 s
        pytest.param((1600, 1000), 500, id="1.6-mp"),
    ],
)
def test_larger_jpegs_may_have_fewer_scans(size: tuple[int, int], limit: int) -> None:
    # Each scan is a pass over every pixel, whatever the draft scale: the budget is scans x pixels.
    data = encode(Image.new("L", size, 128), "JPEG", progressive=True, quality=10)
    last = data.rindex(b"\xff\xda")

    def scans(count: int) -> bytes:
        return data[:-2] + data[last:-2] * (count - data.count(b"\xff\xda")) + b"\xff\xd9"

    open_image(scans(limit)).close()  # the header and the scan count only: nothing is decoded
    with pytest.raises(ImageError) as info:
        open_image(scans(limit + 1))
    assert (info.value.code, info.value.status) == ("corrupt_image", 400)
    assert f"more than {limit} scans" in info.value.message


@pytest.mark.parametrize(
    ("mode", "size"),
    [
        pytest.param("RGB", (10_000, 8_900), id="colour-89-mp"),  # 10 scans; the bound alone left 8
        pytest.param("CMYK", (7_000, 7_000), id="cmyk-49-mp"),  # 18 scans; the bound alone left 16
    ],
)
def test_libjpegs_own_progressive_files_open_up_to_the_highest_pixel_cap(
    mode: str, size: tuple[int, int]
) -> None:
    # SKIN_MAX_PIXELS may be raised to Pillow's 89 MP: such a photo was refused as corrupt_image.
    from runtime.preprocess import MAX_PIXELS

    data = encode(Image.new(mode, (16, 16)), "JPEG", progressive=True)
    sof = data.index(b"\xff\xc2") + 5  # after the marker, the length and the precision: height, width
    data = data[:sof] + struct.pack(">HH", size[1], size[0]) + data[sof + 4 :]
    assert open_image(data, max_pixels=MAX_PIXELS).size == size  # the header only: nothing decoded


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param(lambda scan: b"\0" * 7 + scan * 600, id="after-the-image"),  # a motion photo's video
        pytest.param(lambda scan: b"\xff\xd8" + scan * 600 + b"\xff\xd9", id="second-picture"),  # an MPO's
    ],
)
def test_scan_markers_after_the_image_are_not_its_scans(extra) -> None:  # type: ignore[no-untyped-def]
    # libjpeg stops at the first image's EOI: 40 MB of video after it holds FF DA ~600 times by chance.
    data = encode(Image.new("L", (64, 64), 128), "JPEG", progressive=True)
    scan = data[data.rindex(b"\xff\xda") : -2]
    assert preprocess(data + extra(scan), (16, 16)).shape == (16, 16, 3)


def _png_with_empty_chunks(count: int) -> bytes:
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    data = encode(Image.new("RGB", (8, 8)), "PNG")
    return data[:33] + chunk(b"abCd", b"") * count + data[33:]  # after the signature and IHDR


def _jpeg_with(filler: bytes) -> bytes:
    data = encode(Image.new("RGB", (8, 8)), "JPEG")
    return data[:20] + filler + data[20:]  # after SOI and the JFIF segment


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: _jpeg_with(b"\xff" * 110_000), id="jpeg-fill-bytes"),
        pytest.param(lambda: _jpeg_with(b"\xff\xfe\x00\x02" * 60_000), id="jpeg-empty-segments"),
        pytest.param(lambda: _jpeg_with(b"\x00" * 110_000), id="jpeg-stray-bytes"),
        pytest.param(lambda: _png_with_empty_chunks(60_000), id="png-empty-chunks"),
    ],
)
@pytest.mark.parametrize("from_path", [pytest.param(False, id="bytes"), pytest.param(True, id="path")])
def test_files_of_very_many_tiny_pieces_are_refused_early(tmp_path, make, from_path: bool) -> None:  # type: ignore[no-untyped-def]
    # Pillow reads these a byte or a segment at a time, in Python: 10 MB of them took 10-18 s (and +0.3 GB).
    data = make()
    source: bytes | str = data
    if from_path:
        (tmp_path / "pieces").write_bytes(data)
        source = str(tmp_path / "pieces")
    with pytest.raises(ImageError) as info:
        preprocess(source, (16, 16))
    assert (info.value.code, info.value.status) == ("corrupt_image", 400)
    assert "too many pieces" in info.value.message


def _jpeg_of_segments(segment: bytes, count: int) -> bytes:
    """A real JPEG with ``count`` header segments ``segment`` (marker, length, data) after its SOI."""
    rng = np.random.default_rng(0)
    data = encode(Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)), "JPEG")
    return data[:2] + segment * count + data[2:]


def _segment(marker: int, body: bytes) -> bytes:
    return bytes((0xFF, marker)) + struct.pack(">H", 2 + len(body)) + body


_MANY = "more than 1,024 segments before its pixels"


@pytest.mark.parametrize(
    ("segment", "taken", "refused", "what"),
    [
        # 1,000 and the file's own 8 (JFIF, tables, frame) are within 1,024
        pytest.param(_segment(0xE0, b""), 1000, 1025, _MANY, id="empty-app0"),
        pytest.param(_segment(0xFE, b"note" * 100), 1000, 1025, _MANY, id="comments"),
        pytest.param(_segment(0xE2, b"ICC_PROFILE\0\1\1" + bytes(50)), 1000, 1025, _MANY, id="icc"),
        pytest.param(
            _segment(0xE1, b"Exif\0\0" + bytes(380)), 64, 65, "more than 64 EXIF segments", id="exif"
        ),
    ],
)
def test_jpegs_of_very_many_header_segments_are_refused_before_pillow_parses_them(
    segment: bytes, taken: int, refused: int, what: str
) -> None:
    # Pillow reads each in Python and joins EXIF ones, copying what it has each time: 24,000 of them in
    # 9.9 MB took 13 s of CPU (EXIF), ~0.2 s (others), and were decoded.
    assert preprocess(_jpeg_of_segments(segment, taken), (16, 16)).shape == (16, 16, 3)
    with pytest.raises(ImageError) as info:
        open_image(_jpeg_of_segments(segment, refused))
    assert (info.value.code, info.value.status) == ("corrupt_image", 400)
    assert info.value.message == f"the JPEG is cut into too many pieces ({what})"


@pytest.mark.parametrize(
    "before",
    [
        pytest.param(b"\xff\xd9", id="after-an-eoi"),  # Pillow reads on past an EOI before the first scan
        pytest.param(b"\xff\xf0", id="after-a-jpg0"),  # and reads no length after JPGn: FF E1 is no length
    ],
)
def test_exif_segments_past_markers_that_pillow_walks_over_are_counted(before: bytes) -> None:
    # The walk stopped at the EOI, or jumped FF E1 (65,505) bytes: 24,000 EXIF segments after either took
    # Pillow 10 s and 6 s of CPU.
    exif = _segment(0xE1, b"Exif\0\0" + bytes(380))
    with pytest.raises(ImageError) as info:
        open_image(_jpeg_of_segments(before + exif * 65, 1))
    assert info.value.message == "the JPEG is cut into too many pieces (more than 64 EXIF segments)"


def _png_with(extra: bytes, count: int, *, after: bool = False, text: bytes = b"") -> bytes:
    """A small PNG with ``count`` chunks ``extra`` after its header, or before its end."""
    data = encode(Image.new("RGB", (8, 8)), "PNG")
    at = data.rindex(b"IEND") - 4 if after else 33  # before IEND, or after the signature and IHDR
    note = _png_chunk(b"tEXt", b"note\0" + text) if text else b""
    return data[:at] + extra * count + note + data[at:]


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    import zlib

    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _inflating(fill: bytes) -> bytes:
    import zlib

    return zlib.compress(fill * (1 << 20), 9)  # 1 KB: 1 MB inflated


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param(_png_chunk(b"iCCP", b"p\0\0" + _inflating(b"\0")), id="iccp"),
        # Text Pillow does not keep is not counted against its 64 MB for text: no keyword, or not UTF-8.
        pytest.param(_png_chunk(b"zTXt", b"\0\0" + _inflating(b"\0")), id="ztxt"),
        pytest.param(_png_chunk(b"iTXt", b"k\0\1\0\0\0" + _inflating(b"\xff")), id="itxt"),
    ],
)
@pytest.mark.parametrize(
    "after", [pytest.param(False, id="before-pixels"), pytest.param(True, id="after-pixels")]
)
def test_pngs_of_many_inflating_chunks_are_refused_before_pillow_inflates_them(
    extra: bytes, after: bool
) -> None:
    # Pillow inflates each, up to 1 MB: 9,000 of them in 9.5 MB took 28-66 s of CPU.
    assert preprocess(_png_with(extra, 64, after=after), (16, 16)).shape == (16, 16, 3)
    with pytest.raises(ImageError) as info:
        open_image(_png_with(extra, 65, after=after))
    assert (info.value.code, info.value.status) == ("corrupt_image", 400)
    assert "more than 64 compressed chunks" in info.value.message


def test_chunk_names_as_text_in_a_png_are_not_chunks() -> None:
    # Only chunks are counted, not the bytes "iCCP" or "zTXt" wherever they are.
    profile = _png_chunk(b"iCCP", b"p\0\0" + _inflating(b"\0"))
    data = _png_with(profile, 1, text=b"iCCP " + b"zTXt " * 70)
    assert preprocess(data, (16, 16)).shape == (16, 16, 3)


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9])
def test_truncated_jpeg_is_a_clean_error(fraction: float) -> None:
    rng = np.random.default_rng(0)
    data = encode(Image.fromarray(rng.integers(0, 255, (200, 200, 3), dtype=np.uint8)), "JPEG")
    with pytest.raises(ImageError) as info:
        preprocess(data[: int(len(data) * fraction)], (16, 16))
    assert info.value.status == 400


def test_pixel_cap_is_inclusive() -> None:
    data = encode(Image.new("RGB", (20, 10)), "PNG")  # 200 pixels
    assert preprocess(data, (16, 16), max_pixels=200).shape == (16, 16, 3)
    with pytest.raises(ImageError) as info:
        preprocess(data, (16, 16), max_pixels=199)
    assert (info.value.code, info.value.status) == ("image_too_large", 413)


def test_pixel_cap_from_header() -> None:
    data = encode(Image.new("L", (3000, 3000)), "PNG")
    with pytest.raises(ImageError) as info:
        preprocess(data, (16, 16), max_pixels=1_000_000)
    assert (info.value.code, info.value.status) == ("image_too_large", 413)


def test_the_largest_pixel_cap_is_honoured() -> None:
    # Pillow warns of a bomb past its limit; open_image() refuses what it warns about, so the cap stops there.
    import math
    import struct
    import zlib

    from runtime.preprocess import MAX_PIXELS, open_image

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    side = math.isqrt(MAX_PIXELS)
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    data = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0"))
        + chunk(b"IEND", b"")
    )
    assert open_image(data, max_pixels=MAX_PIXELS).size == (side, side)  # the header only: nothing decoded


def test_decompression_bomb_png_refused_before_decoding() -> None:
    # A PNG header that declares 50 000 x 50 000 pixels, with almost no data behind it.
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", 50_000, 50_000, 8, 2, 0, 0, 0)
    data = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 100))
        + chunk(b"IEND", b"")
    )
    with pytest.raises(ImageError) as info:
        preprocess(data, (16, 16))
    assert info.value.status == 413


@pytest.mark.parametrize(
    "params",
    [
        pytest.param({}, id="jpeg"),
        pytest.param({"save_all": True}, id="mpo"),  # two frames: stereo and multi-shot cameras write these
    ],
)
def test_large_jpeg_uses_draft_and_matches_full_decode_closely(
    monkeypatch: pytest.MonkeyPatch, params: dict[str, object]
) -> None:
    rng = np.random.default_rng(1)
    small = rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)
    big = Image.fromarray(small).resize((4000, 3000), Image.Resampling.BILINEAR)
    data = encode(big, "MPO" if params else "JPEG", quality=90, append_images=[big], **params)
    decoded = _spy_resize(monkeypatch)
    fast = preprocess(data, (300, 300)).astype(np.int16)
    assert decoded == [(500, 375)]  # DCT scaling decoded at 1/8, still at least 300x300
    monkeypatch.undo()
    full = np.asarray(
        Image.open(io.BytesIO(data)).convert("RGB").resize((300, 300), Image.Resampling.BILINEAR)
    )
    assert np.abs(fast - full.astype(np.int16)).mean() < 4


def _spy_resize(monkeypatch: pytest.MonkeyPatch, *, asked: bool = False) -> list[tuple[int, int]]:
    """The sizes of the images that preprocess resizes: what was decoded (and shrunk) before; with ``asked``,
    the sizes they are resized to."""
    sizes: list[tuple[int, int]] = []
    real_resize = Image.Image.resize

    def spy(self: Image.Image, size: tuple[int, int], *args: object, **kwargs: object) -> Image.Image:
        sizes.append(size if asked else self.size)
        return real_resize(self, size, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Image.Image, "resize", spy)
    return sizes


def test_large_png_is_shrunk_before_resizing(monkeypatch: pytest.MonkeyPatch) -> None:
    # What JPEG's draft does at decode time: resizing memory grows with the source, so reduce it first.
    data = encode(Image.new("RGB", (2000, 2000), (9, 9, 9)), "PNG")
    resized = _spy_resize(monkeypatch)
    assert preprocess(data, (300, 300)).shape == (300, 300, 3)
    assert resized == [(667, 667)]  # reduced by 3, still at least twice 300


@pytest.mark.parametrize("resize_mode", ["stretch", "center_crop"])
@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_non_square_size_is_height_by_width(fmt: str, resize_mode: str) -> None:
    out = preprocess(encode(_arrow((400, 260)), fmt), (32, 48), resize_mode=resize_mode)
    assert out.shape == (32, 48, 3)


def test_center_crop_to_the_same_aspect_crops_nothing() -> None:
    img = Image.new("RGB", (480, 320), (200, 20, 20))
    img.paste((20, 20, 200), (40, 40, 440, 280))  # blue, in a red frame 40 px wide
    out = preprocess(encode(img, "PNG"), (32, 48), resize_mode="center_crop")
    assert out[0, 24, 0] > 150 and out[16, 0, 0] > 150  # the frame is still there: top and left


def test_jpeg_draft_size_is_width_by_height(monkeypatch: pytest.MonkeyPatch) -> None:
    # (32, 48) is height x width: 400 x 260 decodes at 1/8 (50 x 33); 48 high would need 1/4 (100 x 65).
    resized = _spy_resize(monkeypatch)
    assert preprocess(encode(_arrow((400, 260)), "JPEG"), (32, 48)).shape == (32, 48, 3)
    assert resized == [(50, 33)]


def test_center_crop_keeps_aspect() -> None:
    img = Image.new("RGB", (300, 100), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 100, 100))  # red only in the left third
    out = preprocess(encode(img, "PNG"), (50, 50), resize_mode="center_crop")
    assert out.shape == (50, 50, 3)
    assert out[..., 2].mean() > 200  # the centre is blue


def test_center_crop_resizes_only_the_crop(monkeypatch: pytest.MonkeyPatch) -> None:
    # A 1 x 4000 strip: scaling the whole of it to 300 px wide first would make it 1.2 million pixels tall.
    made = _spy_resize(monkeypatch, asked=True)
    strip = Image.new("RGB", (1, 4000), (200, 0, 0))
    strip.paste((0, 0, 200), (0, 1990, 1, 2010))  # blue only around the middle
    out = preprocess(encode(strip, "PNG"), (300, 300), resize_mode="center_crop")
    assert made == [(300, 300)]
    assert out.shape == (300, 300, 3) and (out[..., 2] == 200).all()  # all of it from the central pixel


def test_same_result_from_path_and_bytes(tmp_path) -> None:  # type: ignore[no-untyped-def]
    data = encode(_arrow(), "PNG")
    path = tmp_path / "x.png"
    path.write_bytes(data)
    assert np.array_equal(preprocess(path, (32, 32)), preprocess(data, (32, 32)))


@pytest.mark.parametrize("size", [(1, 1), (1, 2000), (2000, 1)])
def test_extreme_shapes(size: tuple[int, int]) -> None:
    out = preprocess(encode(Image.new("RGB", size, (9, 9, 9)), "PNG"), (16, 16))
    assert out.shape == (16, 16, 3)


@pytest.mark.parametrize("size", [pytest.param((8, 8), id="shrunk"), pytest.param((32, 32), id="not-shrunk")])
@pytest.mark.parametrize(
    ("mode", "key", "left"),
    [("RGB", (0, 0, 255), (10, 200, 10)), ("L", 0, 60), ("1", 0, 1), ("I;16", 200, 40000)],
)
def test_colour_key_transparency_is_flattened_onto_white(
    mode: str, key: object, left: object, size: tuple[int, int]
) -> None:
    # A PNG tRNS chunk marks one colour transparent; it must look like the RGBA / palette cases, whether
    # shrink() reduces the image first (8 x 8) or to_rgb() meets the colour key itself (32 x 32).
    img = Image.new(mode, (40, 40), key)  # type: ignore[arg-type]
    img.paste(left, (0, 0, 20, 40))  # type: ignore[arg-type]
    plain, out = (preprocess(encode(img, "PNG", **kw), size) for kw in ({}, {"transparency": key}))
    assert (plain[:, -2:] < 255).any() and (out[:, -2:] == 255).all()  # the keyed colour: white, not itself
    assert np.array_equal(out[:, :2], plain[:, :2])  # the rest as it was


def _stripes(size: tuple[int, int]) -> Image.Image:
    rng = np.random.default_rng(0)
    low = Image.fromarray((rng.random((size[1] // 40, size[0] // 40, 3)) * 255).astype(np.uint8))
    return low.resize(size, Image.Resampling.BICUBIC)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "LA", "L", "P", "1", "I;16"])
def test_large_images_are_shrunk_first_and_barely_change(mode: str) -> None:
    from runtime.preprocess import resize, shrink, to_rgb

    big = _stripes((1840, 1400))
    if mode == "I;16":
        big = Image.fromarray(np.asarray(big.convert("L"), dtype=np.uint16) * 257)
    elif mode != "RGB":
        big = big.convert(mode)
    data = encode(big, "PNG")
    shrunk = shrink(Image.open(io.BytesIO(data)), (300, 300))
    assert min(shrunk.size) >= 600 and shrunk.size[0] < 1840  # whole factor, at least twice the input
    direct = np.asarray(resize(to_rgb(Image.open(io.BytesIO(data))), (300, 300)), dtype=int)
    diff = np.abs(preprocess(data, (300, 300)).astype(int) - direct)
    # bilevel images are dithered noise at pixel level: averaging them first differs more, still slightly
    assert diff.mean() < (3 if mode == "1" else 0.6) and diff.max() <= (24 if mode == "1" else 4)


def test_shrinking_in_strips_equals_one_reduce() -> None:
    from runtime.preprocess import shrink

    rng = np.random.default_rng(1)
    rgba = Image.fromarray((rng.random((1999, 1333, 4)) * 255).astype(np.uint8), "RGBA")
    assert np.array_equal(np.asarray(shrink(rgba, (300, 300))), np.asarray(rgba.reduce(2)))


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_shrunk_images_keep_their_exif_orientation(fmt: str) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: the upright image is the stored one turned 90° clockwise
    data = encode(_arrow((1800, 1300)), fmt, exif=exif.tobytes())
    out = preprocess(data, (300, 300))
    top, bottom = out[:20].reshape(-1, 3).mean(axis=0), out[-20:].reshape(-1, 3).mean(axis=0)
    assert top[0] > top[2] and bottom[2] > bottom[0]  # red (the stored left) is now on top


def test_longest_side_is_capped_from_the_header() -> None:
    # 65,536 x 1 is far under the pixel cap, but resizing memory grows with the longest side.
    for size in [(65_536, 1), (1, 65_536)]:
        with pytest.raises(ImageError) as info:
            preprocess(encode(Image.new("L", size, 120), "PNG"), (16, 16))
        assert (info.value.code, info.value.status) == ("image_too_large", 413)
        assert "65,535" in info.value.message
    assert preprocess(encode(Image.new("L", (65_535, 1), 120), "PNG"), (16, 16)).shape == (16, 16, 3)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P", "I;16", "CMYK"])
def test_converting_in_strips_equals_one_conversion(mode: str) -> None:
    from runtime.preprocess import to_rgb

    rng = np.random.default_rng(2)
    rgba = Image.fromarray((rng.random((9000, 160, 4)) * 255).astype(np.uint8), "RGBA")  # 7 strips
    if mode == "RGBA":
        whole = Image.alpha_composite(Image.new("RGBA", rgba.size, (255,) * 4), rgba).convert("RGB")
        img = rgba
    elif mode == "I;16":
        arr = (rng.random((9000, 160)) * 65535).astype(np.uint16)
        img = Image.fromarray(arr)
        whole = Image.fromarray((arr / 257.0).round().astype(np.uint8)).convert("RGB")
    else:
        img = rgba.convert(mode) if mode != "P" else rgba.convert("RGB").quantize(64)
        whole = img.convert("RGBA") if mode in ("LA", "P") else img.convert("RGB")
        if mode == "LA":
            whole = Image.alpha_composite(Image.new("RGBA", img.size, (255,) * 4), whole)
        whole = whole.convert("RGB")
    assert np.array_equal(np.asarray(to_rgb(img)), np.asarray(whole))


def test_a_long_narrow_16_bit_image_is_converted_in_small_pieces() -> None:
    # Too narrow for shrink() to reduce, so to_rgb sees all of it: its float copies must be per strip.
    import tracemalloc

    from runtime.preprocess import to_rgb

    img = Image.fromarray(np.full((30_000, 500), 40_000, np.uint16))  # 15 MP; one float64 copy: 120 MB
    tracemalloc.start()
    try:
        out = to_rgb(img)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert out.size == img.size and out.getpixel((0, 0)) == (156, 156, 156)
    assert peak < 64 * 2**20, peak  # whole-image copies: over 300 MB


def _overlap(monkeypatch: pytest.MonkeyPatch, files: list[bytes]) -> int:
    """Decode `files` at once in threads; the most decodes that were inside shrink() together."""
    import contextlib
    import threading

    from runtime import preprocess as module

    inside, most, lock = [0], [0], threading.Lock()
    both = threading.Barrier(len(files))
    real = module.shrink

    def slow_shrink(img: Image.Image, size: tuple[int, int]) -> Image.Image:
        with lock:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        with contextlib.suppress(threading.BrokenBarrierError):
            both.wait(timeout=1)  # meets the other decode here unless it is kept out
        with lock:
            inside[0] -= 1
        return real(img, size)

    monkeypatch.setattr(module, "shrink", slow_shrink)
    threads = [threading.Thread(target=preprocess, args=(data, (8, 8))) for data in files]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return most[0]


def test_big_webps_are_decoded_one_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    # Each holds ~15 bytes a pixel while decoded (0.6 GB at the 40 MP cap): two at once could exhaust a pod.
    monkeypatch.setattr("runtime.preprocess.BIG_WEBP_PIXELS", 60 * 60)
    big = encode(Image.new("RGB", (80, 60), (200, 30, 30)), "WEBP")
    assert _overlap(monkeypatch, [big, big]) == 1


def test_big_progressive_jpegs_take_turns_with_big_webps(monkeypatch: pytest.MonkeyPatch) -> None:
    # libjpeg holds every DCT coefficient of a progressive one to its last scan: 228-305 MB at 40 MP.
    monkeypatch.setattr("runtime.preprocess.BIG_PROGRESSIVE_PIXELS", 60 * 60)
    monkeypatch.setattr("runtime.preprocess.BIG_WEBP_PIXELS", 60 * 60)
    image = Image.new("RGB", (80, 60), (200, 30, 30))
    progressive = encode(image, "JPEG", progressive=True)
    assert _overlap(monkeypatch, [progressive, progressive]) == 1
    assert _overlap(monkeypatch, [progressive, encode(image, "WEBP")]) == 1
    assert (
        _overlap(monkeypatch, [encode(image, "JPEG"), encode(image, "JPEG")]) == 2
    )  # baseline: side by side


def test_small_webps_and_other_formats_decode_side_by_side(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("runtime.preprocess.BIG_WEBP_PIXELS", 60 * 60)
    small = encode(Image.new("RGB", (60, 50), (200, 30, 30)), "WEBP")
    png = encode(Image.new("RGB", (80, 60), (200, 30, 30)), "PNG")
    assert _overlap(monkeypatch, [small, small]) == 2
    assert _overlap(monkeypatch, [png, png]) == 2
