"""Dataset folders, the validation split, datasets and the (distributed-aware) weighted sampler.

Every image goes through ``runtime.preprocess.preprocess`` (decode, EXIF, RGB, resize) exactly as the server
does it; training adds augmentations that keep the size, then both convert to a normalized float tensor.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import math
import os
import random
import shlex
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from runtime.bundle import display_names
from runtime.preprocess import ImageError, open_image, preprocess

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")  # what the runtime takes
# Pictures in other formats, said to be left out: an iPhone's .heic, Windows' .jfif, a scanner's .tif.
OTHER_IMAGE_EXTENSIONS = (".heic", ".heif", ".jfif", ".jpe", ".tif", ".tiff", ".bmp", ".gif", ".avif", ".dng")
RESIZE_MODE = "stretch"
RESIZE_FILTER = "bilinear"

Sample = tuple[Path, int]
log = logging.getLogger(__name__)


class DataError(Exception):
    """A dataset layout the run cannot use; the message is one line for people."""


@dataclass(frozen=True)
class Splits:
    root: Path
    class_names: list[str]
    train: list[Sample]
    val: list[Sample]
    test: list[Sample]
    # Name fingerprints, made once: a resumed run compared them, then hashed both again for its checkpoint.
    _fingerprints: dict[str, str] = field(default_factory=dict, compare=False, repr=False)
    # Byte-identical copies found by the scan (find_copies), which report.json records.
    copies: dict[str, int] = field(default_factory=dict, compare=False, repr=False)

    @property
    def display_names(self) -> list[str]:
        return display_names(self.class_names)

    def files(self) -> list[Path]:
        """Every image file of the dataset (train folder and test folder)."""
        return [p for p, _ in self.train + self.val + self.test]

    def train_fingerprint(self) -> str:
        """The names of the files the validation split is carved from (under train/, whatever its spelling):
        one added or removed reshuffles its class's split; a file repaired in place does not. Training keeps
        it in the checkpoint; resume and export compare it."""
        if "train" not in self._fingerprints:
            self._fingerprints["train"] = self._names(self.train + self.val)
        return self._fingerprints["train"]

    def val_fingerprint(self) -> str:
        """The names of the validation images: with the same files, another numpy (whose permutations are
        the same only within one build) or another version of split_class may carve another split, which
        would hold images the run trained on. Kept in the checkpoint; resume and export compare it."""
        if "val" not in self._fingerprints:
            self._fingerprints["val"] = self._names(self.val)
        return self._fingerprints["val"]

    def _names(self, samples: list[Sample]) -> str:
        digest = hashlib.sha256()
        for path in sorted(path.relative_to(self.root) for path, _ in samples):
            digest.update(Path(*path.parts[1:]).as_posix().encode("utf-8", "surrogateescape") + b"\0")
        return digest.hexdigest()[:16]

    def folder_holding(self, path: Path) -> Path | None:
        """The dataset's train/ or test/ folder that ``path`` is in, or None: a folder there is read as a
        class, a file in a class as an image. Resolved, as train/ may be a link elsewhere."""
        for split in (find_split_dir(self.root, "train"), find_split_dir(self.root, "test")):
            if path.resolve().is_relative_to(split.resolve()):
                return split
        return None


def find_split_dir(root: Path, name: str) -> Path:
    """``root/name`` or ``root/Name`` (both spellings occur in copies of the dataset), as the folder lists it:
    on a disk that ignores case (macOS, Windows) either spelling opens the one folder."""
    try:
        names = set(os.listdir(root))
    except OSError:  # a folder that can be searched but not listed: the names as given
        names = {name, name.capitalize()}
    found = [root / n for n in (name, name.capitalize()) if n in names and (root / n).is_dir()]
    if not found:
        missing = f"{str(root)!r} has no {name}/ (or {name.capitalize()}/) folder"
        above = _dataset_above(root) if name == "train" else None
        if above is not None:  # --data one level too low: a split (or a class) of the dataset
            dataset = f"it is a folder of the dataset {str(above)!r}"
            raise DataError(f"{missing}: {dataset}; pass --data {_arg(above)}")
        if name == "train" and root.name.lower() == "train":  # the same, before test/ was made beside it
            raise DataError(
                f"{missing}: it is a train/ folder itself; pass --data {_arg(root.parent)}, with a test/ "
                "folder beside it"
            )
        classes = _class_folders_in(root) if name == "train" else []
        if classes:  # the classes themselves: a dataset not split yet
            listed = ", ".join(classes[:3]) + (", …" if len(classes) > 3 else "")
            raise DataError(
                f"{missing}; its folders ({listed}) look like classes: move them into train/, and a share of "
                "each class's images into test/ (train/CLASS/, test/CLASS/, the same class names)"
            )
        below = _dataset_below(root) if name == "train" else None
        if below is not None:  # --data one level too high (a download's folder around the dataset)
            raise DataError(f"{missing}; {str(below)!r} has one: pass --data {_arg(below)}")
        like = _named_like(root, name)
        if name == "train" and like:  # Training/ and Testing/, as some downloads name them
            test_there = any(n in names and (root / n).is_dir() for n in ("test", "Test"))
            renames = [f"{like[0].name}/ to train/"] + [
                f"{p.name}/ to test/" for p in ([] if test_there else _named_like(root, "test")[:1])
            ]
            raise DataError(f"{missing}: rename {' and '.join(renames)}")
        if name == "test":
            held = [p.name for p in like or _held_out_folders(root)]
            instead = f" (or rename {held[0]}/ to test/)" if held else ""
            raise DataError(
                f"{missing}, which holds the test images, kept out of training: make it with the same class "
                f"folders as train/{instead}"
            )
        raise DataError(f"{missing}: the class folders go in {name}/ and test/ (train/CLASS/, test/CLASS/)")
    if len(found) > 1:
        raise DataError(f"{str(root)!r} has both {name}/ and {name.capitalize()}/; keep one")
    with contextlib.suppress(OSError):
        inside = [p for p in found[0].iterdir() if not hidden(p.name)]
        if len(inside) == 1 and inside[0].name.lower() == name and inside[0].is_dir():  # unzipped into itself
            raise DataError(
                f"{str(found[0])!r} holds only a folder of the same name, {inside[0].name}/: move the class "
                f"folders in it up one level, into {found[0]}"
            )
    return found[0]


def _arg(path: Path) -> str:
    """``path`` as typed after a flag: a folder named with spaces is pasted into a shell as it is said."""
    return shlex.quote(str(path))


def _dataset_above(root: Path) -> Path | None:
    """The dataset (a folder with train/ and test/) that ``root`` is a split folder of (train/, test/,
    valid/…) or a class folder in one, or None."""
    for split, dataset in ((root, root.parent), (root.parent, root.parent.parent)):
        if split.name.lower() in ("train", "test", *_HELD_OUT) and all(
            (dataset / n).is_dir() or (dataset / n.capitalize()).is_dir() for n in ("train", "test")
        ):
            return dataset
    return None


def _dataset_below(root: Path) -> Path | None:
    """A folder one or two levels under ``root`` that has a train/ (or Train/) folder, or None."""
    level = [root]
    try:
        for _ in range(2):
            level = [p for f in level for p in sorted(f.iterdir()) if not hidden(p.name) and p.is_dir()][:200]
            for folder in level:
                if any((folder / n).is_dir() for n in ("train", "Train")):
                    return folder
    except OSError:  # a folder that cannot be listed: no hint
        pass
    return None


_HELD_OUT = ("val", "valid", "validation")


def _named_like(root: Path, name: str) -> list[Path]:
    """Folders in ``root`` whose names begin as ``name`` does, in any case, but are neither of its two
    spellings (Training/, test_set/, TRAIN/: read on a disk that ignores case, before it was listed)."""
    with contextlib.suppress(OSError):
        return [
            p
            for p in sorted(root.iterdir())
            if p.name.lower().startswith(name) and p.name not in (name, name.capitalize()) and p.is_dir()
        ]
    return []


def _held_out_folders(root: Path) -> list[Path]:
    """A download's own validation split beside train/ (val/, valid/, validation/): not read."""
    with contextlib.suppress(OSError):
        return [p for p in sorted(root.iterdir()) if p.name.lower() in _HELD_OUT and p.is_dir()]
    return []


