from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from runtime.bundle import DISPLAY_NAMES
from training.synthetic import FOREIGN_KINDS, class_look, foreign_images, generate


def test_layout_boxes_and_formats(dataset: Path) -> None:
    boxes = json.loads((dataset / "boxes.json").read_text())
    files = sorted(p for p in dataset.rglob("*") if p.is_file() and p.name != "boxes.json")
    assert sorted(boxes) == sorted(p.relative_to(dataset).as_posix() for p in files)
    assert len(files) == 3 * (16 + 6)
    assert {p.suffix for p in files} == {".png", ".jpg", ".jpeg"}
    sizes = set()
    for path in files:
        with Image.open(path) as img:
            width, height = img.size
            assert img.format == ("PNG" if path.suffix == ".png" else "JPEG")
        sizes.add((width, height))
        assert 64 <= width <= 128 and 64 <= height <= 128
        x0, y0, x1, y1 = boxes[path.relative_to(dataset).as_posix()]
        assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
        side = x1 - x0
        assert side == y1 - y0
        assert 0.29 * min(width, height) <= side <= 0.6 * min(width, height)
    assert len(sizes) > 20  # sizes and aspect ratios vary


def test_patch_is_where_the_box_says(dataset: Path) -> None:
    """The planted colour sits inside the box and not outside it."""
    boxes = json.loads((dataset / "boxes.json").read_text())
    rel = "train/Moles/0000.png"  # PNG: exact pixels
    _, colour = class_look(2, 3)
    pixels = np.asarray(Image.open(dataset / rel).convert("RGB"), dtype=np.float32)
    x0, y0, x1, y1 = boxes[rel]
    close = np.linalg.norm(pixels - np.array(colour, dtype=np.float32), axis=2) < 40
    inside = close[y0:y1, x0:x1].mean()
    outside = close.sum() - close[y0:y1, x0:x1].sum()
    assert inside > 0.2
    assert outside == 0


def test_deterministic_and_default_classes(tmp_path: Path) -> None:
    a = generate(tmp_path / "a", train_per_class=1, test_per_class=1, size_range=(40, 60))
    b = generate(tmp_path / "b", train_per_class=1, test_per_class=1, size_range=(40, 60))
    assert sorted(p.name for p in (a / "train").iterdir()) == sorted(DISPLAY_NAMES)
    assert (a / "boxes.json").read_text() == (b / "boxes.json").read_text()
    for path in (a / "train").rglob("*.*"):
        assert path.read_bytes() == (b / path.relative_to(a)).read_bytes()
    c = generate(tmp_path / "c", train_per_class=1, test_per_class=1, size_range=(40, 60), seed=1)
    assert (a / "boxes.json").read_text() != (c / "boxes.json").read_text()


def test_every_class_looks_different() -> None:
    looks = [class_look(i, 22) for i in range(22)]
    assert len({colour for _, colour in looks}) == 22
    assert len({id(pattern) for pattern, _ in looks}) >= 11
    # Neighbours on the colour wheel differ in brightness too: hues alone sit only ~16 degrees apart.
    assert all(max(looks[i][1]) != max(looks[i + 1][1]) for i in range(21))


def test_command_line(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "training.synthetic", str(tmp_path / "d"), "--train", "1", "--test", "2"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "wrote a synthetic dataset" in out.stdout
    assert len(list((tmp_path / "d" / "train").rglob("*.*"))) == 22
    assert len(list((tmp_path / "d" / "test").rglob("*.*"))) == 44


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(["--train", "-1"], "at least 0", id="negative-count"),
        pytest.param(["--test", "1001"], "from 0 to 1000, not '1001'", id="past-the-disk"),
        pytest.param(["--seed", "x"], "at least 0", id="not-a-number"),
        pytest.param([], "is not an empty folder", id="into-a-dataset"),
    ],
)
def test_command_line_refusals_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    from training.synthetic import main

    dataset = tmp_path / "d"
    (dataset / "train" / "Acne").mkdir(parents=True)
    (dataset / "train" / "Acne" / "0000.png").write_bytes(b"a real photo")
    target = dataset if not args else tmp_path / "new"
    with pytest.raises(SystemExit) as exit_:
        main([str(target), *args])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1 and message in err
    assert (dataset / "train" / "Acne" / "0000.png").read_bytes() == b"a real photo"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]  # nothing written


