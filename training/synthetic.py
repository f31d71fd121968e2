"""A deterministic generated ImageFolder dataset for tests and the demo (numpy + Pillow only).

Every class gets its own pattern (stripes at an angle, checkerboard, dots, rings, crosses, …) and its own
colour, drawn as a square patch (by default 30–60 % of the short side) at a random place on a noisy skin-toned
background. Image sizes, aspect and file formats vary. ``ROOT/boxes.json`` maps each image's relative path
to the patch box [x0, y0, x1, y1] (pixels, x1/y1 exclusive) so CAM tests can check where the model looks.

    python -m training.synthetic OUT_DIR [--train N] [--test N]   # a new or empty folder; N up to 1000
"""

from __future__ import annotations

import argparse
import colorsys
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from runtime.bundle import DISPLAY_NAMES

SKIN_TONES = ((224, 172, 140), (198, 134, 96), (241, 194, 167), (160, 110, 80), (232, 185, 150))
EXTENSIONS = (".png", ".jpg", ".jpeg")
# Images per class and split from the command line: noisy pixels hardly compress (~0.1 MB a PNG), so 1000 of
# each of 22 classes in both splits is already ~4 GB of disk; a typo's 100000 would fill it.
MAX_PER_CLASS = 1000

# A pattern maps patch coordinates u, v in [0, 1) to a boolean mask; k is the number of periods.
Pattern = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _stripes(angle_deg: float, k: float = 5.0) -> Pattern:
    c, s = np.cos(np.radians(angle_deg)), np.sin(np.radians(angle_deg))
    return lambda u, v: ((u * c + v * s) * k % 1.0) < 0.5


def _checker(u: np.ndarray, v: np.ndarray, k: float = 4.0) -> np.ndarray:
    return ((np.floor(u * k) + np.floor(v * k)) % 2) == 0


def _diamonds(u: np.ndarray, v: np.ndarray, k: float = 3.0) -> np.ndarray:
    return ((np.floor((u + v) * k) + np.floor((u - v) * k)) % 2) == 0


def _dots(u: np.ndarray, v: np.ndarray, k: float = 4.0) -> np.ndarray:
    return ((u * k % 1.0 - 0.5) ** 2 + (v * k % 1.0 - 0.5) ** 2) < 0.09


def _rings(u: np.ndarray, v: np.ndarray, k: float = 4.0) -> np.ndarray:
    return (np.hypot(u - 0.5, v - 0.5) * 2 * k % 1.0) < 0.5


def _crosses(u: np.ndarray, v: np.ndarray, k: float = 3.0) -> np.ndarray:
    a, b = np.abs(u * k % 1.0 - 0.5), np.abs(v * k % 1.0 - 0.5)
    return ((a < 0.1) & (b < 0.35)) | ((b < 0.1) & (a < 0.35))


def _grid(u: np.ndarray, v: np.ndarray, k: float = 4.0) -> np.ndarray:
    return ((u * k % 1.0) < 0.2) | ((v * k % 1.0) < 0.2)


def _disc(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.hypot(u - 0.5, v - 0.5) < 0.38


def _zigzag(u: np.ndarray, v: np.ndarray, k: float = 4.0) -> np.ndarray:
    return ((v + 0.25 * np.abs((u * k % 1.0) - 0.5)) * k % 1.0) < 0.5


def _triangles(u: np.ndarray, v: np.ndarray, k: float = 3.0) -> np.ndarray:
    return (u * k % 1.0) > (v * k % 1.0)


PATTERNS: tuple[Pattern, ...] = (
    _stripes(0),
    _stripes(45),
    _stripes(90),
    _stripes(135),
    _checker,
    _dots,
    _rings,
    _crosses,
    _grid,
    _disc,
    _zigzag,
    _diamonds,
    _triangles,
)


def class_look(index: int, num_classes: int) -> tuple[Pattern, tuple[int, int, int]]:
    """The (pattern, colour) of class ``index``: hues spread over the wheel, patterns cycled."""
    hue = (index / num_classes + 0.55) % 1.0  # start in blue-green, away from skin tones
    value = 0.95 if index % 2 == 0 else 0.7
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, value)
    return PATTERNS[index % len(PATTERNS)], (round(r * 255), round(g * 255), round(b * 255))