def hidden(name: str) -> bool:
    """A file or folder the dataset's reader passes over: hidden ones (.DS_Store, macOS's ._IMG.jpg beside
    each image on a foreign disk, .ipynb_checkpoints/), and __MACOSX/, where a macOS zip keeps those."""
    return name.startswith(".") or name == "__MACOSX"


def _class_folders_in(root: Path) -> list[str]:
    """The folders right under ``root`` that hold images themselves (with the names they go by)."""
    names = []
    with contextlib.suppress(OSError):  # a root that may be entered but not listed: no hint then
        for folder in sorted(p for p in root.iterdir() if p.is_dir() and not hidden(p.name)):
            with contextlib.suppress(OSError), os.scandir(folder) as listing:
                if any(Path(e.name).suffix.lower() in IMAGE_EXTENSIONS for e in listing):
                    names.append(folder.name)
    return names


def scan_split(
    folder: Path,
    splits: Sequence[Path] = (),
    seen: dict[tuple[int, int], Path] | None = None,
    twins: dict[Path, tuple[int, int]] | None = None,
) -> dict[str, list[Path]]:
    """Class folder name → sorted image files (hidden files and folders, such as .ipynb_checkpoints/, and
    other extensions are ignored; pictures in formats the runtime does not take are warned of, then left out).
    ``splits``: the dataset's train/ and test/, which no link is followed into; ``seen``, ``twins``: see
    _images."""
    classes: dict[str, list[Path]] = {}
    seen = {} if seen is None else seen
    twins = {} if twins is None else twins
    loose = []
    for entry in sorted(p for p in folder.iterdir() if not hidden(p.name)):
        if entry.suffix.lower() in IMAGE_EXTENSIONS + OTHER_IMAGE_EXTENSIONS and entry.is_file():
            loose.append(entry)  # in no class: left out, and said, as a sorting slip drops them unseen
        if entry.is_symlink() and not entry.exists():  # a class on a disk not mounted would go unnoticed
            try:
                entry.stat()
            except OSError as exc:
                why = f"it is a link to {os.readlink(entry)!r}, which cannot be opened ({exc.strerror})"
                raise DataError(f"{str(entry)!r}: {why}; fix or remove the link") from None
        if entry.is_dir():
            classes[entry.name] = _images(entry, [folder, *splits], seen, twins)
    if loose:
        log.warning(
            "not reading %d images in %s itself, outside the class folders, e.g. %s: move each into its "
            "class's folder to use it",
            len(loose),
            folder,
            loose[0].name,
        )
    others = [p for files in classes.values() for p in files if p.suffix.lower() not in IMAGE_EXTENSIONS]
    if others:
        kinds = Counter(p.suffix.lower() for p in others)
        log.warning(
            "not reading %d files in %s whose format the runtime does not take (%s), e.g. %s; only %s are "
            "read: convert them to train on them (a .jfif or .jpe is a JPEG: renaming it .jpg does)",
            len(others),
            folder,
            ", ".join(f"{kind} {n}" for kind, n in kinds.most_common()),
            others[0],
            "/".join(IMAGE_EXTENSIONS),
        )
        classes = {
            name: [p for p in files if p.suffix.lower() in IMAGE_EXTENSIONS]
            for name, files in classes.items()
        }
    if not classes:
        raise DataError(f"{str(folder)!r} has no class folders")
    for name in classes:
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:  # its undecodable bytes, kept by Python as surrogates
            # The folder name is the label the model serves (ONNX metadata, JSON): found at the end of a run,
            # the plots failed and export refused it.
            raw = repr(os.fsencode(name))[2:-1]
            why = "has a name that is not UTF-8; rename it"
            raise DataError(f"class folder '{raw}' in {str(folder)!r} {why}") from None
    empty = [name for name, files in classes.items() if not files]
    for name in empty:  # a folder it may not read is passed over: say so, not "holds no images"
        try:
            os.listdir(folder / name)
        except OSError as exc:
            raise DataError(f"class folder {str(folder / name)!r} cannot be read: {exc.strerror}") from None
    if empty:
        raise DataError(
            f"class folder {str(folder / empty[0])!r} holds no {'/'.join(IMAGE_EXTENSIONS)} images"
            + (f" (and {len(empty) - 1} more empty class folders)" if len(empty) > 1 else "")
        )
    return classes


