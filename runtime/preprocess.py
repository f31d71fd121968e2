"""Image preprocessing shared by training's evaluation and the runtime (so there is no train/serve skew).

decode (allow-listed formats, pixel cap from the header) → EXIF orientation → RGB → resize → uint8 HWC.
Normalization is not done here: it lives in the ONNX graph (and in training's tensor conversion).
"""

from __future__ import annotations

import io
import re
import struct
import threading
import warnings
from contextlib import nullcontext
from pathlib import Path

import numpy as np
from PIL import Image

ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP")
DEFAULT_MAX_PIXELS = 40_000_000  # a 12 MP phone photo passes; decompression bombs do not
# The most SKIN_MAX_PIXELS may be: Pillow warns of a decompression bomb past its own limit (89,478,485
# pixels), and open_image() refuses what it warns about, so a larger setting would not be honoured.
MAX_PIXELS = int(Image.MAX_IMAGE_PIXELS or DEFAULT_MAX_PIXELS)
# JPEG's own limit. Resizing costs memory in proportion to the longest side (Pillow's filter weights: a
# 40,000,000 x 1 PNG, under the pixel cap, took ~0.6 GB to resize), so longer is refused from the header.
MAX_SIDE = 65_535
# A progressive JPEG is decoded in passes (scans), each over the whole image whatever the draft scale (~9 ms
# at 36 MP): a 9.6 MB file of 160,000 empty scans would take ~25 minutes. Cameras and encoders write about
# 10; libjpeg-turbo suggests refusing more than 500 (its TJPARAM_SCANLIMIT).
MAX_JPEG_SCANS = 500
# Fewer for a larger image, as each scan costs in proportion to its pixels: 500 at 40 MP took 15 s of CPU for
# a 380 KB file, 16 of them in one batch minutes. At 2e9 scans x pixels (50 at 40 MP, 500 at 4 MP: files of
# 20-470 KB) each still took 2-2.5 s of server CPU; this bound keeps them near 1 s, what a PNG or WebP at the
# pixel cap costs: 20 scans at 40 MP, 66 at 12 MP, 500 up to 1.6 MP (mozjpeg writes 10 or 11, Photoshop 3-5).
MAX_JPEG_SCAN_PIXELS = 800_000_000
# But never fewer than libjpeg's own progressive files have (10 scans in colour, 14 in RGB, 18 in CMYK):
# SKIN_MAX_PIXELS may be up to 89 MP, where the bound alone leaves 8 and refused such a photo as corrupt.
MIN_JPEG_SCANS = 18
# Pillow parses JPEG markers and PNG chunks in Python, a read or a few each: a 9.4 MB JPEG of 0xFF fill bytes
# or of empty APP1 segments took ~18 s to open (and +310 MB), a PNG of 786,000 empty chunks ~10 s. Real files
# take tens of reads to open and one per 64 KB to decode (a PNG 3 or so per chunk).
MAX_READS = 100_000
# And far fewer JPEG segments before the pixel data: Pillow runs a handler in Python for each, and joins EXIF
# segments one at a time, copying all it has each time. A 9.9 MB file of 24,000 EXIF segments took 13 s
# of CPU, of 90,000 (refused at the reads' bound) 1.4 s; other segments ~0.2 s. Photos have tens of segments
# (an ICC profile split over APP2, up to 255 more) and one EXIF segment: at these bounds ~10 and ~35 ms.
MAX_JPEG_SEGMENTS = 1024
MAX_JPEG_EXIF_SEGMENTS = 64
# libwebp decodes only at full size, and Pillow holds the frame about four times over (its decoder's canvas,
# the bytes it hands over, the image): ~15 bytes a pixel, 0.6 GB at 40 MP. Two such decodes at once took a
# server past the 2 GiB deploy/k8s then had (2.2 GB RSS), so WebPs above this many pixels take turns.
BIG_WEBP_PIXELS = 16_000_000
# A progressive JPEG keeps every DCT coefficient until its last scan, whatever the reduced size: 228 MB at
# 40 MP, 305 MB in CMYK. Above this many pixels it takes turns with the big WebPs.
BIG_PROGRESSIVE_PIXELS = 16_000_000
_BIG_DECODE = threading.Lock()

_FILTERS = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}


def _costly(img: Image.Image) -> bool:
    """A decode that holds far more memory than its file or its reduced size: one at a time."""
    pixels = img.width * img.height
    if img.format == "WEBP":
        return pixels > BIG_WEBP_PIXELS
    return (
        img.format in ("JPEG", "MPO")
        and bool(img.info.get("progressive"))
        and pixels > BIG_PROGRESSIVE_PIXELS
    )