def draw(
    rng: np.random.Generator,
    pattern: Pattern,
    colour: tuple[int, int, int],
    size_range: tuple[int, int],
    patch_range: tuple[float, float] = (0.3, 0.6),
) -> tuple[np.ndarray, list[int]]:
    """One image (uint8 HWC) and its patch box [x0, y0, x1, y1]; the patch side is ``patch_range`` of the
    image's short side."""
    lo, hi = size_range
    width, height = (int(v) for v in rng.integers(lo, hi + 1, size=2))
    tone = np.array(SKIN_TONES[int(rng.integers(len(SKIN_TONES)))], dtype=np.float32)
    image = tone + rng.standard_normal((height, width, 3), dtype=np.float32) * 10.0
    side = int(min(width, height) * rng.uniform(*patch_range))
    x0, y0 = int(rng.integers(0, width - side + 1)), int(rng.integers(0, height - side + 1))
    v, u = np.mgrid[0:side, 0:side].astype(np.float32) / side
    mask = pattern(u, v)[..., None]
    fg = np.array(colour, dtype=np.float32)
    patch = np.where(mask, fg, fg * 0.3 + tone * 0.2)
    patch += rng.standard_normal(patch.shape, dtype=np.float32) * 6.0
    image[y0 : y0 + side, x0 : x0 + side] = patch
    return np.clip(image, 0, 255).astype(np.uint8), [x0, y0, x0 + side, y0 + side]


