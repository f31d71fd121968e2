from __future__ import annotations

import os
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import runtime.preprocess
from runtime.bundle import DISPLAY_NAMES
from tests.images import png_header
from tests.training.helpers import CLASSES, truncated_jpeg
from training import data
from training.cluster import Cluster, scan_said_once
from training.config import DEFAULTS, TrainConfig
from training.data import (
    DataError,
    EvalDataset,
    TrainDataset,
    WeightedSampler,
    balanced_weights,
    load_splits,
    to_tensor,
)
from training.model import IMAGENET_MEAN, IMAGENET_STD


def test_splits_are_stratified_seeded_and_disjoint(dataset: Path) -> None:
    splits = load_splits(dataset, val_fraction=0.25, seed=7)
    assert splits.class_names == CLASSES
    assert splits.display_names == ["Acne", "Eczema", "Moles"]
    assert Counter(y for _, y in splits.val) == {0: 4, 1: 4, 2: 4}
    assert Counter(y for _, y in splits.train) == {0: 12, 1: 12, 2: 12}
    assert Counter(y for _, y in splits.test) == {0: 6, 1: 6, 2: 6}
    train_files = {p for p, _ in splits.train}
    assert not train_files & {p for p, _ in splits.val}
    assert train_files | {p for p, _ in splits.val} == set((dataset / "train").rglob("*.*"))
    for path, label in splits.train + splits.val + splits.test:
        assert path.parent.name == CLASSES[label]
    assert load_splits(dataset, val_fraction=0.25, seed=7) == splits
    assert load_splits(dataset, val_fraction=0.25, seed=8).val != splits.val


def test_a_class_of_two_images_keeps_one_for_training() -> None:
    files = [Path("a.jpg"), Path("b.jpg")]
    kept, held = data.split_class(files, 0.8, 7, 0)  # 80 % of 2 rounds to both
    assert len(kept) == len(held) == 1 and sorted(kept + held) == files
    assert data.split_class(files[:1], 0.8, 7, 0) == (files[:1], [])  # one image: nothing held out
    one_file = {path: (1, 2) for path in files}  # two names of one file: the class has one image to train on
    assert data.split_class(files, 0.8, 7, 0, one_file) == (files, [])


def test_the_split_is_the_one_earlier_runs_were_trained_on() -> None:
    # Export rebuilds the validation split of a checkpoint trained earlier: were it drawn differently now
    # (the code, or numpy's generator, changed), T and the thresholds would be fitted on training images.
    files = [Path(f"{i:02}.jpg") for i in range(10)]
    held = [[p.stem for p in data.split_class(files, 0.3, 42, index)[1]] for index in (0, 1)]
    assert held == [["00", "05", "06"], ["00", "07", "08"]]  # each class draws its own


def test_a_small_class_still_has_an_image_in_validation() -> None:
    # 15 % of 3 rounds to none: every class must still be measured on validation.
    files = [Path(f"{i}.jpg") for i in range(3)]
    kept, held = data.split_class(files, 0.15, 7, 0)
    assert len(held) == 1 and sorted(kept + held) == files


def test_capitalised_split_folders_and_foreign_files(tmp_path: Path, dataset: Path) -> None:
    shutil.copytree(dataset / "train", tmp_path / "Train")
    shutil.copytree(dataset / "test", tmp_path / "Test")
    (tmp_path / "Train" / "Acne" / "notes.txt").write_text("not an image")
    (tmp_path / "Train" / "Acne" / ".hidden.jpg").write_bytes(b"")
    (tmp_path / "Train" / "Acne" / ".ipynb_checkpoints").mkdir()  # a tool's hidden folder: its copies too
    (tmp_path / "Train" / "Acne" / ".ipynb_checkpoints" / "copy.jpg").write_bytes(b"")
    (tmp_path / "Train" / "Acne" / "UPPER.JPG").write_bytes((dataset / "train/Acne/0001.jpg").read_bytes())
    splits = load_splits(tmp_path, val_fraction=0.25, seed=7)
    assert splits.class_names == CLASSES
    names = {p.name for p, _ in splits.train + splits.val}
    assert "UPPER.JPG" in names
    assert not names & {"notes.txt", ".hidden.jpg", "copy.jpg"}


@pytest.mark.parametrize("spelling", ["train", "Train"])
def test_split_folders_on_a_disk_that_ignores_case(
    tmp_path: Path, dataset: Path, monkeypatch: pytest.MonkeyPatch, spelling: str
) -> None:
    # macOS and Windows: Train/ opens train/ too, and every dataset was refused as holding both spellings.
    for split in ("train", "test"):
        shutil.copytree(dataset / split, tmp_path / (split.capitalize() if spelling == "Train" else split))
    real = Path.is_dir

    def is_dir(path: Path) -> bool:
        if path.name.lower() not in ("train", "test"):
            return real(path)
        return any(real(path.with_name(n)) for n in (path.name.lower(), path.name.capitalize()))

    monkeypatch.setattr(Path, "is_dir", is_dir)
    assert load_splits(tmp_path, val_fraction=0.25, seed=7).class_names == CLASSES