def _nested(a: Path, b: Path) -> bool:
    """One folder is the other or holds it: a link there would read the same images twice."""
    return a.is_relative_to(b) or b.is_relative_to(a)


def _check_class_link(link: Path, splits: Sequence[Path]) -> None:
    """A class folder that is a link elsewhere is read, but not one into train/ or test/ or above them: the
    same images would count twice (test/Moles -> ../train/Moles: test images the model trained on)."""
    target = link.resolve()
    for split in splits:
        if _nested(target, split.resolve()):
            raise DataError(
                f"class folder {str(link)!r} is a link to {str(target)!r}, in or above the dataset's "
                f"{split.name}/: its images would be read twice (as training and test images, or under two "
                "classes); copy them instead, or remove the link"
            )


def _check_one_folder_each(class_dirs: list[Path]) -> None:
    """No two class folders are links to one folder (train/Moles and test/Moles -> /disk/moles: test images
    the model trained on), or one in the other."""
    real = [d.resolve() for d in class_dirs]
    for i, a in enumerate(real):
        for j in range(i + 1, len(real)):
            if _nested(a, real[j]):
                both = f"{str(class_dirs[i])!r} and {str(class_dirs[j])!r}"
                outer = a if real[j].is_relative_to(a) else real[j]
                raise DataError(
                    f"class folders {both} are links to one folder ({outer}), whose "
                    "images would be read twice (as training and test images, or under two classes); copy "
                    "them instead, or remove a link"
                )