def generate(
    root: str | Path,
    *,
    class_names: Sequence[str] | None = None,
    train_per_class: int = 8,
    test_per_class: int = 4,
    seed: int = 0,
    size_range: tuple[int, int] = (160, 320),
    patch_range: tuple[float, float] = (0.3, 0.6),
) -> Path:
    """Write ``ROOT/train/<Class>/…``, ``ROOT/test/<Class>/…`` and ``ROOT/boxes.json``; returns ROOT.

    ``patch_range``: the class patch's side as a fraction of the image's short side (larger: easier)."""
    if not 0.0 < patch_range[0] <= patch_range[1] <= 1.0:
        raise ValueError(f"patch_range must be within (0, 1] and ordered, got {patch_range}")
    names = sorted(class_names if class_names is not None else DISPLAY_NAMES)
    if not names:
        raise ValueError("class_names is empty")
    root = Path(root)
    boxes: dict[str, list[int]] = {}
    for split_index, (split, count) in enumerate((("train", train_per_class), ("test", test_per_class))):
        for class_index, name in enumerate(names):
            pattern, colour = class_look(class_index, len(names))
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for j in range(count):
                # One stream per image: changing one count does not reshuffle the other images.
                rng = np.random.default_rng([seed, split_index, class_index, j])
                pixels, box = draw(rng, pattern, colour, size_range, patch_range)
                ext = EXTENSIONS[j % len(EXTENSIONS)]
                path = folder / f"{j:04d}{ext}"
                img = Image.fromarray(pixels)
                if ext == ".png":
                    img.save(
                        path, format="PNG", compress_level=0
                    )  # noisy pixels hardly compress; speed matters
                else:
                    img.save(path, format="JPEG", quality=92)
                boxes[path.relative_to(root).as_posix()] = box
    (root / "boxes.json").write_text(json.dumps(boxes, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return root


# Kinds of images a skin classifier never saw in training, for measuring its out-of-distribution flag.
FOREIGN_KINDS = ("text", "solid", "gradient", "noise", "stripes", "shapes")
_WORDS = (
    "the",
    "of",
    "model",
    "skin",
    "photo",
    "invoice",
    "total",
    "page",
    "chapter",
    "keyboard",
    "lorem",
    "data",
)


def _foreign(kind: str, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """One uint8 HxWx3 image of ``kind``."""
    from PIL import ImageDraw, ImageFont

    def colour() -> tuple[int, int, int]:
        r, g, b = (int(v) for v in rng.integers(0, 256, size=3))
        return r, g, b

    if kind == "text":  # a scanned page or a screenshot: dark words on a light background
        paper = int(rng.integers(215, 256))
        img = Image.new("RGB", (width, height), (paper, paper, int(rng.integers(paper - 20, paper + 1))))
        draw = ImageDraw.Draw(img)
        size = int(rng.integers(max(8, height // 16), max(9, height // 7)))
        font = ImageFont.load_default(size=size)
        ink = tuple(int(v) for v in rng.integers(0, 90, size=3))
        y = int(rng.integers(2, size))
        while y < height - size // 2:
            words = [_WORDS[int(i)] for i in rng.integers(0, len(_WORDS), size=8)]
            draw.text((int(rng.integers(2, size)), y), " ".join(words), fill=ink, font=font)
            y += int(size * rng.uniform(1.3, 1.8))
        return np.asarray(img)
    if kind == "solid":
        return np.broadcast_to(np.array(colour(), np.uint8), (height, width, 3)).copy()
    v, u = np.mgrid[0:height, 0:width].astype(np.float32)
    if kind == "gradient":
        angle = rng.uniform(0, np.pi)
        t = u * np.cos(angle) + v * np.sin(angle)
        t = (t - t.min()) / max(float(np.ptp(t)), 1.0)
        a, b = np.array(colour(), np.float32), np.array(colour(), np.float32)
        return (a + (b - a) * t[..., None]).astype(np.uint8)
    if kind == "noise":  # grey noise, sometimes coarse-grained
        cell = int(rng.choice([1, 2, 4, 8]))
        small = rng.uniform(0, 255, size=(-(-height // cell), -(-width // cell))).astype(np.uint8)
        grey = np.repeat(np.repeat(small, cell, axis=0), cell, axis=1)[:height, :width]
        return np.repeat(grey[..., None], 3, axis=2)
    if kind == "stripes":  # grey stripes over the whole frame at a random angle and period
        angle = rng.uniform(0, np.pi)
        period = rng.uniform(6, max(7.0, min(height, width) / 4))
        t = (u * np.cos(angle) + v * np.sin(angle)) / period % 1.0 < 0.5
        lo, hi = sorted(int(x) for x in rng.integers(0, 256, size=2))
        grey = np.where(t, hi, lo).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if kind == "shapes":  # clip art: coloured rectangles and ellipses on white
        img = Image.new("RGB", (width, height), (255, 255, 255))
        draw = ImageDraw.Draw(img)
        for _ in range(int(rng.integers(3, 9))):
            x0, x1 = sorted(int(x) for x in rng.integers(0, width, size=2))
            y0, y1 = sorted(int(y) for y in rng.integers(0, height, size=2))
            shape = draw.rectangle if rng.random() < 0.5 else draw.ellipse
            shape((x0, y0, x1 + 1, y1 + 1), fill=colour())
        return np.asarray(img)
    raise ValueError(f"unknown kind of foreign image {kind!r} (known: {', '.join(FOREIGN_KINDS)})")


def foreign_images(
    n: int, *, seed: int = 0, size: tuple[int, int] = (224, 224), kinds: Sequence[str] = FOREIGN_KINDS
) -> list[tuple[str, np.ndarray]]:
    """``n`` (kind, uint8 HxWx3 image of ``size`` = (height, width)) pairs, the kinds taken in turn.

    Images that look nothing like the generated (or real) skin photos: text, solid colours, colour gradients,
    grey noise, grey stripes and clip-art shapes. Deterministic for a given seed.
    """
    height, width = size
    out = []
    for i in range(n):
        kind = kinds[i % len(kinds)]
        rng = np.random.default_rng([seed, 1_000_003, i])
        out.append((kind, _foreign(kind, rng, height, width)))
    return out


def main(argv: list[str] | None = None) -> int:
    from runtime.cli import OneLineParser
    from training.stop import how, say_stopped, signals_stop

    prog = "python -m training.synthetic"
    parser = OneLineParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("out", help="dataset root to write: a new or empty folder")
    parser.add_argument("--train", type=_per_class, default=8, help="training images per class (default: 8)")
    parser.add_argument("--test", type=_per_class, default=4, help="test images per class (default: 4)")
    parser.add_argument("--seed", type=_count, default=0, help="random seed (default: 0)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    existed: bool | None = None  # set once all that out holds is this run's
    try:  # from the first look: exists() raises on a folder that may not be searched, or a name too long
        # Never into a folder that holds something: generated images mixed into a dataset look the same.
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            parser.error(f"{str(out)!r} exists and is not an empty folder; give a new one")
        existed = out.exists()
        with signals_stop():
            root = generate(out, train_per_class=args.train, test_per_class=args.test, seed=args.seed)
    except (OSError, KeyboardInterrupt) as exc:
        if existed is not None:  # a part of a dataset would pass for one (and block the next try)
            _remove_written(out, keep_folder=existed)
        if isinstance(exc, KeyboardInterrupt):
            line, status = how(exc)
            say_stopped(f"{prog}: {line}; nothing was written")
            return status
        print(f"{prog}: error: {exc.strerror or exc}: {exc.filename or out}", file=sys.stderr)
        return 2
    print(f"wrote a synthetic dataset to {root}")
    return 0


def _remove_written(out: Path, *, keep_folder: bool) -> None:
    import shutil

    if not keep_folder:
        shutil.rmtree(out, ignore_errors=True)
        return
    for path in out.iterdir() if out.is_dir() else ():
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def _count(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = -1
    if number < 0:
        raise argparse.ArgumentTypeError(f"want a whole number, at least 0, not {value!r}")
    return number


def _per_class(value: str) -> int:
    number = _count(value)
    if number > MAX_PER_CLASS:
        raise argparse.ArgumentTypeError(f"want a whole number from 0 to {MAX_PER_CLASS}, not {value!r}")
    return number


if __name__ == "__main__":
    raise SystemExit(main())