@pytest.mark.parametrize(
    ("folders", "shown"),
    [
        # A clinic's own folders: its "Lichen" may be lichen sclerosus, not the reference's Lichen Planus.
        pytest.param(["Bullous", "Lichen", "Nail_fungus"], ["Bullous", "Lichen", "Nail fungus"], id="own"),
        pytest.param(
            sorted(DISPLAY_NAMES), [DISPLAY_NAMES[n] for n in sorted(DISPLAY_NAMES)], id="reference"
        ),
        # 5 of the reference's 22: its names too ("Seborrh Keratoses", "Unknown Normal" before).
        pytest.param(
            ["Acne", "Lichen", "Seborrh_Keratoses", "Sun_Sunlight_Damage", "Unknown_Normal"],
            ["Acne", "Lichen Planus", "Seborrheic Keratoses", "Sun/Sunlight Damage", "Unknown/Normal"],
            id="reference-subset",
        ),
    ],
)
def test_display_names_are_the_reference_data_sets_only_for_its_classes(
    tmp_path: Path, dataset: Path, folders: list[str], shown: list[str]
) -> None:
    image = (dataset / "train" / "Acne" / "0001.jpg").read_bytes()
    for split in ("train", "test"):
        for name in folders:
            (tmp_path / split / name).mkdir(parents=True)
            (tmp_path / split / name / "0001.jpg").write_bytes(image)
    assert load_splits(tmp_path).display_names == shown


def _break_empty_class(root: Path) -> None:
    (root / "train" / "Vitiligo").mkdir()
    (root / "test" / "Vitiligo").mkdir()
    (root / "test" / "Vitiligo" / "x.jpg").write_bytes(b"")


def _break_class_sets(root: Path) -> None:
    shutil.rmtree(root / "test" / "Moles")


def _break_test_only_class(root: Path) -> None:
    shutil.copytree(root / "test" / "Moles", root / "test" / "Warts")


def _break_one_class(root: Path) -> None:
    for split in ("train", "test"):
        for name in ("Eczema", "Moles"):
            shutil.rmtree(root / split / name)


def _break_no_classes(root: Path) -> None:
    for split in ("train", "test"):
        shutil.rmtree(root / split)
        (root / split).mkdir()


def _break_missing_test(root: Path) -> None:
    shutil.rmtree(root / "test")


def _break_not_split_yet(root: Path) -> None:
    for name in CLASSES:
        shutil.move(root / "train" / name, root / name)
    shutil.rmtree(root / "train")
    shutil.rmtree(root / "test")


def _break_unzipped_into_itself(root: Path) -> None:
    (root / "train").rename(root / "t")
    (root / "train").mkdir()
    (root / "t").rename(root / "train" / "train")
    (root / "train" / ".DS_Store").write_bytes(b"")


def _break_one_level_too_high(root: Path) -> None:
    (root / "SkinDisease" / "SkinDisease").mkdir(parents=True)  # as a download unpacks
    for split in ("train", "test"):
        (root / split).rename(root / "SkinDisease" / "SkinDisease" / split)


def _break_valid_not_test(root: Path) -> None:
    (root / "test").rename(root / "valid")


def _break_training_testing(root: Path) -> None:  # as some downloads name them
    (root / "train").rename(root / "Training")
    (root / "test").rename(root / "Testing")


def _break_upper_case(root: Path) -> None:  # opened as train/ on macOS before the folder was listed
    (root / "train").rename(root / "TRAIN")
    (root / "test").rename(root / "TEST")


def _break_test_set(root: Path) -> None:
    (root / "test").rename(root / "test_set")


def _break_both_spellings(root: Path) -> None:
    shutil.copytree(root / "train", root / "Train")


def _break_class_name_decomposed(root: Path) -> None:
    (root / "train" / "Moles").rename(root / "train" / "Mole\u0301s")  # macOS: e + a combining accent
    (root / "test" / "Moles").rename(root / "test" / "Mol\u00e9s")


def _break_class_name_trailing_space(root: Path) -> None:
    (root / "test" / "Moles").rename(root / "test" / "Moles ")