def _images(
    class_dir: Path,
    keep_out: Sequence[Path],
    seen: dict[tuple[int, int], Path],
    twins: dict[Path, tuple[int, int]],
) -> list[Path]:
    """The image files under ``class_dir`` (those in formats not read too), following links to folders (a
    batch kept on another disk), but not one into the dataset's splits or above them (``keep_out``) or into a
    folder taken already: a loop, or images counted twice or under another class. Such a link is skipped with
    a warning. ``seen``: (device, inode) → path of the dataset's images so far, which no other class or split
    may hold (a file linked, or hard-linked, into train/ and test/ both); ``twins``: each name of a file that
    is in its class twice → (device, inode), which the validation split keeps together."""
    bounds = [p.resolve() for p in keep_out]
    taken = [class_dir.resolve()]
    found: list[Path] = []
    folders = [class_dir]
    while folders:
        folder = folders.pop()
        try:
            device = folder.stat().st_dev
            with os.scandir(folder) as listing:  # its entries know their type and inode: no stat per image
                entries = [entry for entry in listing if not hidden(entry.name)]
        except OSError:  # one it may not read: scan_split says why when that leaves the class empty
            continue
        for entry in entries:
            path = folder / entry.name
            if entry.is_dir():
                if entry.is_symlink():
                    target = path.resolve()
                    if any(_nested(target, b) for b in bounds + taken):
                        why = (
                            "into the dataset's train/ or test/ (or above them), or to a folder read already"
                        )
                        log.warning("not following link %s: it leads %s (%s)", path, why, target)
                        continue
                    taken.append(target)
                folders.append(path)
            elif (
                Path(entry.name).suffix.lower() in IMAGE_EXTENSIONS + OTHER_IMAGE_EXTENSIONS
                and entry.is_file()
            ):
                found.append(path)
                if entry.is_symlink():
                    st = entry.stat()
                    key = (st.st_dev, st.st_ino)
                else:
                    key = (device, entry.inode())
                other = seen.setdefault(key, path)
                if not other.is_relative_to(class_dir):
                    raise DataError(
                        f"{str(other)!r} and {str(path)!r} are one file (a link, or a hard link): it would "
                        "be read twice, as a training and a test image or under two classes; keep one"
                    )
                if other != path:  # twice in one class: trained on twice, but never also validated on
                    twins[other] = twins[path] = key
    return sorted(found)


