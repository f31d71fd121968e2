"""Batching in export/infer.py: outputs line up with the files they came from, unreadable files left out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from export import infer


class _Session:
    """Returns each image's first pixel value, so outputs show which image they came from."""

    class _Input:
        name = "image"

    def get_inputs(self) -> list[Any]:
        return [self._Input()]

    def run(self, outputs: list[str], feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        first = feed["image"][:, 0, 0, 0].astype(np.float32)
        return [first + k for k in range(len(outputs))]


@pytest.fixture
def files(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[Path]:
    """20 files (more than one batch); numbers 0, 17 and 18 are unreadable; pixels hold the file number."""
    paths = [tmp_path / f"{i}.png" for i in range(20)]

    def readable(batch: list[Path], *args: Any) -> tuple[np.ndarray, list[int]]:
        kept = [i for i, f in enumerate(batch) if int(f.stem) not in (0, 17, 18)]
        x = np.array([np.full((2, 2, 3), int(batch[i].stem)) for i in kept], np.uint8).reshape(-1, 2, 2, 3)
        return x, kept

    monkeypatch.setattr(infer, "readable", readable)
    return paths


def test_run_many_indices_point_at_the_files_across_batches(files: list[Path]) -> None:
    out, kept = infer.run_many(
        _Session(), files, ["a", "b"], size=(2, 2), resize="stretch", resize_filter="x"
    )
    expected = [i for i in range(20) if i not in (0, 17, 18)]
    assert kept == expected
    np.testing.assert_array_equal(out["a"], expected)
    np.testing.assert_array_equal(out["b"], np.array(expected) + 1)


def test_run_each_decodes_every_file_once_for_all_graphs(
    files: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    decoded: list[Path] = []
    read = infer.readable

    def counted(batch: list[Path], *args: Any) -> tuple[np.ndarray, list[int]]:
        decoded.extend(batch)
        return read(batch, *args)

    monkeypatch.setattr(infer, "readable", counted)
    (a, b), kept = infer.run_each(
        [_Session(), _Session()], files, ["a"], size=(2, 2), resize="stretch", resize_filter="x"
    )
    assert decoded == files
    expected = [i for i in range(20) if i not in (0, 17, 18)]
    assert kept == expected
    np.testing.assert_array_equal(a["a"], expected)
    np.testing.assert_array_equal(b["a"], expected)


def test_batches_leave_out_unreadable_files_and_empty_batches(files: list[Path]) -> None:
    got = list(infer.batches(files[15:], (2, 2), "stretch", "x", batch=2))  # 15 16 | 17 18 | 19
    assert [b[:, 0, 0, 0].tolist() for b in got] == [[15, 16], [19]]


def test_an_unreadable_file_is_said_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from PIL import Image

    good, empty = tmp_path / "good.png", tmp_path / "IMG_0001.jpg"
    Image.new("RGB", (4, 4)).save(good)
    empty.write_bytes(b"")
    for _ in range(2):  # export reads the test split more than once
        x, kept = infer.readable([good, empty], (2, 2), "stretch", "bilinear")
        assert kept == [0] and x.shape == (1, 2, 2, 3)
    said = [r.getMessage() for r in caplog.records]
    assert said == [f"skipping unreadable image {empty} (empty_file: the file is empty)"]


def test_a_photo_over_the_pixel_cap_is_said_too_large_as_training_says_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Export called it "unreadable image … (image_too_large: …)": a fine photo, only over the runtime's cap.
    from PIL import Image

    big = tmp_path / "big.png"
    Image.new("L", (8000, 5001)).save(big)
    assert infer.readable([big], (2, 2), "stretch", "bilinear")[1] == []
    said = [r.getMessage() for r in caplog.records]
    assert said == [
        f"skipping image {big}: too large (the image has 8000x5001 pixels; the limit is 40,000,000 pixels)"
    ]


def test_run_pixels_covers_every_image_in_order() -> None:
    x = np.arange(7, dtype=np.uint8)[:, None, None, None] * np.ones((1, 2, 2, 3), np.uint8)
    out = infer.run_pixels(_Session(), x, ["a"], batch=3)
    np.testing.assert_array_equal(out["a"], np.arange(7))