def test_command_line_into_a_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from training.synthetic import main

    (tmp_path / "f").write_text("x")
    with pytest.raises(SystemExit) as exit_:
        main([str(tmp_path / "f")])
    assert exit_.value.code == 2 and "is not an empty folder" in capsys.readouterr().err


def test_command_line_into_a_name_too_long_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from training.synthetic import main

    # stat() fails on it, as on a folder that may not be searched: pathlib raises, not answers False
    assert main([str(tmp_path / ("a" * 300))]) == 2
    assert capsys.readouterr().err.startswith("python -m training.synthetic: error: File name too long: ")
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("error", "status", "line"),
    [
        pytest.param(
            OSError(28, "No space left on device"), 2, "error: No space left on device", id="disk-full"
        ),
        pytest.param(KeyboardInterrupt(), 130, "interrupted; nothing was written", id="ctrl-c"),
    ],
)
@pytest.mark.parametrize("existed", [False, True])
def test_a_failed_or_stopped_run_leaves_no_part_of_a_dataset(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    error: BaseException,
    status: int,
    line: str,
    existed: bool,
) -> None:
    import training.synthetic
    from training.synthetic import main

    def failing(root: Path, **kwargs: object) -> Path:
        (root / "train" / "Acne").mkdir(parents=True)
        (root / "train" / "Acne" / "0000.png").write_bytes(b"half")
        raise error

    out = tmp_path / "d"
    if existed:
        out.mkdir()  # an empty folder given: it stays, empty
    monkeypatch.setattr(training.synthetic, "generate", failing)
    assert main([str(out)]) == status
    assert (
        capsys.readouterr().err
        == f"python -m training.synthetic: {line}" + (f": {out}" * (status == 2)) + "\n"
    )
    assert (list(out.iterdir()) == []) if existed else not out.exists()


def test_class_order_is_the_sorted_names_whatever_order_they_come_in(tmp_path: Path) -> None:
    kw = {"train_per_class": 1, "test_per_class": 1, "size_range": (40, 48)}
    a = generate(tmp_path / "a", class_names=["Moles", "Acne", "Eczema"], **kw)
    b = generate(tmp_path / "b", class_names=["Acne", "Eczema", "Moles"], **kw)
    assert (a / "boxes.json").read_text() == (b / "boxes.json").read_text()
    for path in a.rglob("*.png"):
        assert path.read_bytes() == (b / path.relative_to(a)).read_bytes()


def test_test_images_are_not_copies_of_training_images(tmp_path: Path) -> None:
    root = generate(tmp_path / "d", class_names=["Acne", "Moles"], train_per_class=1, test_per_class=1)
    boxes = json.loads((root / "boxes.json").read_text())
    for name in ("Acne", "Moles"):
        train, test = root / "train" / name / "0000.png", root / "test" / name / "0000.png"
        assert boxes[f"train/{name}/0000.png"] != boxes[f"test/{name}/0000.png"]
        assert train.read_bytes() != test.read_bytes()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"patch_range": (0.6, 0.3)}, "patch_range", id="unordered"),
        pytest.param({"patch_range": (0.0, 0.5)}, "patch_range", id="zero"),
        pytest.param({"patch_range": (0.5, 1.2)}, "patch_range", id="over-1"),
        pytest.param({"class_names": []}, "class_names is empty", id="no-classes"),
    ],
)
def test_bad_arguments_are_refused_before_writing(
    tmp_path: Path, kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        generate(tmp_path / "d", train_per_class=1, test_per_class=1, **kwargs)  # type: ignore[arg-type]
    assert not (tmp_path / "d").exists()


def test_foreign_images_take_the_kinds_in_turn_and_are_deterministic() -> None:
    images = foreign_images(len(FOREIGN_KINDS) + 2, seed=3, size=(48, 64))
    assert [kind for kind, _ in images] == [*FOREIGN_KINDS, *FOREIGN_KINDS[:2]]
    assert all(img.shape == (48, 64, 3) and img.dtype == np.uint8 for _, img in images)
    again = foreign_images(len(FOREIGN_KINDS) + 2, seed=3, size=(48, 64))
    assert all(np.array_equal(x, y) for (_, x), (_, y) in zip(images, again, strict=True))
    assert [k for k, _ in foreign_images(2, kinds=("solid",))] == ["solid", "solid"]
    with pytest.raises(ValueError, match="unknown kind"):
        foreign_images(1, kinds=("photo",))