def load_splits(root: str | Path, *, val_fraction: float = 0.15, seed: int = 42) -> Splits:
    """Read ``ROOT/train`` and ``ROOT/test``; carve a stratified, seeded validation split from train.

    Deterministic given (root contents, val_fraction, seed), so export can rebuild the same split.
    """
    base = Path(root).expanduser()
    if not base.is_dir():
        problem = "is a file, not a folder" if base.exists() else "does not exist"
        raise DataError(f"dataset folder {str(root)!r} {problem}")
    base = base.resolve()
    split_dirs = [find_split_dir(base, "train"), find_split_dir(base, "test")]
    for folder in _held_out_folders(base):
        log.warning(
            "not reading %s: the validation split is carved from train/ (--val-fraction); move its class "
            "folders' images into train/ to train on them",
            folder,
        )
    # Links first: class folders that are one folder are said as such, not as their first image.
    class_dirs = [
        d for split in split_dirs for d in sorted(split.iterdir()) if not hidden(d.name) and d.is_dir()
    ]
    for link in (d for d in class_dirs if d.is_symlink()):
        _check_class_link(link, split_dirs)
    _check_one_folder_each(class_dirs)
    seen: dict[tuple[int, int], Path] = {}
    twins: dict[Path, tuple[int, int]] = {}
    train_classes = scan_split(split_dirs[0], split_dirs, seen, twins)
    test_classes = scan_split(split_dirs[1], split_dirs, seen)
    if set(train_classes) != set(test_classes):
        only_train = sorted(set(train_classes) - set(test_classes))
        only_test = sorted(set(test_classes) - set(train_classes))
        for a in only_train:
            b = next((b for b in only_test if _spelling(b) == _spelling(a)), None)
            if b is not None:  # the two names print alike: say how they differ
                raise DataError(
                    f"train's class folder {a!r} and test's {b!r} differ only in spaces or in how an "
                    "accented letter is encoded (a copy made on macOS?); rename one to match the other"
                )
        parts = [
            f"only in train: {', '.join(only_train)}" if only_train else "",
            f"only in test: {', '.join(only_test)}" if only_test else "",
        ]
        # Which side to fix is the user's call: say both.
        raise DataError(
            "train and test have different classes ("
            + "; ".join(p for p in parts if p)
            + "): give each class a folder in both, each with its own images, or remove the folder of a "
            "class that has only one"
        )
    class_names = sorted(train_classes)
    if len(class_names) < 2:
        only = class_names[0] if class_names else "none"
        raise DataError(f"a classifier needs at least 2 class folders; {str(root)!r} has {only!r} only")
    train: list[Sample] = []
    val: list[Sample] = []
    for index, name in enumerate(class_names):
        kept, held = split_class(train_classes[name], val_fraction, seed, index, twins)
        train += [(p, index) for p in kept]
        val += [(p, index) for p in held]
    test = [(p, index) for index, name in enumerate(class_names) for p in test_classes[name]]
    copies = find_copies(base, train, val, test)
    return Splits(root=base, class_names=class_names, train=train, val=val, test=test, copies=copies)


def find_copies(root: Path, train: list[Sample], val: list[Sample], test: list[Sample]) -> dict[str, int]:
    """Count and warn of byte-identical copies (not links: _images refuses or pairs those), one line a kind:
    test images with a copy in train/ (the test numbers then overstate), images under two or more classes
    (a label conflict), validation images with a copy in the training split (validation, which picks
    best.pt, then overstates). Only said: the splits stay as they are (checkpoints name their validation
    split). Files are read only when they share a size, and whole only when they share their last bytes;
    copies that are no image (a failed download: an empty file, an error page saved as .jpg) are none."""
    splits = (("train", train), ("val", val), ("test", test))
    items = [(path, split, label) for split, samples in splits for path, label in samples]
    groups = _alike(items, lambda item: item[0].stat().st_size or None)  # an empty file is no image
    groups = [g for group in groups for g in _alike(group, _tail)]
    groups = [g for group in groups for g in _alike(group, _whole)]
    groups = [group for group in groups if _an_image(group[0][0])]  # one of them: they are the same bytes
    found: dict[str, list[tuple[Path, list[Path]]]] = {kind: [] for kind in _COPIES}
    for group in groups:
        # The first two copies of each kind, for the example: listing every copy for each of k copies of one
        # placeholder image made k² entries.
        trained = sorted(p for p, s, _ in group if s != "test")[:2]
        kept = sorted(p for p, s, _ in group if s == "train")[:2]
        for path, split, _ in group:
            if split == "test" and trained:
                found["test_of_train"].append((path, trained))
            if split == "val" and kept:
                found["val_of_train"].append((path, kept))
        if len({label for _, _, label in group}) > 1:
            paths = sorted(p for p, _, _ in group)
            found["across_classes"].append((paths[0], paths[1:3]))
    for kind, what in _COPIES.items():
        if found[kind]:
            path, copies = min(found[kind])
            example = " = ".join(p.relative_to(root).as_posix() for p in [path, *copies[:2]])
            log.warning(what, len(found[kind]), root, example)
    return {kind: len(items) for kind, items in found.items()}