def _break_class_name_not_utf8(root: Path) -> None:
    for split in ("train", "test"):  # a Latin-1 name, as old zip tools on Windows write it
        (root / split / "Moles").rename(root / split / os.fsdecode(b"Mol\xe9s"))


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        pytest.param(_break_empty_class, "holds no .jpg/.jpeg/.png/.webp images", id="empty-class-folder"),
        pytest.param(
            _break_class_sets,
            "(only in train: Moles): give each class a folder in both, each with its own images, or remove",
            id="train-test-classes-differ",
        ),
        pytest.param(_break_test_only_class, "different classes (only in test: Warts)", id="test-only-class"),
        pytest.param(_break_one_class, "has 'Acne' only", id="one-class"),
        pytest.param(_break_no_classes, "has no class folders", id="no-classes"),
        pytest.param(
            _break_missing_test,
            "has no test/ (or Test/) folder, which holds the test images, kept out of training: make it with",
            id="missing-test",
        ),
        pytest.param(
            _break_valid_not_test,
            "kept out of training: make it with the same class folders as train/ (or rename valid/ to test/)",
            id="valid-not-test",
        ),
        pytest.param(
            _break_not_split_yet,
            "has no train/ (or Train/) folder; its folders (Acne, Eczema, Moles) look like classes: move "
            "them into train/, and a share of each class's images into test/",
            id="class-folders-not-split-yet",
        ),
        pytest.param(
            _break_unzipped_into_itself,
            "copy/train' holds only a folder of the same name, train/: move the class folders in it up one",
            id="train-unzipped-into-itself",
        ),
        pytest.param(
            _break_one_level_too_high,
            "has no train/ (or Train/) folder; '{root}/SkinDisease/SkinDisease' has one: pass --data {root}/",
            id="data-one-level-too-high",
        ),
        pytest.param(
            _break_training_testing,
            "has no train/ (or Train/) folder: rename Training/ to train/ and Testing/ to test/",
            id="training-testing",
        ),
        pytest.param(
            _break_upper_case,
            "has no train/ (or Train/) folder: rename TRAIN/ to train/ and TEST/ to test/",
            id="upper-case",
        ),
        pytest.param(_break_test_set, "(or rename test_set/ to test/)", id="test-set"),
        pytest.param(_break_both_spellings, "has both train/ and Train/", id="both-spellings"),
        pytest.param(
            _break_class_name_decomposed,
            "train's class folder 'Mole\u0301s' and test's 'Mol\u00e9s' differ only in spaces or in how",
            id="class-name-accent-encoded-otherwise",
        ),
        pytest.param(
            _break_class_name_trailing_space,
            "train's class folder 'Moles' and test's 'Moles ' differ only in spaces",
            id="class-name-trailing-space",
        ),
        pytest.param(_break_class_name_not_utf8, "class folder 'Mol\\xe9s' in ", id="class-name-not-utf8"),
    ],
)
def test_bad_layouts_stop_up_front(tmp_path: Path, dataset: Path, breakage, message: str) -> None:
    root = tmp_path / "copy"
    shutil.copytree(dataset, root)
    breakage(root)
    with pytest.raises(DataError) as info:
        load_splits(root)
    assert message.format(root=root) in str(info.value)
    assert "\n" not in str(info.value)


def test_training_beside_a_test_folder_is_the_only_rename_asked(tmp_path: Path, dataset: Path) -> None:
    root = tmp_path / "copy"
    shutil.copytree(dataset, root)
    (root / "train").rename(root / "Training")
    shutil.copytree(root / "test", root / "test_old")  # test/ is there: nothing to rename to it
    with pytest.raises(DataError) as info:
        load_splits(root)
    assert str(info.value).endswith("has no train/ (or Train/) folder: rename Training/ to train/")


@pytest.mark.parametrize(
    ("spelling", "inside"),
    [
        pytest.param("train", "train", id="its-train-folder"),
        pytest.param("train", "test", id="its-test-folder"),
        pytest.param("Train", "Train", id="its-Train-folder"),
        pytest.param("train", "train/Acne", id="a-class-folder"),
    ],
)
def test_data_inside_the_dataset_names_the_dataset(
    tmp_path: Path, dataset: Path, spelling: str, inside: str
) -> None:
    """--data SkinDisease/train: its class folders are no dataset to split; the folder above is one."""
    root = tmp_path / "SkinDisease"
    shutil.copytree(dataset, root)
    (root / "train").rename(root / spelling)
    with pytest.raises(DataError) as info:
        load_splits(root / inside)
    said = f"{str(root / inside)!r} has no train/ (or Train/) folder: it is a folder of the dataset"
    assert str(info.value) == f"{said} {str(root)!r}; pass --data {root}"


@pytest.mark.parametrize("spelling", ["train", "Train"])
def test_data_a_train_folder_without_test_beside_it_names_its_parent(
    tmp_path: Path, dataset: Path, spelling: str
) -> None:
    """Its class folders read as a dataset not split yet, and "move them into train/" nested it deeper."""
    root = tmp_path / "Skin Disease"  # a name with a space: the flag is given as a shell takes it
    root.mkdir()
    shutil.copytree(dataset / "train", root / spelling)
    with pytest.raises(DataError) as info:
        load_splits(root / spelling)
    said = f"{str(root / spelling)!r} has no train/ (or Train/) folder: it is a train/ folder itself"
    assert str(info.value) == f"{said}; pass --data '{root}', with a test/ folder beside it"