class ImageError(ValueError):
    """An input that is not a usable image. ``code`` and ``status`` map to the API's JSON errors."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


def open_image(
    source: bytes | str | Path,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    allowed_formats: tuple[str, ...] = ALLOWED_FORMATS,
) -> Image.Image:
    """Open lazily (header only), refusing other formats and oversized images before any pixel is decoded."""
    if isinstance(source, bytes | bytearray | memoryview):
        if len(source) == 0:
            raise ImageError("empty_file", "the uploaded file is empty")
        data = source
    else:
        try:
            data = Path(source).read_bytes()
        except OSError:
            raise ImageError("corrupt_image", "the image file could not be read") from None
        if not data:  # a failed copy, a cloud folder's placeholder: training said "not_an_image"
            raise ImageError("empty_file", "the file is empty")
    if "PNG" in allowed_formats and bytes(data[:8]) == PNG_SIGNATURE:
        _check_png_chunks(data)
    if "JPEG" in allowed_formats and bytes(data[:3]) == b"\xff\xd8\xff":
        _check_jpeg_segments(data)
    fp = _CappedReads(data)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(fp, formats=allowed_formats)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Past Pillow's own limit open() refuses before it returns a size: Pillow's message has the count.
        found = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{int(found[1]):,} pixels" if found else "too many pixels"
        message = f"the image has {size}; the limit is {max_pixels:,} pixels"
        raise ImageError("image_too_large", message, 413) from None
    except Image.UnidentifiedImageError:
        raise _unidentified(fp, allowed_formats) from None
    except Exception:  # Pillow raises many kinds of errors on hostile headers
        raise ImageError("corrupt_image", "the image header could not be read") from None
    width, height = img.size
    if width < 1 or height < 1:
        raise ImageError("corrupt_image", "the image has no pixels")
    if width * height > max_pixels:
        raise ImageError(
            "image_too_large",
            f"the image has {width}x{height} pixels; the limit is {max_pixels:,} pixels",
            413,
        )
    if max(width, height) > MAX_SIDE:
        raise ImageError(
            "image_too_large",
            f"the image has {width}x{height} pixels; its longest side may be at most {MAX_SIDE:,} pixels",
            413,
        )
    if img.format in ("JPEG", "MPO"):
        _check_scans(img, bytes(data))
    return img


class _CappedReads(io.BytesIO):
    """The file as Pillow reads it: ImageError past MAX_READS reads, however few bytes each took."""

    reads = 0

    def read(self, size: int | None = -1) -> bytes:
        self.reads += 1
        if self.reads > MAX_READS:
            message = "the image is cut into too many pieces (segments, chunks or padding bytes) to be read"
            raise ImageError("corrupt_image", message)
        return super().read(size)


def _check_scans(img: Image.Image, data: bytes) -> None:
    limit = max(MIN_JPEG_SCANS, min(MAX_JPEG_SCANS, MAX_JPEG_SCAN_PIXELS // (img.width * img.height)))
    if _too_many_scans(data, limit):
        img.close()
        message = (
            f"the JPEG has more than {limit} scans (decoding passes) for its {img.width}x{img.height} "
            "pixels, or is cut into too many pieces"
        )
        raise ImageError("corrupt_image", message)


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# Pillow inflates a PNG's colour profile (iCCP) and compressed text (zTXt, iTXt), up to 1 MB each, before and
# after the pixel data. Its 64 MB bound on text counts only the text it keeps, not profiles nor text with no
# keyword or not UTF-8: 9,000 such 1 KB chunks (a 9.5 MB file) took 28 s of CPU as profiles, 52-66 s as text.
# Real files carry one profile and a few text chunks; 64 take 0.2-0.4 s (a duplicate profile, which libpng
# only warns of, still opens).
MAX_PNG_INFLATED = 64
_INFLATED = (b"iCCP", b"zTXt", b"iTXt")


def _check_png_chunks(data: bytes | bytearray | memoryview) -> None:
    # The chunks' headers only, in place: a real file has tens to hundreds (0.1 ms for a 10 MB PNG), where
    # searching all its bytes for the three names took 24 ms, a fifth of its decode.
    inflated, pos = 0, len(PNG_SIGNATURE)
    for _ in range(MAX_READS):  # Pillow reads each chunk at least once: past this it refuses the file itself
        if pos + 8 > len(data):
            return
        length, kind = struct.unpack_from(">I4s", data, pos)
        if kind == b"IEND":  # where Pillow stops reading
            return
        inflated += kind in _INFLATED
        if inflated > MAX_PNG_INFLATED:
            message = f"the PNG has more than {MAX_PNG_INFLATED} compressed chunks (iCCP, zTXt, iTXt)"
            raise ImageError("corrupt_image", message)
        pos += 12 + length  # length, type, data, CRC


# A marker: FF and a code other than 00 (an FF in the entropy-coded data), D0-D7 (restarts) or FF (fill).
_JPEG_MARKER = re.compile(rb"\xff([^\x00\xd0-\xd7\xff])")


def _check_jpeg_segments(data: bytes | bytearray | memoryview) -> None:
    """The segments before the first scan (SOS), walked as Pillow walks them, each marker counted: a real
    file has tens (~0.02 ms here), where Pillow takes ~10 us a segment."""
    exif, pos = 0, 2  # after SOI
    for _ in range(MAX_JPEG_SEGMENTS + 1):
        marker = _JPEG_MARKER.search(data, pos)
        if marker is None or marker[1] == b"\xda" or marker[1] < b"\xc0":  # the end, a scan, or a code
            return  # Pillow does not know ("no marker found"): it reads no further
        pos = marker.end()
        if marker[1] in _NO_LENGTH:
            continue
        length = int.from_bytes(data[pos : pos + 2], "big")  # it counts itself, not the marker
        exif += marker[1] == b"\xe1" and length >= 8 and data[pos + 2 : pos + 8] == b"Exif\0\0"
        if exif > MAX_JPEG_EXIF_SEGMENTS:
            message = (
                f"the JPEG is cut into too many pieces (more than {MAX_JPEG_EXIF_SEGMENTS} EXIF segments)"
            )
            raise ImageError("corrupt_image", message)
        pos += max(length, 2)
    message = (
        f"the JPEG is cut into too many pieces (more than {MAX_JPEG_SEGMENTS:,} segments before its pixels)"
    )
    raise ImageError("corrupt_image", message)


# Markers Pillow reads no length after: SOI, EOI (before the first scan it reads on past one), JPG and JPGn
# (with a length taken from their next bytes, segments after them went uncounted).
_NO_LENGTH = {bytes([code]) for code in (0xC8, 0xD8, 0xD9, *range(0xF0, 0xFE))}


def _too_many_scans(data: bytes, limit: int) -> bool:
    """The first image's scans (SOS markers) are counted up to its EOI, segments skipped by their length: a
    thumbnail in EXIF, bytes in metadata, the next picture of an MPO and what follows the image (a motion
    photo's video, by chance FF DA once per 64 KB) are not scans libjpeg decodes for it."""
    scans, pos = 0, 2  # after SOI
    for _ in range(MAX_READS):  # libjpeg reads markers in C; a real file has tens, past this is hostile
        marker = _JPEG_MARKER.search(data, pos)
        if marker is None or marker[1] == b"\xd9":  # the end of the file, or of the image (EOI)
            return False
        pos = marker.end()
        if marker[1] in (b"\x01", b"\xd8"):  # TEM, SOI: no length follows
            continue
        if marker[1] == b"\xda":
            scans += 1
            if scans > limit:
                return True
        pos += int.from_bytes(data[pos : pos + 2], "big")  # the length counts itself, not the marker
    return True


def decode_rgb(
    source: bytes | str | Path,
    *,
    draft_size: tuple[int, int] | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    allowed_formats: tuple[str, ...] = ALLOWED_FORMATS,
) -> Image.Image:
    """Decode to an upright RGB image. ``draft_size`` (width, height) lets JPEG decode at a reduced scale."""
    img = open_image(source, max_pixels=max_pixels, allowed_formats=allowed_formats)
    try:
        costly = _costly(img)  # before draft(), which gives a JPEG its reduced size
        if draft_size is not None and img.format in ("JPEG", "MPO"):
            # DCT scaling: decodes at 1/2, 1/4 or 1/8 while staying at least draft_size; ~4x faster on 12 MP.
            img.draft("RGB" if img.mode == "RGB" else None, draft_size)
        with _BIG_DECODE if costly else nullcontext():
            img.load()  # animated PNG/WebP: the first frame
            if draft_size is not None:
                img = shrink(img, draft_size)
        img = upright(img)
        return to_rgb(img)
    except ImageError:
        raise
    except Exception:
        raise ImageError("corrupt_image", "the image data is corrupt or truncated") from None


# EXIF orientation (2..8) -> the transpose that turns the stored image upright (as ImageOps.exif_transpose).
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def upright(img: Image.Image) -> Image.Image:
    """Turned by the orientation in the file's EXIF block (JPEG APP1, PNG eXIf, WebP EXIF), the one browsers
    read. Pillow's exif_transpose also takes an XMP orientation and a PNG's text-chunk copy of EXIF, which
    browsers ignore: the page would show such a photo unturned under a heatmap of the turned one. A block
    that cannot be parsed turns nothing, as in browsers (and as Pillow reads one in a JPEG)."""
    method = _UPRIGHT.get(exif_orientation(img.info.get("exif") or b""))
    return img.transpose(method) if method is not None else img


def exif_orientation(raw: bytes) -> int:
    """The Orientation tag (0x0112) of an EXIF block's first directory, as webui/app.js reads it; 1 when
    there is none or the block cannot be read. Not Pillow's Exif, which parses every tag in Python: a PNG's or
    WebP's EXIF chunk has no 64 KB bound, and one of 65,535 tags (0.8 MB) took it ~1 s of CPU per image."""
    data = raw[6:] if raw.startswith(b"Exif\0\0") else raw  # JPEG's APP1 (and some WebPs) keep this prefix
    order = {b"II": "<", b"MM": ">"}.get(data[:2])
    if order is None or len(data) < 8:
        return 1
    (ifd,) = struct.unpack_from(order + "I", data, 4)
    if ifd + 2 > len(data):
        return 1
    (count,) = struct.unpack_from(order + "H", data, ifd)
    for entry in range(ifd + 2, min(ifd + 2 + 12 * count, len(data) - 11), 12):
        tag, _, _, value = struct.unpack_from(order + "HHIH", data, entry)
        if tag == 0x0112:
            return value
    return 1


def shrink(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Box-reduce a decoded image by a whole factor while both sides stay at least twice ``size`` (width,
    height; either orientation): what JPEG's DCT scaling does at decode time, for every format. Done in strips
    of rows, so that a mode conversion never copies the whole image: at the pixel cap a full-size RGBA copy is
    160 MB, and converting a 40 MP PNG in one piece took ~0.8 GB."""
    factor = min(img.width, img.height) // (2 * max(size))
    if factor < 2:
        return img
    keyed = "transparency" in img.info
    top = _grey_top(img)
    if img.mode in ("P", "PA") or (keyed and img.mode in ("RGB", "L", "1")):
        mode = "RGBA"  # palette indices and a transparent colour key cannot be averaged
    elif img.mode in _WIDE_GREY:
        mode = "LA" if keyed else "L"  # to 8 bits first, on the whole image's scale (as to_rgb() does)
    else:
        mode = "L" if img.mode == "1" else img.mode
    width, height = img.size
    out = Image.new(mode, (-(-width // factor), -(-height // factor)))
    out.info = {k: v for k, v in img.info.items() if k != "transparency"}  # EXIF orientation is applied later
    rows = factor * max(1, (4 << 20) // (4 * width * factor))  # ~4 MB of source pixels per strip
    for y in range(0, height, rows):
        strip = img.crop((0, y, width, min(height, y + rows)))
        if strip.mode in _WIDE_GREY:
            strip = _grey8(strip, top)
        if strip.mode != mode:
            strip = strip.convert(mode)
        out.paste(strip.reduce(factor), (0, y // factor))  # RGBA / LA are averaged premultiplied
    return out


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode → 8-bit RGB; transparency is flattened onto white, 16-bit grey scaled, not clipped.
    Converted in strips of rows: an image too narrow for shrink() to reduce (65,535 x 610 is under the pixel
    cap) then costs its RGB copy and one strip's working copies (~25 MB at most), not the ~0.6 GB that
    whole-image copies took (1 GB for 16-bit)."""
    if img.mode == "RGB" and "transparency" not in img.info:
        return img
    top = _grey_top(img)
    rows = max(1, (4 << 20) // (4 * img.width))
    if rows >= img.height:  # most uploads: one strip, no copies to paste
        return _strip_to_rgb(img, top)
    out = Image.new("RGB", img.size)
    for y in range(0, img.height, rows):
        out.paste(_strip_to_rgb(img.crop((0, y, img.width, min(img.height, y + rows))), top), (0, y))
    return out


_WIDE_GREY = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


def _grey_top(img: Image.Image) -> float:
    """The white level of a wide grey image, for the whole image (never a strip's): 16-bit PNGs are 65535,
    other wide modes 255 unless a value is above it. 0 for every other mode."""
    if img.mode not in _WIDE_GREY:
        return 0.0
    return 65535.0 if img.mode.startswith("I;16") or np.max(img.getextrema()) > 255 else 255.0


def _grey8(img: Image.Image, top: float) -> Image.Image:
    """A wide grey image (or strip) → 8-bit L scaled by ``top``; LA when a colour key marks transparency."""
    arr = np.asarray(img, dtype=np.float64)
    grey = Image.fromarray(np.clip(arr * (255.0 / top), 0, 255).round().astype(np.uint8))
    key = img.info.get("transparency")
    if not isinstance(key, int | float):
        return grey
    alpha = Image.fromarray(np.where(arr == key, 0, 255).astype(np.uint8))
    return Image.merge("LA", (grey, alpha))


def _strip_to_rgb(img: Image.Image, top: float) -> Image.Image:
    if img.mode in _WIDE_GREY:
        img = _grey8(img, top)
    elif "transparency" in img.info and img.mode in ("RGB", "L", "1"):
        img = img.convert("RGBA" if img.mode == "RGB" else "LA")  # a PNG colour key (tRNS chunk)
    if img.mode == "RGB":
        return img
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def resize(
    img: Image.Image, size: tuple[int, int], mode: str = "stretch", filter: str = "bilinear"
) -> Image.Image:
    """Resize to (height, width): ``stretch`` ignores aspect; ``center_crop`` keeps it and crops."""
    height, width = size
    resample = _FILTERS[filter]
    if mode == "stretch":
        return img.resize((width, height), resample)
    if mode == "center_crop":
        # Only the central crop (the target's aspect, in source pixels) is resized: scaling the whole image
        # first made a 1 x 65,535 upload a 300 x 19,660,500 image.
        scale = max(width / img.width, height / img.height)
        w, h = width / scale, height / scale
        left, top = (img.width - w) / 2, (img.height - h) / 2
        return img.resize((width, height), resample, box=(left, top, left + w, top + h))
    raise ValueError(f"unknown resize mode {mode!r}")


def preprocess(
    source: bytes | str | Path,
    size: tuple[int, int] = (300, 300),
    *,
    resize_mode: str = "stretch",
    resize_filter: str = "bilinear",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    allowed_formats: tuple[str, ...] = ALLOWED_FORMATS,
) -> np.ndarray:
    """File bytes or a path → uint8 RGB array of shape (height, width, 3): the model's input for one image."""
    height, width = size
    img = decode_rgb(
        source, draft_size=(width, height), max_pixels=max_pixels, allowed_formats=allowed_formats
    )
    try:
        out = resize(img, size, resize_mode, resize_filter)
    except Exception:
        raise ImageError("corrupt_image", "the image could not be resized") from None
    return np.ascontiguousarray(np.asarray(out, dtype=np.uint8))


def _unidentified(fp: io.BytesIO | str | Path, allowed_formats: tuple[str, ...]) -> ImageError:
    """Tell 'a format we do not take' (415) from 'not an image at all' (400)."""
    try:
        if isinstance(fp, io.BytesIO):
            fp.seek(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(fp) as other:
                fmt = other.format or "unknown"
        allowed = ", ".join(allowed_formats)
        return ImageError("unsupported_format", f"{fmt} images are not accepted; send one of {allowed}", 415)
    except Exception:
        pass
    head = fp.getvalue()[:12] if isinstance(fp, io.BytesIO) else b""
    for fmt, starts in SIGNATURES.items():  # an image of ours whose header is damaged (a PNG's failed CRC)
        if fmt.upper() in allowed_formats and starts(head):
            return ImageError("corrupt_image", f"the {fmt} image's header could not be read")
    # Pillow cannot open an iPhone's own photos (HEIC) or AVIF at all: said as formats not taken, as GIF is.
    if head[4:8] == b"ftyp" and (brand := HEIF_BRANDS.get(head[8:12])):
        allowed = ", ".join(allowed_formats)
        return ImageError(
            "unsupported_format", f"{brand} images are not accepted; send one of {allowed}", 415
        )
    return ImageError("not_an_image", "the file is not a recognised image")


# The first bytes of the formats taken: a file that opens with one and still cannot be identified is that
# format, damaged, not "not an image".
SIGNATURES = {
    "JPEG": lambda head: head.startswith(b"\xff\xd8\xff"),
    "PNG": lambda head: head.startswith(PNG_SIGNATURE),
    "WebP": lambda head: head.startswith(b"RIFF") and head[8:12] == b"WEBP",
}
# An ISO media file's major brand (bytes 8-12, after "ftyp"): the still-image ones phones and browsers save.
HEIF_BRANDS = {
    **dict.fromkeys((b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1"), "HEIC"),
    **dict.fromkeys((b"avif", b"avis"), "AVIF"),
}