# One line a kind of copy: its count, the dataset, an example (a path = its copies).
_COPIES = {
    "test_of_train": (
        "test images with a byte-identical copy in train/: %d in %s, e.g. %s; the test numbers overstate "
        "what the model knows: remove one of each pair"
    ),
    "across_classes": (
        "images under two or more classes (byte-identical copies): %d in %s, e.g. %s; their labels "
        "conflict: keep each in its one class"
    ),
    "val_of_train": (
        "validation images with a byte-identical copy left in training: %d in %s, e.g. %s; validation, "
        "which picks best.pt, overstates: remove one of each pair from train/"
    ),
}
_Item = tuple[Path, str, int]  # an image, its split (train, val, test) and class
_TAIL = 4096  # a JPEG's last bytes are its own; its first are headers and tables that many files share


def _alike(items: list[_Item], key: Callable[[_Item], object]) -> list[list[_Item]]:
    """The groups of two or more ``items`` with one key; one whose key is None, or that cannot be read, is in
    none (it is skipped, and said, when loaded)."""
    groups: dict[object, list[_Item]] = defaultdict(list)
    for item in items:
        with contextlib.suppress(OSError):
            if (found := key(item)) is not None:
                groups[found].append(item)
    return [group for group in groups.values() if len(group) > 1]


def _an_image(path: Path) -> bool:
    """Whether the file opens as the loader opens it (header and size): one that does not is skipped when
    loaded, trained and tested on by no split."""
    try:
        open_image(path).close()
    except ImageError:
        return False
    return True


def _tail(item: _Item) -> bytes:
    with open(item[0], "rb", buffering=0) as file:  # unbuffered: one read, of the bytes asked for
        file.seek(max(file.seek(0, os.SEEK_END) - _TAIL, 0))
        return hashlib.blake2b(file.read(_TAIL)).digest()


def _whole(item: _Item) -> bytes:
    with open(item[0], "rb") as file:
        return hashlib.file_digest(file, "blake2b").digest()


def _spelling(name: str) -> str:
    """A class folder name as people read it: accents composed (macOS decomposes them), no edge spaces."""
    return unicodedata.normalize("NFC", name).strip()


def split_class(
    files: list[Path],
    fraction: float,
    seed: int,
    index: int,
    twins: dict[Path, tuple[int, int]] | None = None,
) -> tuple[list[Path], list[Path]]:
    """Hold out ``fraction`` of one class, at least one image when it has two or more.

    Per class by hand (rather than sklearn's stratified split) so every class appears in validation; export
    rebuilds it from the checkpoint's config (numpy's permutation may differ in another numpy: the
    checkpoint's val_fingerprint tells).
    ``twins``: names of one file (a link, a hard link; see _images), which go where their first name goes.
    """
    n = len(files)
    n_val = min(max(round(n * fraction), 1), n - 1) if n >= 2 else 0
    order = np.random.default_rng([seed, index]).permutation(n)
    held = set(order[:n_val].tolist())
    if twins:  # split apart, validation held images trained on; a class without them is split as before
        side: dict[tuple[int, int], bool] = {}
        for i, path in enumerate(files):
            if path in twins:
                if side.setdefault(twins[path], i in held):
                    held.add(i)
                else:
                    held.discard(i)
        if len(held) == n:  # none left to train on: the linked files train
            held = {i for i in held if files[i] not in twins}
    return [f for i, f in enumerate(files) if i not in held], [f for i, f in enumerate(files) if i in held]