def test_a_class_folder_that_cannot_be_read_says_so(
    tmp_path: Path, dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import training.data

    root = tmp_path / "copy"
    shutil.copytree(dataset, root)
    locked = root / "train" / "Acne"
    shutil.rmtree(locked)
    locked.mkdir()  # as rglob() sees a folder it may not read (root reads anything, so not by chmod)
    real = os.listdir

    def listdir(path: str) -> list[str]:
        if Path(path) == locked:
            raise PermissionError(13, "Permission denied", path)
        return real(path)

    monkeypatch.setattr(training.data.os, "listdir", listdir)
    with pytest.raises(DataError, match="Acne' cannot be read: Permission denied$"):  # not "holds no images"
        load_splits(root)


def test_stray_files_and_hidden_folders_beside_the_classes_are_not_classes(
    tmp_path: Path, dataset: Path
) -> None:
    shutil.copytree(dataset, tmp_path / "copy")
    (tmp_path / "copy" / "train" / "README.txt").write_text("not a class")
    shutil.copytree(dataset / "train" / "Acne", tmp_path / "copy" / "train" / ".Trash")
    for split in ("train", "test"):  # class folders zipped on macOS: its metadata folder beside them
        for name in CLASSES:
            (tmp_path / "copy" / split / "__MACOSX" / name).mkdir(parents=True)
            (tmp_path / "copy" / split / "__MACOSX" / name / "._0001.jpg").write_bytes(b"\0\5\26\7")
        (tmp_path / "copy" / split / "Acne" / "__MACOSX").mkdir()  # a class zipped alone
        (tmp_path / "copy" / split / "Acne" / "__MACOSX" / "0001.jpg").write_bytes(b"")
    splits = load_splits(tmp_path / "copy")
    assert splits.class_names == CLASSES
    assert not any("__MACOSX" in p.parts for p in splits.files())


def test_an_unreadable_image_is_skipped_and_named_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "broken.jpg"
    path.write_bytes(b"not a jpeg")
    with caplog.at_level("WARNING", logger="training.data"):
        assert data.load_image(path, 32) is None
        assert data.load_image(path, 32) is None
    assert [str(path) in r.getMessage() for r in caplog.records] == [True]


@pytest.mark.parametrize(
    ("size", "said"),
    [
        pytest.param((8000, 6000), "8000x6000 pixels", id="48mp"),
        pytest.param((12000, 9000), "108,000,000 pixels", id="108mp"),  # past Pillow's own bomb limit
    ],
)
def test_an_image_over_the_pixel_cap_is_said_to_be_too_large(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, size: tuple[int, int], said: str
) -> None:
    path = tmp_path / "huge.png"
    path.write_bytes(png_header(*size))
    with caplog.at_level("WARNING", logger="training.data"):
        assert data.load_image(path, 32) is None
    [message] = [r.getMessage() for r in caplog.records]
    cap = "the limit is 40,000,000 pixels"
    assert message == f"skipping image {path}: too large (the image has {said}; {cap})"


def test_missing_root() -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_splits("/nonexistent/dataset")


def test_a_root_that_is_a_file_is_not_said_to_be_missing(tmp_path: Path) -> None:
    archive = tmp_path / "SkinDisease.zip"  # not unpacked yet
    archive.write_bytes(b"PK")
    with pytest.raises(DataError, match=f"^dataset folder '{archive}' is a file, not a folder$"):
        load_splits(archive)


def test_evaluation_uses_the_runtime_preprocessing(dataset: Path) -> None:
    assert data.preprocess is runtime.preprocess.preprocess  # one implementation of decode + resize
    path = dataset / "test" / "Eczema" / "0001.jpg"
    ds = EvalDataset([(path, 1)], 48, IMAGENET_MEAN, IMAGENET_STD)
    x, label = ds[0]
    expected = to_tensor(
        runtime.preprocess.preprocess(path, (48, 48), resize_mode="stretch", resize_filter="bilinear"),
        IMAGENET_MEAN,
        IMAGENET_STD,
    )
    assert label == 1
    assert torch.equal(x, expected)


def test_to_tensor_normalizes() -> None:
    image = np.zeros((2, 3, 3), dtype=np.uint8)
    image[..., 0] = 255
    image[1, 2] = (10, 20, 30)
    x = to_tensor(image, (0.5, 0.25, 0.0), (0.5, 0.5, 2.0))
    assert x.dtype == torch.float32 and x.shape == (3, 2, 3)
    assert x[0, 0, 0].item() == pytest.approx((1.0 - 0.5) / 0.5)
    assert x[1, 0, 0].item() == pytest.approx((0.0 - 0.25) / 0.5)
    assert x[:, 1, 2].tolist() == pytest.approx(
        [(10 / 255 - 0.5) / 0.5, (20 / 255 - 0.25) / 0.5, 30 / 255 / 2]
    )


def _normalized_by_torch(image: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """to_tensor's arithmetic as it was, in torch per image: the numbers must stay these, bit for bit."""
    x = torch.from_numpy(image.astype(np.float32)).permute(2, 0, 1).div_(255.0)
    m = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return ((x - m) / s).contiguous()


@pytest.mark.parametrize(
    ("mean", "std"),
    [
        pytest.param(IMAGENET_MEAN, IMAGENET_STD, id="imagenet"),
        pytest.param((0.5, 0.5, 0.5), (0.5, 0.5, 0.5), id="half"),
        pytest.param((0.5, 0.25, 0.0), (0.5, 0.5, 2.0), id="uneven"),
    ],
)
def test_to_tensor_is_the_same_numbers_without_torch_arithmetic_per_image(
    mean: tuple[float, ...], std: tuple[float, ...]
) -> None:
    # Per image, torch's ops waited on its thread pool: ~20 ms an image on a busy 2-core machine (2 ms
    # alone), so --workers 0 loaded 21 training images/s at 300 px. A table per mean/std does the same.
    from torch.utils._python_dispatch import TorchDispatchMode

    class Ops(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.names: list[str] = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            self.names.append(str(func))
            return func(*args, **(kwargs or {}))

    image = np.random.default_rng(0).integers(0, 256, (37, 41, 3), dtype=np.uint8)
    image[:7] = np.resize(np.arange(256, dtype=np.uint8), (7, 41))[..., None]  # every value, each channel
    to_tensor(image, mean, std)  # the table is made once
    with Ops() as ops:
        x = to_tensor(image, mean, std)
    assert not [n for n in ops.names if any(k in n for k in ("div", "sub", "mul", "add"))]
    expected = _normalized_by_torch(image, mean, std)
    assert x.dtype == torch.float32 and x.shape == (3, 37, 41) and x.is_contiguous()
    assert torch.equal(x, expected)


@pytest.mark.parametrize(
    "writer",
    [
        pytest.param(lambda src, dst: truncated_jpeg(src, dst), id="truncated-jpeg"),
        pytest.param(lambda src, dst: dst.write_bytes(b"this is not an image"), id="not-an-image"),
        pytest.param(lambda src, dst: dst.write_bytes(b""), id="empty-file"),
    ],
)
def test_unreadable_images_are_marked_not_raised(tmp_path: Path, dataset: Path, writer) -> None:
    bad = tmp_path / "bad.jpg"
    writer(dataset / "train" / "Acne" / "0001.jpg", bad)
    good = dataset / "train" / "Acne" / "0002.jpeg"
    ev = EvalDataset([(bad, 0), (good, 0)], 32, IMAGENET_MEAN, IMAGENET_STD)
    assert ev[0][1] == -1 and ev[1][1] == 0
    tr = TrainDataset([(bad, 2), (good, 2)], 32, IMAGENET_MEAN, IMAGENET_STD, None)
    assert tr[(0, 0, 0)][1:] == (-1, 0)
    assert tr[(0, 1, 1)][1:] == (2, 1)


def test_augmentation_keeps_size_and_is_seeded_by_key(dataset: Path) -> None:
    from training.augment import build_transform

    transform = build_transform(TrainConfig(seed=3))
    samples = [(dataset / "train" / "Moles" / "0000.png", 2)]
    ds = TrainDataset(samples, 40, IMAGENET_MEAN, IMAGENET_STD, transform, seed=3)
    first = ds[(0, 5, 0)][0]
    assert first.shape == (3, 40, 40)
    assert torch.equal(first, ds[(0, 5, 0)][0])
    others = [ds[(epoch, 5, 0)][0] for epoch in range(1, 6)]
    assert any(not torch.equal(first, x) for x in others)
    plain = TrainDataset(samples, 40, IMAGENET_MEAN, IMAGENET_STD, None)[(0, 5, 0)][0]
    assert torch.equal(plain, EvalDataset(samples, 40, IMAGENET_MEAN, IMAGENET_STD)[0][0])
    assert build_transform(TrainConfig(augment=False)) is None


class _Recorder:
    """The recipe's Compose, keeping what each call applied (name → parameters)."""

    def __init__(self, compose: Any) -> None:
        compose.save_applied_params = True
        self.compose = compose
        self.applied: list[dict[str, Any]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.compose, name)

    def __call__(self, **data: Any) -> dict[str, Any]:
        out = self.compose(**data)
        self.applied.append(dict(out["applied_transforms"]))
        return out


def test_each_augmentation_fires_on_its_own_at_its_documented_rate(dataset: Path) -> None:
    """Sampled as training draws them: every transform at its probability, independently of the others (the
    flips and the affine had all come together, a jitter always with a rotation), over its documented
    range."""
    from training.augment import build_transform

    recorder = _Recorder(build_transform(DEFAULTS))
    samples = [(dataset / "train" / "Moles" / "0000.png", 2)]
    ds = TrainDataset(samples, 32, IMAGENET_MEAN, IMAGENET_STD, recorder, seed=42)
    n = 1500
    for draw in range(n):
        ds[(0, draw, 0)]

    def rate(*names: str, without: str = "") -> float:
        hits = [all(k in a for k in names) and without not in a for a in recorder.applied]
        return sum(hits) / n

    # ±0.05 is over four standard deviations of a rate measured on 1500 draws
    rates = {"HorizontalFlip": 0.5, "VerticalFlip": 0.5, "Rotate": 0.7, "ColorJitter": 0.3, "Affine": 0.5}
    for name, p in rates.items():
        assert rate(name) == pytest.approx(p, abs=0.05), name
    assert rate("HorizontalFlip", without="VerticalFlip") == pytest.approx(0.25, abs=0.05)
    assert rate("HorizontalFlip", "Affine") == pytest.approx(0.25, abs=0.05)
    assert rate("ColorJitter", without="Rotate") == pytest.approx(0.09, abs=0.04)
    angles = [
        np.degrees(np.arctan2(a["Rotate"]["matrix"][1, 0], a["Rotate"]["matrix"][0, 0]))
        for a in recorder.applied
        if "Rotate" in a
    ]
    assert -30.0 <= min(angles) < -27.0 and 27.0 < max(angles) <= 30.0
    jitters = [a["ColorJitter"] for a in recorder.applied if "ColorJitter" in a]
    assert all(0.8 <= j["brightness"] <= 1.2 and -0.05 <= j["hue"] <= 0.05 for j in jitters)
    scales = [s for a in recorder.applied if "Affine" in a for s in a["Affine"]["scale"].values()]
    assert 0.9 <= min(scales) < 0.92 and 1.08 < max(scales) <= 1.1


@pytest.mark.parametrize("world_size", [pytest.param(1, id="one-rank"), pytest.param(3, id="three-ranks")])
def test_sampler_shards_one_global_sequence(world_size: int) -> None:
    labels = [0] * 90 + [1] * 10
    samplers = [
        WeightedSampler(100, balanced_weights(labels, 2), rank=r, world_size=world_size, seed=1)
        for r in range(world_size)
    ]
    for epoch in (0, 1):
        for s in samplers:
            s.set_epoch(epoch)
        parts = [list(s) for s in samplers]
        assert len({len(p) for p in parts}) == 1 and len(parts[0]) == len(samplers[0])
        keys = sorted(k for p in parts for k in p)
        draws = samplers[0].draws()
        assert [(epoch, k, draws[k]) for k in range(len(draws))] == keys
        assert len(draws) % world_size == 0 and len(draws) >= 100
    samplers[0].set_epoch(0)
    again = WeightedSampler(100, balanced_weights(labels, 2), world_size=world_size, seed=1)
    assert again.draws() == samplers[0].draws()
    samplers[0].set_epoch(1)
    assert again.draws() != samplers[0].draws()


def test_weighted_sampler_balances_classes() -> None:
    labels = [0] * 900 + [1] * 100
    sampler = WeightedSampler(1000, balanced_weights(labels, 2), seed=0)
    drawn = [labels[i] for i in sampler.draws()]
    assert 0.4 < sum(drawn) / len(drawn) < 0.6


def test_shuffle_sampler_is_a_permutation() -> None:
    sampler = WeightedSampler(10, None, seed=0)
    draws = sampler.draws()
    assert sorted(draws) == list(range(10))
    sampler.set_epoch(1)
    assert sorted(sampler.draws()) == list(range(10)) and sampler.draws() != draws


def test_a_linked_folder_in_a_class_is_read_one_that_leads_back_into_the_dataset_is_not(
    tmp_path: Path, dataset: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "copy"
    shutil.copytree(dataset, root)
    batch = tmp_path / "other-disk" / "moles-2024"  # kept elsewhere, linked in
    shutil.move(root / "train" / "Moles", batch)
    (root / "train" / "Moles").mkdir()
    (root / "train" / "Moles" / "batch").symlink_to(batch)
    (root / "train" / "Acne" / "up").symlink_to("..")  # a loop: would take every class in as Acne
    (root / "train" / "Eczema" / "test-copy").symlink_to(root / "test" / "Eczema")  # test images in train
    with caplog.at_level("WARNING", logger="training.data"):
        splits = load_splits(root)
    moles = [p for p, y in splits.train + splits.val if y == 2]
    assert len(moles) == 16 and all(p.parent == root / "train" / "Moles" / "batch" for p in moles)
    assert Counter(y for _, y in splits.train + splits.val) == {0: 16, 1: 16, 2: 16}
    warned = sorted(r.getMessage().split(":")[0] for r in caplog.records)
    assert warned == [f"not following link {root}/train/{c}" for c in ("Acne/up", "Eczema/test-copy")]


@pytest.mark.parametrize("target", ["/nonexistent/Moles", "Moles"], ids=["missing", "loop"])
def test_a_class_folder_link_that_leads_nowhere_is_one_line(
    tmp_path: Path, dataset: Path, target: str
) -> None:
    root = tmp_path / "copy"
    shutil.copytree(dataset, root)
    for split in ("train", "test"):  # both splits' Moles on a disk that is not mounted: it was left out
        shutil.rmtree(root / split / "Moles")
        (root / split / "Moles").symlink_to(target)
    with pytest.raises(DataError) as info:
        load_splits(root)
    assert str(info.value).startswith(f"'{root}/train/Moles': it is a link to '{target}', which cannot be")
    assert str(info.value).endswith("; fix or remove the link")


def test_images_outside_the_class_folders_are_said_to_be_left_out(
    tmp_path: Path, dataset: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "copy"
    shutil.copytree(dataset, root)
    for name in ("IMG_5001.jpg", "IMG_5002.JPG"):  # a sorting slip: dropped beside the class folders
        shutil.copy(root / "train" / "Acne" / "0001.jpg", root / "train" / name)
    (root / "train" / "Thumbs.db").write_bytes(b"")  # not a picture: nothing said
    with caplog.at_level("WARNING", logger="training.data"):
        splits = load_splits(root)
    assert len(splits.train + splits.val) == 48
    assert [r.getMessage() for r in caplog.records] == [
        f"not reading 2 images in {root / 'train'} itself, outside the class folders, e.g. IMG_5001.jpg: "
        "move each into its class's folder to use it"
    ]


def test_pictures_in_formats_the_runtime_does_not_take_are_said_to_be_left_out(
    tmp_path: Path, dataset: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "copy"
    shutil.copytree(dataset, root)
    jpeg = (root / "train" / "Acne" / "0001.jpg").read_bytes()
    for name in ("IMG_0001.HEIC", "IMG_0002.heic", "saved.jfif"):  # an iPhone's photos, Chrome on Windows
        (root / "train" / "Moles" / name).write_bytes(jpeg)
    (root / "train" / "Moles" / "Thumbs.db").write_bytes(b"")  # not a picture: nothing said
    with caplog.at_level("WARNING", logger="training.data"):
        splits = load_splits(root)
    assert len(splits.train + splits.val) == 48  # left out, as before
    [message] = [r.getMessage() for r in caplog.records]
    assert message.startswith(
        f"not reading 3 files in {root / 'train'} whose format the runtime does not take (.heic 2, .jfif 1), "
        f"e.g. {root}/train/Moles/IMG_0001.HEIC; only .jpg/.jpeg/.png/.webp are read"
    )


@pytest.mark.parametrize(
    ("link", "target", "split"),
    [
        pytest.param("test/Moles", "../train/Moles", "train", id="test-class-is-a-train-class"),
        pytest.param("train/Naevi", "Moles", "train", id="two-classes-one-folder"),
        pytest.param("train/All", "..", "train", id="the-dataset-root"),
    ],
)
def test_a_class_folder_that_links_into_the_dataset_is_one_line(
    tmp_path: Path, dataset: Path, link: str, target: str, split: str
) -> None:
    root = tmp_path / "copy"
    shutil.copytree(dataset, root)
    if (root / link).exists():
        shutil.rmtree(root / link)
    (root / link).symlink_to(target)
    if link == "train/Naevi":
        shutil.copytree(root / "test" / "Moles", root / "test" / "Naevi")
    with pytest.raises(DataError) as info:
        load_splits(root)
    assert str(info.value).startswith(f"class folder '{root / link}' is a link to '")
    assert f"in or above the dataset's {split}/: its images would be read twice" in str(info.value)


def test_a_class_folder_linked_from_elsewhere_is_read(tmp_path: Path, dataset: Path) -> None:
    root = tmp_path / "copy"
    shutil.copytree(dataset, root)
    for split in ("train", "test"):
        shutil.move(root / split / "Moles", tmp_path / f"moles-{split}")
        (root / split / "Moles").symlink_to(tmp_path / f"moles-{split}")
    splits = load_splits(root)
    assert splits.class_names == CLASSES and len(splits.test) == 18


def test_train_and_test_class_folders_linked_to_one_folder_is_one_line(tmp_path: Path, dataset: Path) -> None:
    root = tmp_path / "copy"
    shutil.copytree(dataset, root)
    shutil.move(root / "train" / "Moles", tmp_path / "moles")
    shutil.rmtree(root / "test" / "Moles")
    for split in ("train", "test"):
        (root / split / "Moles").symlink_to(tmp_path / "moles")
    with pytest.raises(DataError) as info:
        load_splits(root)
    both = f"'{root}/train/Moles' and '{root}/test/Moles'"
    assert str(info.value).startswith(f"class folders {both} are links to one folder ({tmp_path}/moles)")


@pytest.mark.parametrize("link", [os.symlink, os.link], ids=["symbolic-link", "hard-link"])
def test_one_image_file_in_train_and_test_is_one_line(tmp_path: Path, dataset: Path, link: Any) -> None:
    root = tmp_path / "copy"
    shutil.copytree(dataset, root)
    trained = root / "train" / "Moles" / "0003.png"
    link(trained, root / "test" / "Moles" / "x.png")  # a split script's slip: a test image trained on
    (root / "train" / "Moles" / "again.png").symlink_to(trained)  # twice in one class: no harm
    with pytest.raises(DataError) as info:
        load_splits(root)
    assert str(info.value) == (
        f"'{trained}' and '{root}/test/Moles/x.png' are one file (a link, or a hard link): it would be read "
        "twice, as a training and a test image or under two classes; keep one"
    )
    (root / "test" / "Moles" / "x.png").unlink()
    assert len(load_splits(root).train + load_splits(root).val) == 49


@pytest.mark.parametrize("link", [os.symlink, os.link], ids=["symbolic-link", "hard-link"])
def test_one_image_file_twice_in_a_class_stays_on_one_side_of_the_validation_split(
    tmp_path: Path, dataset: Path, link: Any
) -> None:
    # Its two names were split on their own: validation held images the model trained on (best.pt's choice,
    # early stopping and export's calibration then measured memorised images).
    root = tmp_path / "copy"
    shutil.copytree(dataset, root)
    for image in sorted((root / "train" / "Acne").iterdir()):
        link(image, image.with_name(f"z-{image.name}"))  # every Acne image under a second name

    def files(samples: list[tuple[Path, int]]) -> set[tuple[int, int]]:
        return {(s.st_dev, s.st_ino) for s in (path.stat() for path, _ in samples)}

    for seed in range(5):
        splits = load_splits(root, val_fraction=0.25, seed=seed)
        assert not files(splits.train) & files(splits.val)
        assert Counter(y for _, y in splits.val)[0] > 0 and Counter(y for _, y in splits.train)[0] > 0
        # The other classes are split as they always were.
        before = load_splits(dataset, val_fraction=0.25, seed=seed)
        assert [(p.relative_to(root), y) for p, y in splits.val if y] == [
            (p.relative_to(dataset), y) for p, y in before.val if y
        ]


def test_a_validation_folder_beside_train_and_test_is_said_to_be_left_unread(
    tmp_path: Path, dataset: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "copy"
    shutil.copytree(dataset, root)
    shutil.copytree(root / "test", root / "valid")  # as many downloads come: train/, valid/, test/
    with caplog.at_level("WARNING", logger="training.data"):
        splits = load_splits(root)
    assert not any("valid" in p.parts for p in splits.files())
    assert [r.getMessage() for r in caplog.records] == [
        f"not reading {root / 'valid'}: the validation split is carved from train/ (--val-fraction); move "
        "its class folders' images into train/ to train on them"
    ]


def _with_copies(root: Path) -> dict[str, str]:
    """One copy of each kind added to ``root`` (the generated dataset): copy → the image it copies."""
    copies = {"test/Moles/x.png": "train/Moles/0003.png", "test/Eczema/x.jpg": "test/Acne/0001.jpg"}
    (root / "train/Acne/x.png").write_bytes(b"a copy, soon")
    split = load_splits(root)  # the names, not the bytes, decide each side: pick one across from x.png
    val = {p.relative_to(root).as_posix() for p, y in split.val if y == 0}
    side = split.train if "train/Acne/x.png" in val else split.val
    copies["train/Acne/x.png"] = next(p.relative_to(root).as_posix() for p, y in side if y == 0)
    for copy, image in copies.items():
        shutil.copyfile(root / image, root / copy)
    return copies


def test_byte_identical_copies_are_said_once_a_kind_and_counted(
    tmp_path: Path, dataset: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A scraped data set holds copies that links and inodes do not show: a test image trained on, one image
    # under two labels, a validation image trained on (best.pt picked on it).
    root = tmp_path / "copy"
    shutil.copytree(dataset, root)
    copies = _with_copies(root)
    with caplog.at_level("WARNING", logger="training.data"):
        splits = load_splits(root)
    assert splits.copies == {"test_of_train": 1, "across_classes": 1, "val_of_train": 1}
    pair = ["train/Acne/x.png", copies["train/Acne/x.png"]]  # one of them in validation
    val, trained = pair if root / pair[0] in {p for p, _ in splits.val} else pair[::-1]
    assert [r.getMessage() for r in caplog.records] == [
        f"test images with a byte-identical copy in train/: 1 in {root}, e.g. test/Moles/x.png = "
        "train/Moles/0003.png; the test numbers overstate what the model knows: remove one of each pair",
        f"images under two or more classes (byte-identical copies): 1 in {root}, e.g. test/Acne/0001.jpg = "
        "test/Eczema/x.jpg; their labels conflict: keep each in its one class",
        f"validation images with a byte-identical copy left in training: 1 in {root}, e.g. {val} = "
        f"{trained}; validation, which picks best.pt, overstates: remove one of each pair from train/",
    ]
    # Only said: the split is the one the names give (checkpoints name it), as it was before copies were
    # looked for, and as it is with other bytes in the copies.
    assert splits.val_fingerprint() == "33185e4b5b28a7bf"
    for copy in copies:
        with (root / copy).open("ab") as file:
            file.write(b"\0")
    caplog.clear()
    again = load_splits(root)
    assert again == splits and again.copies == dict.fromkeys(splits.copies, 0) and not caplog.records


def test_links_and_failed_downloads_are_no_copies_and_other_ranks_say_nothing(
    tmp_path: Path, dataset: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "copy"
    shutil.copytree(dataset, root)
    os.link(root / "train/Acne/0000.png", root / "train/Acne/x.png")  # one file: kept on one side
    for name in (
        "train/Eczema/0000.png",
        "train/Eczema/0001.jpg",
        "train/Moles/0002.jpeg",
        "test/Acne/0000.png",
    ):
        (root / name).write_bytes(b"")  # failed downloads: said as unreadable when loaded, not as copies
    for name in ("train/Eczema/page.jpg", "train/Moles/page.jpg", "test/Moles/page.jpg"):
        (root / name).write_bytes(b"<html><body>403 Forbidden</body></html>\n")  # one saved as a page: so too
    with caplog.at_level("WARNING", logger="training.data"):
        assert load_splits(root).copies == {"test_of_train": 0, "across_classes": 0, "val_of_train": 0}
        (root / "train/Acne/x.png").unlink()
        _with_copies(root)
        with scan_said_once(Cluster(1, 2, torch.device("cpu"), False)):  # every torchrun rank scans
            assert sum(load_splits(root).copies.values()) == 3
    assert not caplog.records