def to_tensor(image: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 HWC RGB → float32 CHW in [0, 1], normalized with mean/std (as the ONNX graph does)."""
    # A lookup, not torch arithmetic: torch's thread pool made each image wait ~20 ms on a busy 2-core
    # machine (2 ms alone), 300 px training images with --workers 0 loaded at 21/s.
    table = _normalized_values(tuple(mean), tuple(std))
    chw = np.ascontiguousarray(image.transpose(2, 0, 1))
    return torch.from_numpy(np.take_along_axis(table, chw.reshape(3, -1), axis=1).reshape(chw.shape))


@functools.lru_cache(maxsize=8)
def _normalized_values(mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """[3, 256] float32: what every uint8 value of each channel becomes, by the arithmetic used before."""
    x = torch.arange(256, dtype=torch.float32).repeat(3, 1).div_(255.0)
    m = torch.tensor(mean, dtype=torch.float32).view(3, 1)
    s = torch.tensor(std, dtype=torch.float32).view(3, 1)
    return ((x - m) / s).numpy()


_reported: set[str] = set()


def load_image(path: Path, img_size: int) -> np.ndarray | None:
    """The runtime's preprocessing; None (logged once per process, with why) when the file is not a usable
    image: unreadable, or over the runtime's pixel cap."""
    try:
        return preprocess(path, (img_size, img_size), resize_mode=RESIZE_MODE, resize_filter=RESIZE_FILTER)
    except ImageError as exc:
        say_skipped(path, exc)
        return None


def say_skipped(path: Path, exc: ImageError) -> None:
    """One warning per file and process, with why; export's too (it had called a large photo unreadable)."""
    if str(path) not in _reported:
        _reported.add(str(path))
        if exc.code == "image_too_large":  # a fine photo, only bigger than the runtime would take
            log.warning("skipping image %s: too large (%s)", path, exc.message)
        else:
            log.warning("skipping unreadable image %s (%s: %s)", path, exc.code, exc.message)


class EvalDataset(torch.utils.data.Dataset):
    """(tensor, label) per sample; an unreadable file yields a zero tensor and label -1 (skipped, counted)."""

    def __init__(
        self, samples: Sequence[Sample], img_size: int, mean: Sequence[float], std: Sequence[float]
    ) -> None:
        self.samples = list(samples)
        self.img_size = img_size
        self.mean = tuple(mean)
        self.std = tuple(std)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        image = load_image(path, self.img_size)
        if image is None:
            return torch.zeros(3, self.img_size, self.img_size), -1
        return to_tensor(image, self.mean, self.std), label


class TrainDataset(torch.utils.data.Dataset):
    """Keys come from WeightedSampler as (epoch, draw, index); the augmentation is seeded from them, so a
    resumed run and any number of loader workers see the same pixels. Yields (tensor, label, index)."""

    def __init__(
        self,
        samples: Sequence[Sample],
        img_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        transform: Callable[..., dict] | None = None,
        seed: int = 0,
    ) -> None:
        self.samples = list(samples)
        self.img_size = img_size
        self.mean = tuple(mean)
        self.std = tuple(std)
        self.transform = transform
        self.seed = seed

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: tuple[int, int, int]) -> tuple[torch.Tensor, int, int]:
        epoch, draw, index = key
        path, label = self.samples[index]
        image = load_image(path, self.img_size)
        if image is None:
            return torch.zeros(3, self.img_size, self.img_size), -1, index
        if self.transform is not None:
            state = int(np.random.SeedSequence([self.seed, epoch, draw]).generate_state(1)[0])
            # One stream that the transforms draw from in turn: set_random_seed gives each its own generator
            # seeded alike, so all drew the same numbers (both flips and the affine always came together).
            self.transform.set_random_state(  # type: ignore[attr-defined]
                np.random.default_rng(state), random.Random(state)
            )
            image = self.transform(image=image)["image"]
        return to_tensor(image, self.mean, self.std), label, index


def balanced_weights(labels: Sequence[int], num_classes: int) -> list[float]:
    """Per-sample weight 1/count(class): every class is drawn equally often on average."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes)
    return [1.0 / counts[y] for y in labels]


class WeightedSampler(torch.utils.data.Sampler):
    """Distributed-aware sampler: every epoch draws one global sequence from a generator seeded with
    (seed, epoch) — weighted with replacement, or a plain permutation when ``weights`` is None — and each rank
    takes every world-th draw. Its whole state is (seed, epoch), so resuming needs nothing else.
    Yields (epoch, draw, index) keys for TrainDataset."""

    def __init__(
        self,
        num_items: int,
        weights: Sequence[float] | None = None,
        *,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
    ) -> None:
        if num_items < 1:
            raise ValueError("nothing to sample")
        self.num_items = num_items
        self.weights = torch.as_tensor(weights, dtype=torch.double) if weights is not None else None
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.epoch = 0
        self.per_rank = math.ceil(num_items / world_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def draws(self) -> list[int]:
        """The global sequence of this epoch (all ranks), padded to a multiple of the world size."""
        total = self.per_rank * self.world_size
        state = int(np.random.SeedSequence([self.seed, self.epoch]).generate_state(1)[0])
        g = torch.Generator().manual_seed(state)
        if self.weights is not None:
            return torch.multinomial(self.weights, total, replacement=True, generator=g).tolist()
        order = torch.randperm(self.num_items, generator=g).tolist()
        return (order * math.ceil(total / self.num_items))[:total]

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        draws = self.draws()
        for k in range(self.rank, len(draws), self.world_size):
            yield (self.epoch, k, draws[k])

    def __len__(self) -> int:
        return self.per_rank
