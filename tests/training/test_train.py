"""End-to-end runs of train() on generated data with timm's tiny test_efficientnet (CPU, seconds)."""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from runtime.bundle import fingerprint_files
from tests.training.helpers import CLASSES, TINY, file_size_limit, truncated_jpeg
from training import data, loop
from training.cli import main
from training.config import ConfigError
from training.data import load_splits
from training.loop import (
    METRIC_COLUMNS,
    RUN_FILES,
    eval_loader,
    evaluate,
    read_metrics,
    resolve_options,
    train,
)
from training.model import ModelError, load_checkpoint, model_from_checkpoint
from training.report import epoch_metrics

EPOCHS = 8


def _argv(data: Path, out: Path, *more: str) -> list[str]:
    """skin-train's arguments for a tiny CPU run (as TINY, through the command line)."""
    argv = ["--data", str(data), "--out", str(out), "--arch", "test_efficientnet", "--img-size", "64"]
    return [*argv, "--workers", "0", "--no-pretrained", "--device", "cpu", "--no-plots", *more]


@pytest.fixture(scope="module")
def bad_data(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The generated dataset plus a truncated JPEG in the training split and a non-image in test/."""
    root = tmp_path_factory.mktemp("bad") / "data"
    shutil.copytree(dataset, root)
    (root / "test" / "Eczema" / "broken.png").write_bytes(b"not an image at all")
    for k in range(16):  # a file name (sorted position) whose seeded split puts it in train
        bad = root / "train" / "Acne" / f"{k:04d}-broken.jpg"  # sorts among the others
        truncated_jpeg(root / "train" / "Acne" / "0001.jpg", bad)
        if any(p.name == bad.name for p, _ in load_splits(root, val_fraction=0.2, seed=42).train):
            return root
        bad.unlink()
    raise AssertionError("no file name lands in the training split")


@pytest.fixture(scope="module")
def run(bad_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    # shuffle + 40 training images in batches of 8: every training image is seen every epoch.
    options = {**TINY, "plots": True, "sampler": "shuffle", "val_fraction": 0.2, "model_version": "test-1"}
    return train(
        **options, data=str(bad_data), out=str(tmp_path_factory.mktemp("run") / "run"), epochs=EPOCHS
    )


def test_learns_well_above_chance(run: Path) -> None:
    best = load_checkpoint(run / "best.pt")
    rows = read_metrics(run / "metrics.csv")
    f1 = [r["val_f1"] for r in rows]
    assert best["epoch"] == 1 + f1.index(max(f1))
    assert best["metrics"]["accuracy"] >= 0.75  # chance: 1/3
    assert json.loads((run / "report.json").read_text())["accuracy"] >= 0.7


def test_run_directory(run: Path) -> None:
    names = {p.name for p in run.iterdir()}
    expected = {"best.pt", "last.pt", "config.yaml", "metrics.csv", "report.json", "curves.png"}
    assert expected | {"confusion_matrix.png", "mistakes_confidence.png"} <= names
    assert names <= set(RUN_FILES)
    for png in run.glob("*.png"):
        with Image.open(png) as img:
            assert img.format == "PNG" and img.width > 200
    rows = read_metrics(run / "metrics.csv")
    assert [r["epoch"] for r in rows] == list(range(1, EPOCHS + 1))
    assert tuple(rows[0]) == METRIC_COLUMNS
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config == load_checkpoint(run / "last.pt")["config"]
    assert config["epochs"] == EPOCHS and config["seed"] == 42 and config["out"] == str(run)
    # The written configuration repeats the run: fed back as --config it resolves to the same options, but
    # for the version (the new run is another model: it gets its own).
    again, _ = resolve_options({"config": str(run / "config.yaml")})
    own = ("config", "model_version")
    assert {k: v for k, v in again.as_dict().items() if k not in own} == {
        k: v for k, v in config.items() if k not in own
    }
    assert config["model_version"] == "test-1" and again.model_version not in ("", "test-1")


def test_checkpoints_describe_themselves(run: Path, bad_data: Path) -> None:
    for name in ("best.pt", "last.pt"):
        ckpt = torch.load(run / name, map_location="cpu", weights_only=True)
        assert ckpt["format"] == "skin-checkpoint/1"
        assert ckpt["arch"] == "test_efficientnet" and ckpt["img_size"] == 64
        assert ckpt["class_names"] == CLASSES and ckpt["display_names"] == ["Acne", "Eczema", "Moles"]
        assert ckpt["mean"] == [0.485, 0.456, 0.406] and ckpt["std"] == [0.229, 0.224, 0.225]
        assert (ckpt["resize"], ckpt["resize_filter"]) == ("stretch", "bilinear")
        config = ckpt["config"]
        assert config["data"] == str(bad_data.resolve())
        assert (config["seed"], config["val_fraction"]) == (42, 0.2)
        files = [p for p in bad_data.rglob("*") if p.suffix in (".jpg", ".jpeg", ".png")]
        assert ckpt["data_fingerprint"] == fingerprint_files(bad_data.resolve(), files)
        assert ckpt["model_name"] == "skin-test_efficientnet" and ckpt["model_version"] == "test-1"
        assert ckpt["trained_on"] == f"ImageFolder dataset {bad_data.name}"
        assert ckpt["demo"] is False
        assert set(ckpt["metrics"]) == {"loss", "accuracy", "precision", "recall", "f1"}
    last = torch.load(run / "last.pt", map_location="cpu", weights_only=True)
    assert last["epoch"] == EPOCHS and last["sampler"] == {"seed": 42, "epoch": EPOCHS}
    assert {"optimizer", "scheduler", "state"} <= set(last)


def test_checkpoint_rebuilds_its_validation_split(run: Path) -> None:
    """What export relies on: the checkpoint config gives back the split and the metrics it was chosen by."""
    ckpt = load_checkpoint(run / "best.pt")
    config = ckpt["config"]
    splits = load_splits(config["data"], val_fraction=config["val_fraction"], seed=config["seed"])
    model = model_from_checkpoint(ckpt)
    ev = evaluate(model, eval_loader(splits.val, ckpt["img_size"], batch_size=16), "cpu")
    again = epoch_metrics(ev.logits, ev.labels)
    assert again["accuracy"] == ckpt["metrics"]["accuracy"]
    assert again["loss"] == pytest.approx(ckpt["metrics"]["loss"], rel=1e-4)
    assert np.allclose(ev.probs.sum(axis=1), 1.0, atol=1e-5)


def test_report_and_unreadable_images(run: Path) -> None:
    report = json.loads((run / "report.json").read_text())
    assert report["split"] == "test" and report["class_names"] == CLASSES
    for name in CLASSES + ["macro avg", "weighted avg"]:
        assert set(report[name]) == {"precision", "recall", "f1-score", "support"}
    assert 0.0 <= report["accuracy"] <= 1.0
    matrix = np.array(report["confusion_matrix"])
    assert matrix.shape == (3, 3) and matrix.sum() == 18  # 19 test files, one unreadable
    assert report["Eczema"]["support"] == 6
    assert report["top3_accuracy"] == 1.0  # three classes
    assert report["skipped_images"] == 1
    assert report["skipped_by_split"] == {"train": 1, "val": 0, "test": 1}
    assert {r["train_skipped"] for r in read_metrics(run / "metrics.csv")} == {1}


def test_a_resumed_run_names_the_unreadable_images_found_before_it_was_resumed(
    tmp_path: Path, dataset: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "data"
    shutil.copytree(dataset, root)
    for name in ("zz-broken.jpg", "zy-broken.jpg", "zx-broken.jpg"):  # sorted last; some land in training
        truncated_jpeg(root / "train" / "Acne" / "0001.jpg", root / "train" / "Acne" / name)
    bad = [p for p, _ in load_splits(root, val_fraction=0.2).train if p.name.endswith("-broken.jpg")]
    assert len(bad) >= 2
    options = {**TINY, "sampler": "shuffle", "val_fraction": 0.2}  # every training image read each epoch
    run = train(**options, data=str(root), out=str(tmp_path / "run"), epochs=1)
    assert load_checkpoint(run / "last.pt")["state"]["bad_train"]
    repaired, *still_bad = bad
    shutil.copyfile(root / "train" / "Acne" / "0001.jpg", repaired)  # fixed in place: the split stays
    monkeypatch.setattr(data, "_reported", set())  # a new process: nothing named yet
    caplog.clear()
    train(resume=str(run))  # finished: only the report, which says their paths are in the warnings above
    named = {r.getMessage() for r in caplog.records if r.getMessage().startswith("skipping")}
    # The reason too, not only its code: what to look for in the file.
    assert named == {f"skipping unreadable image {p} (corrupt_image: {_why(p)})" for p in still_bad}
    report = json.loads((run / "report.json").read_text())
    assert report["skipped_by_split"]["train"] == len(still_bad)


def test_an_image_whose_file_name_is_not_utf8_trains(tmp_path: Path, dataset: Path) -> None:
    root = tmp_path / "data"
    shutil.copytree(dataset, root)
    image = sorted((root / "train" / "Acne").iterdir())[0]
    odd = image.with_name(os.fsdecode(b"caf\xe9") + image.suffix)  # as unzip writes a Latin-1 archive's names
    shutil.copy(image, odd)
    run = train(**TINY, data=str(root), out=str(tmp_path / "run"), epochs=1)
    files = load_splits(root).files()
    assert odd in files
    assert load_checkpoint(run / "last.pt")["data_fingerprint"] == fingerprint_files(root.resolve(), files)


def test_the_test_report_is_computed_in_fp32_whatever_amp_says(
    tmp_path: Path, dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Validation may run under autocast, but report.json describes the model export ships: fp32."""
    seen: list[torch.dtype | None] = []
    real = loop.evaluate

    def evaluate(*args: Any, amp_dtype: torch.dtype | None = None, **kwargs: Any) -> Any:
        seen.append(amp_dtype)
        return real(*args, amp_dtype=amp_dtype, **kwargs)

    monkeypatch.setattr(loop, "evaluate", evaluate)
    train(**{**TINY, "amp": "bf16"}, data=str(dataset), out=str(tmp_path / "run"), epochs=1)
    assert seen == [torch.bfloat16, None]  # the epoch's validation, then the test report


def test_existing_run_is_not_overwritten(run: Path, bad_data: Path) -> None:
    with pytest.raises(ConfigError, match="already holds a run"):
        train(**TINY, data=str(bad_data), out=str(run), epochs=1)


def test_the_existing_runs_resume_flag_is_quoted_for_the_shell(tmp_path: Path, dataset: Path) -> None:
    out = tmp_path / "my run"
    out.mkdir()
    (out / "last.pt").write_bytes(b"")
    with pytest.raises(ConfigError, match=re.escape(f"pass --resume '{out}' or --overwrite")):
        train(**TINY, data=str(dataset), out=str(out), epochs=1)


def test_a_config_yaml_nested_too_deeply_is_not_a_runs_own(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("[" * 5000 + "]" * 5000)  # PyYAML recurses: not a traceback
    assert loop._config_for(tmp_path) is False


@pytest.mark.timeout(60)  # without the check, reading a FIFO waits for a writer forever
def test_a_config_yaml_that_is_a_fifo_is_not_a_runs_own_and_not_read(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "config.yaml")
    assert loop._config_for(tmp_path) is False


@pytest.mark.parametrize("out", ["train/Acne/run", "test"])
def test_a_run_inside_the_datasets_splits_is_refused(tmp_path: Path, dataset: Path, out: str) -> None:
    # Its plots there would be read as images of a class (and its own folder as a class) by the next run.
    data = tmp_path / "data"
    shutil.copytree(dataset, data)
    before = sorted(data.rglob("*"))
    with pytest.raises(ConfigError, match=f"is inside the dataset's {out.split('/')[0]}/ folder"):
        train(**TINY, data=str(data), out=str(data / out), epochs=1)
    assert sorted(data.rglob("*")) == before


def test_a_run_inside_a_split_that_links_elsewhere_is_refused(tmp_path: Path, dataset: Path) -> None:
    data, images = tmp_path / "data", tmp_path / "images"
    shutil.copytree(dataset / "train", images)
    data.mkdir()
    (data / "train").symlink_to(images)  # train/ kept on another disk
    shutil.copytree(dataset / "test", data / "test")
    with pytest.raises(ConfigError, match="is inside the dataset's train/ folder"):
        train(**TINY, data=str(data), out=str(images / "Acne" / "run"), epochs=1)
    assert not (images / "Acne" / "run").exists()


@pytest.mark.parametrize("held", ["report.json", "config.yaml"])
def test_a_folder_with_run_files_but_no_run_is_not_written_into(
    tmp_path: Path, dataset: Path, held: str
) -> None:
    # e.g. a bundle (model.onnx + report.json), or a hand-written config.yaml: nothing of it is replaced
    out = tmp_path / "bundle"
    out.mkdir()
    (out / held).write_text("mine")
    with pytest.raises(ConfigError, match=f"already holds {held}; pass --overwrite"):
        train(**TINY, data=str(dataset), out=str(out), epochs=1)
    assert [p.name for p in out.iterdir()] == [held] and (out / held).read_text() == "mine"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        pytest.param("config", [1, 2], id="config-a-list"),
        pytest.param("config", {"epochs": "abc"}, id="config-value-typed"),
        pytest.param("state", {"nonsense": 1}, id="state-keys"),
        pytest.param("state.epoch", "1", id="epoch-a-string"),
        pytest.param("state.epoch", -5, id="epoch-negative"),
        pytest.param("state.best_f1", "x", id="best-f1-a-string"),
        pytest.param("state.best_f1", float("nan"), id="best-f1-nan"),
        pytest.param("state.stale", None, id="stale-none"),
        pytest.param("state.history", 5, id="history-a-number"),
        pytest.param("state.bad_train", ["a"], id="bad-train-strings"),
        pytest.param("optimizer", {}, id="optimizer-empty"),
        pytest.param("model", {}, id="model-empty"),
    ],
)
def test_resume_from_an_edited_last_pt_is_one_line(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], field: str, value: object
) -> None:
    part = tmp_path / "run"
    shutil.copytree(run, part)
    ckpt = load_checkpoint(part / "last.pt")
    if field.startswith("state."):
        ckpt["state"][field.removeprefix("state.")] = value
    else:
        ckpt[field] = value
    torch.save(ckpt, part / "last.pt")
    assert main(["--resume", str(part)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("skin-train: error: ") and err.count("\n") == 1, err


def test_an_arch_with_a_fixed_input_size_needs_that_size(tmp_path: Path, dataset: Path) -> None:
    with pytest.raises(ConfigError, match="takes only 224x224 images: pass --img-size 224"):
        train(
            **{**TINY, "arch": "vit_tiny_patch16_224"}, data=str(dataset), out=str(tmp_path / "r"), epochs=1
        )
    assert not (tmp_path / "r").exists()


def test_an_img_size_too_small_for_the_arch_is_refused_before_any_epoch(
    tmp_path: Path, dataset: Path
) -> None:
    # ConvNeXt downsamples by 32: at 16 px its last stage's 2x2 convolution meets a 1x1 map.
    with pytest.raises(ModelError, match="--arch test_convnext cannot take --img-size 16 images"):
        train(
            **{**TINY, "arch": "test_convnext", "img_size": 16},
            data=str(dataset),
            out=str(tmp_path / "r"),
            epochs=1,
        )
    assert not (tmp_path / "r").exists()


def test_overwrite_replaces_only_the_run_files(tmp_path: Path, dataset: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    for name in ("last.pt", "best.pt", "mistakes_most_confident.png", "weights.pt", "notes.txt"):
        (out / name).write_bytes(b"from before")
    train(**TINY, data=str(dataset), out=str(out), epochs=1, overwrite=True)
    assert not (out / "mistakes_most_confident.png").exists()  # plots are off: an old one would mislead
    assert (out / "weights.pt").read_bytes() == (out / "notes.txt").read_bytes() == b"from before"
    assert load_checkpoint(out / "best.pt")["epoch"] == 1


def test_overwrite_keeps_the_old_run_until_the_new_one_has_an_epoch(
    tmp_path: Path, dataset: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    old = train(**TINY, data=str(dataset), out=str(tmp_path / "run"), epochs=1)
    before = {name: (old / name).read_bytes() for name in ("best.pt", "last.pt", "config.yaml")}

    def broken(*args: Any, **kwargs: Any) -> dict[str, Any]:
        raise KeyboardInterrupt  # stopped (or crashed) before the first epoch of the new run ended

    monkeypatch.setattr(loop, "train_epoch", broken)
    argv = _argv(dataset, old, "--epochs", "1", "--overwrite", "--seed", "7")
    assert main(argv) == 130
    assert {name: (old / name).read_bytes() for name in before} == before
    # Not "continue with --resume": the last.pt there is the earlier run's.
    assert capsys.readouterr().err == (
        f"skin-train: interrupted before the new run's first epoch ended; {old} still holds the earlier run "
        "(the same command starts the new one again)\n"
    )
    monkeypatch.undo()
    assert main(argv) == 0
    assert load_checkpoint(old / "last.pt")["config"]["seed"] == 7


@pytest.mark.parametrize("overwrite", [pytest.param(False, id="new"), pytest.param(True, id="overwrite")])
def test_a_stop_while_the_first_checkpoints_are_written_waits_for_last_pt(
    tmp_path: Path,
    dataset: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    overwrite: bool,
) -> None:
    out = tmp_path / "run"
    if overwrite:
        train(**TINY, data=str(dataset), out=str(out), epochs=1)
    real_save = loop.save_checkpoint

    def stopped_while_saving(path: Path, **kwargs: Any) -> None:
        # best.pt comes first: a stop here left it without last.pt (the same command then refused the folder),
        # and after an --overwrite had removed the earlier run's files, neither run.
        if path.name == "best.pt":
            os.kill(os.getpid(), signal.SIGTERM)  # docker stop
        real_save(path, **kwargs)

    monkeypatch.setattr(loop, "save_checkpoint", stopped_while_saving)
    argv = _argv(dataset, out, "--epochs", "2", "--seed", "7", *(["--overwrite"] if overwrite else []))
    assert main(argv) == 143
    assert capsys.readouterr().err == f"skin-train: stopped by SIGTERM; continue with --resume {out}\n"
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt["epoch"] == 1 and ckpt["config"]["seed"] == 7  # this run's first epoch, resumable


def test_a_second_stop_while_a_checkpoint_is_written_stops_at_once(
    tmp_path: Path, dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_save = loop.save_checkpoint

    def hangs(path: Path, **kwargs: Any) -> None:  # a write that never ends (a dead network disk)
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)
        real_save(path, **kwargs)
        raise AssertionError("the second SIGTERM did not stop the write")

    monkeypatch.setattr(loop, "save_checkpoint", hangs)
    assert main(_argv(dataset, tmp_path / "run", "--epochs", "1")) == 143
    assert not (tmp_path / "run" / "best.pt").exists()


def test_a_run_stopped_in_its_first_epoch_can_be_started_again(
    tmp_path: Path, dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # It leaves only its config.yaml, which is this folder's own: the same command trains, no --overwrite.
    out = tmp_path / "run"

    def broken(*args: Any, **kwargs: Any) -> dict[str, Any]:
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(loop, "train_epoch", broken)
        with pytest.raises(KeyboardInterrupt):
            train(**TINY, data=str(dataset), out=str(out), epochs=1)
    assert [p.name for p in out.iterdir()] == ["config.yaml"]
    train(**TINY, data=str(dataset), out=str(out), epochs=1)
    assert load_checkpoint(out / "best.pt")["epoch"] == 1


def test_resume_continues_in_the_run_folder_wherever_it_moved(tmp_path: Path, dataset: Path) -> None:
    first = train(**TINY, data=str(dataset), out=str(tmp_path / "first"), epochs=1)
    moved = tmp_path / "moved"
    first.rename(moved)
    assert train(resume=str(moved), epochs=2) == moved
    assert not first.exists() and load_checkpoint(moved / "last.pt")["epoch"] == 2
    assert yaml.safe_load((moved / "config.yaml").read_text())["out"] == str(moved)
    # Into another run's folder: refused, that run untouched.
    other = train(**TINY, data=str(dataset), out=str(tmp_path / "other"), epochs=1, seed=7)
    kept = (other / "last.pt").read_bytes()
    with pytest.raises(ConfigError, match="continues in its own folder"):
        train(resume=str(moved), out=str(other), epochs=3)
    with pytest.raises(ConfigError, match="used --scheduler plateau, not cosine"):
        train(resume=str(moved), epochs=3, scheduler="cosine")
    assert (other / "last.pt").read_bytes() == kept


def test_a_resume_after_images_were_removed_from_train_is_refused_one_repaired_in_place_is_not(
    tmp_path: Path, dataset: Path
) -> None:
    data = tmp_path / "data"
    shutil.copytree(dataset, data)
    run = train(**TINY, data=str(data), out=str(tmp_path / "run"), epochs=1)
    # A class's validation images are drawn from its file list: one file fewer reshuffles them, and images
    # trained on would be validated on (best.pt, and export's temperature and thresholds, chosen on them).
    removed = data / "train" / "Acne" / "0003.png"
    saved = removed.read_bytes()
    removed.unlink()
    kept = (run / "last.pt").read_bytes()
    with pytest.raises(ConfigError, match="images were added to or removed from the train folder"):
        train(resume=str(run), epochs=2)
    assert (run / "last.pt").read_bytes() == kept
    # Put back, or repaired in place (another size, the same name): the split is the same, resume goes on.
    removed.write_bytes(saved + b"\0")
    train(resume=str(run), epochs=2)
    assert load_checkpoint(run / "last.pt")["epoch"] == 2


def test_a_resume_whose_validation_split_is_carved_otherwise_is_refused(
    tmp_path: Path, dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The same file names, another carve (another numpy's permutation, files linked to one another since):
    # validation would hold images the run trained on, which train_fingerprint, names only, let through.
    run = train(**TINY, data=str(dataset), out=str(tmp_path / "run"), epochs=1)
    real = data.split_class
    monkeypatch.setattr(data, "split_class", lambda files, f, seed, *more: real(files, f, seed + 1, *more))
    kept = (run / "last.pt").read_bytes()
    with pytest.raises(ConfigError, match="validation split carved from .* now differs from the run's"):
        train(resume=str(run), epochs=2)
    assert (run / "last.pt").read_bytes() == kept


def test_a_resume_hashes_the_split_names_once(
    tmp_path: Path, dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # It compared both name fingerprints, then hashed them again for its checkpoint: ~0.6 s of every resume
    # on the real dataset's 13,898 training images.
    run = train(**TINY, data=str(dataset), out=str(tmp_path / "run"), epochs=1)
    hashed: list[int] = []
    real = data.Splits._names
    monkeypatch.setattr(
        data.Splits, "_names", lambda self, samples: hashed.append(len(samples)) or real(self, samples)
    )
    train(resume=str(run), epochs=2)
    splits = load_splits(dataset)
    assert sorted(hashed) == sorted([len(splits.val), len(splits.train) + len(splits.val)])
    assert load_checkpoint(run / "last.pt")["train_fingerprint"] == splits.train_fingerprint()


def test_a_resume_after_a_class_folder_was_renamed_says_which(tmp_path: Path, dataset: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(dataset, data)
    run = train(**TINY, data=str(data), out=str(tmp_path / "run"), epochs=1)
    for split in ("train", "test"):
        (data / split / "Moles").rename(data / split / "Naevi")
    message = f"cannot resume: the class folders of {data} are not the run's (new: Naevi; gone: Moles); a run"
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}"):
        train(resume=str(run), epochs=2)


@pytest.fixture(scope="module")
def one_epoch(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train(**TINY, data=str(dataset), out=str(tmp_path_factory.mktemp("one") / "run"), epochs=1)


@pytest.mark.parametrize(
    ("option", "value"),
    [
        pytest.param("lr", 1e-5, id="lr"),
        pytest.param("backbone_lr_scale", 0.1, id="backbone-lr-scale"),
        pytest.param("weight_decay", 0.0, id="weight-decay"),
        pytest.param("plateau_patience", 7, id="plateau-patience"),
        pytest.param("seed", 7, id="seed-picks-the-validation-split"),
    ],
)
def test_a_resumed_run_refuses_options_its_saved_state_keeps(
    one_epoch: Path, option: str, value: object
) -> None:
    # The optimizer's and the scheduler's saved state would win: config.yaml would name a value never used.
    kept = (one_epoch / "last.pt").read_bytes()
    flag = "--" + option.replace("_", "-")
    with pytest.raises(ConfigError, match=f"cannot resume with {flag} {value}: the run has "):
        train(resume=str(one_epoch), epochs=2, **{option: value})
    assert (one_epoch / "last.pt").read_bytes() == kept


@pytest.mark.slow  # a fresh interpreter: pytest's log capture would take the line from stderr
def test_a_resume_with_no_epoch_left_says_it_rebuilds_only_the_report(
    tmp_path: Path, one_epoch: Path
) -> None:
    run = tmp_path / "run"
    shutil.copytree(one_epoch, run)
    kept = (run / "last.pt").read_bytes()
    command = [sys.executable, "-m", "training", "--resume", str(run), "--epochs", "1"]
    done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=300)
    assert done.returncode == 0
    assert done.stderr == (
        "nothing left to train: the run has trained 1 epoch and --epochs is 1; only the test report is "
        "rebuilt, from best.pt (a larger --epochs trains on)\n"
    )
    assert (run / "last.pt").read_bytes() == kept and (run / "report.json").is_file()


def test_a_resume_with_no_epoch_left_keeps_the_runs_config(tmp_path: Path, dataset: Path) -> None:
    run = train(**TINY, data=str(dataset), out=str(tmp_path / "run"), epochs=2)
    config = (run / "config.yaml").read_bytes()
    train(**TINY, data=str(dataset), resume=str(run), epochs=1)  # nothing to train: only the report
    assert (run / "config.yaml").read_bytes() == config  # still epochs: 2, what the run trained
    assert yaml.safe_load(config)["epochs"] == 2


def test_a_resumed_run_takes_the_same_options_given_again(tmp_path: Path, dataset: Path) -> None:
    run = train(**TINY, data=str(dataset), out=str(tmp_path / "run"), epochs=1)
    train(**TINY, data=str(dataset), resume=str(run), epochs=2)  # the first command again, plus --resume
    assert load_checkpoint(run / "last.pt")["epoch"] == 2


def test_a_resumed_runs_config_names_its_checkpoint_wherever_it_was_started(
    tmp_path: Path, dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    train(**TINY, data=str(dataset), out="first", epochs=1)
    run = train(resume="first", epochs=2)  # relative to this folder, as typed
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["resume"] == str(tmp_path.resolve() / "first" / "last.pt")


def test_extending_a_cosine_run_follows_the_longer_curve(tmp_path: Path, dataset: Path) -> None:
    """What README promises for --resume with more --epochs: the cosine as if planned that long."""
    options = {**TINY, "data": str(dataset), "scheduler": "cosine", "warmup_epochs": 0}
    planned = train(**options, out=str(tmp_path / "planned"), epochs=3)
    extended = train(**options, out=str(tmp_path / "extended"), epochs=2)
    floor = load_checkpoint(extended / "last.pt")["optimizer"]["param_groups"][1]["lr"]
    train(resume=str(extended), epochs=3)
    want, got = read_metrics(planned / "metrics.csv"), read_metrics(extended / "metrics.csv")
    assert want[0]["lr"] == pytest.approx(TINY["lr"])  # lr: the rate the epoch trained at (first step)
    assert got[2]["lr"] == pytest.approx(want[2]["lr"])
    assert got[2]["lr"] > 100 * floor  # the finished run ended at min_lr; the longer curve is far above it


def test_a_cosine_run_resumed_with_other_steps_per_epoch_keeps_its_place_on_the_curve(
    tmp_path: Path, dataset: Path
) -> None:
    # Half the batch (as on half the GPUs): twice the steps per epoch, the same epochs on the curve.
    options = {**TINY, "data": str(dataset), "scheduler": "cosine", "warmup_epochs": 0}
    planned = train(**options, out=str(tmp_path / "planned"), epochs=3)
    part = train(**options, out=str(tmp_path / "part"), epochs=1)
    train(resume=str(part), epochs=3, batch_size=TINY["batch_size"] // 2)
    want, got = read_metrics(planned / "metrics.csv"), read_metrics(part / "metrics.csv")
    assert [r["lr"] for r in got] == pytest.approx([r["lr"] for r in want])


@pytest.mark.parametrize(
    ("signum", "status"),
    [
        pytest.param(signal.SIGTERM, 143, id="sigterm"),
        # the terminal closed: it ended the run with no line at all
        pytest.param(signal.SIGHUP, 129, id="sighup"),
    ],
)
@pytest.mark.usefixtures("sighup_heard")
def test_sigterm_stops_a_run_as_ctrl_c_does(
    tmp_path: Path,
    dataset: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    signum: signal.Signals,
    status: int,
) -> None:
    real = loop.train_epoch
    started = 0

    def terminated_in_the_second(*args: Any, **kwargs: Any) -> dict[str, Any]:
        nonlocal started
        started += 1
        if started == 2:
            # Without a handler the signal would end pytest itself: check there is one, then send a real one.
            assert signal.getsignal(signum) not in (signal.SIG_DFL, signal.SIG_IGN, None)
            os.kill(os.getpid(), signum)
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "train_epoch", terminated_in_the_second)
    before = signal.getsignal(signum)
    out = tmp_path / "run"
    assert main(_argv(dataset, out, "--epochs", "3")) == status
    assert capsys.readouterr().err == f"skin-train: stopped by {signum.name}; continue with --resume {out}\n"
    assert signal.getsignal(signum) is before
    assert load_checkpoint(out / "last.pt")["epoch"] == 1


def test_a_sighup_that_nohup_ignores_leaves_the_run_going(
    tmp_path: Path, dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = loop.train_epoch

    def hung_up(*args: Any, **kwargs: Any) -> dict[str, Any]:
        os.kill(os.getpid(), signal.SIGHUP)
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "train_epoch", hung_up)
    before = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        assert main(_argv(dataset, tmp_path / "run", "--epochs", "2")) == 0
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, before)


@pytest.mark.slow  # a fresh interpreter importing torch and timm: ~7 s here
@pytest.mark.parametrize(
    "workers",
    [
        pytest.param("0", id="to-the-process"),
        # torchrun and a terminal's kill signal the whole process group: the DataLoader workers too
        pytest.param("2", id="to-the-group-with-workers"),
    ],
)
def test_sigterm_to_a_training_process_is_one_line(tmp_path: Path, dataset: Path, workers: str) -> None:
    """docker stop / kubernetes: SIGTERM to the process, no traceback, the run resumable."""
    out = tmp_path / "run"
    argv = [*_argv(dataset, out, "--epochs", "100"), "--workers", workers]  # the last --workers counts
    command = [sys.executable, "-m", "training", *argv]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 60
        while not (out / "last.pt").exists():
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(0.5)  # into the next epoch: the workers are fetching
        if workers == "0":
            process.send_signal(signal.SIGTERM)
        else:
            os.killpg(process.pid, signal.SIGTERM)
        _, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert err == f"skin-train: stopped by SIGTERM; continue with --resume {out}\n"
    assert process.returncode == 143
    assert load_checkpoint(out / "last.pt")["epoch"] >= 1


def test_interrupt_says_whether_there_is_anything_to_resume(
    tmp_path: Path, dataset: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def stop(*args: Any, **kwargs: Any) -> dict[str, Any]:
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "train_epoch", stop)
    argv = ["--data", str(dataset), "--out", str(tmp_path / "run"), "--arch", "test_efficientnet"]
    argv += ["--img-size", "64", "--workers", "0", "--no-pretrained", "--device", "cpu", "--no-plots"]
    assert main(argv) == 130
    assert capsys.readouterr().err == "skin-train: interrupted before the first epoch ended\n"


@pytest.mark.slow  # a fresh interpreter
@pytest.mark.parametrize(
    ("signum", "line", "status"),
    [
        pytest.param(signal.SIGINT, "interrupted", 130, id="ctrl-c"),
        pytest.param(signal.SIGTERM, "stopped by SIGTERM", 143, id="sigterm"),
    ],
)
def test_a_stop_while_skin_train_imports_torch_is_one_line(
    tmp_path: Path, dataset: Path, signum: int, line: str, status: int
) -> None:
    command = [sys.executable, "-m", "training", *_argv(dataset, tmp_path / "run")]
    process = subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        # As from a terminal: a shell starts background jobs (CI's, nohup's) with SIGINT ignored, and Python
        # then leaves it ignored.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.monotonic() + 60
        # Torch's libraries mapped: its import (seconds) has begun, well before train() runs.
        while "torch" not in Path(f"/proc/{process.pid}/maps").read_text():
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.01)
        process.send_signal(signum)
        _, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert err == f"skin-train: {line} before training started\n"
    assert process.returncode == status


@pytest.mark.parametrize("rank", ["0", "1"])
def test_under_torchrun_only_rank_0_says_what_was_wrong(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], rank: str
) -> None:
    monkeypatch.setenv("RANK", rank)  # every rank meets the same bad option: one line in all
    assert main(["--data", str(tmp_path / "missing"), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("skin-train: error: ") if rank == "0" else err == ""


@pytest.mark.parametrize("rank", ["0", "1"])
def test_under_torchrun_only_rank_0_says_an_os_error_every_rank_meets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], rank: str
) -> None:
    monkeypatch.setenv("RANK", rank)  # every rank checks the same --data: one line in all
    data = tmp_path / ("x" * 300)  # a name too long for the file system: OSError, not "missing"
    assert main(["--data", str(data), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err == (f"skin-train: error: File name too long: {data}\n" if rank == "0" else "")


@pytest.mark.parametrize("rank", ["0", "1"])
def test_under_torchrun_an_os_error_of_a_rank_own_file_is_said_by_that_rank(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], rank: str
) -> None:
    # Not a path of the command line: it may fail on one node alone (an image missing from its disk), and a
    # rank that kept quiet would leave only its peers' "connection closed" to go by.
    monkeypatch.setenv("RANK", rank)
    image = tmp_path / "data" / "train" / "Acne" / "a.jpg"

    def fails(**_: object) -> None:
        raise OSError(5, "Input/output error", str(image))

    monkeypatch.setattr(loop, "train", fails)
    assert main(["--data", str(tmp_path / "data"), "--out", str(tmp_path / "r")]) == 2
    where = "" if rank == "0" else " (rank 1)"
    assert capsys.readouterr().err == f"skin-train: error{where}: Input/output error: {image}\n"


@pytest.mark.parametrize(
    ("rank", "err"), [("0", "skin-train: interrupted before training started\n"), ("1", "")]
)
def test_under_torchrun_only_rank_0_says_it_stopped(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], rank: str, err: str
) -> None:
    def stop(**kwargs: Any) -> None:
        raise KeyboardInterrupt  # Ctrl-C reaches every rank torchrun started

    monkeypatch.setattr(loop, "train", stop)
    monkeypatch.setenv("RANK", rank)
    assert main(["--data", "unused"]) == 130
    assert capsys.readouterr().err == err


def test_unwritable_out_is_one_line(
    tmp_path: Path, dataset: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "file").write_text("not a folder")
    argv = ["--data", str(dataset), "--arch", "test_efficientnet", "--img-size", "64", "--device", "cpu"]
    argv += ["--no-pretrained", "--workers", "0"]
    assert main([*argv, "--out", str(tmp_path / "file")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    assert main([*argv, "--out", str(tmp_path / "file" / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("skin-train: error: ") and err.count("\n") == 1


def test_a_full_disk_when_the_run_starts_leaves_no_file_that_refuses_the_same_command_again(
    tmp_path: Path, dataset: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    argv = _argv(dataset, out, "--epochs", "1")
    with file_size_limit(200):
        assert main(argv) == 2
    assert capsys.readouterr().err == f"skin-train: error: File too large: {out / 'config.yaml'}\n"
    assert sorted(p.name for p in out.iterdir()) == []  # not an empty config.yaml "held" by another run
    assert main(argv) == 0  # space freed: the same command


def test_a_full_disk_at_the_first_last_pt_leaves_no_best_pt_that_refuses_the_same_command_again(
    tmp_path: Path, dataset: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    argv = _argv(dataset, out, "--epochs", "1")
    with file_size_limit(800_000):  # best.pt (the weights, ~0.4 MB) fits; last.pt (and the optimizer) not
        assert main(argv) == 2
    assert capsys.readouterr().err == f"skin-train: error: File too large: {out / 'last.pt'}\n"
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml"]  # not "already holds best.pt"
    assert main(argv) == 0  # space freed: the same command
    assert load_checkpoint(out / "best.pt")["epoch"] == 1


def test_a_full_disk_at_the_last_epochs_metrics_leaves_them_to_the_resume_that_rebuilds_the_report(
    tmp_path: Path, dataset: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"

    def full(path: Path, history: list[dict[str, float]]) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    with monkeypatch.context() as patch:
        patch.setattr(loop, "write_metrics", full)  # last.pt was written: the epoch is kept
        assert main(_argv(dataset, out, "--epochs", "1")) == 2
    then = f"the epochs saved before are kept: continue with --resume {out} once there is room"
    assert (
        capsys.readouterr().err
        == f"skin-train: error: No space left on device: {out / 'metrics.csv'}; {then}\n"
    )
    assert not (out / "metrics.csv").exists()
    assert main(["--resume", str(out)]) == 0  # space freed: nothing left to train, the report is rebuilt
    assert [row["epoch"] for row in read_metrics(out / "metrics.csv")] == [1]


@pytest.mark.parametrize(
    ("error", "then"),
    [
        pytest.param(errno.ENOSPC, "once there is room", id="disk-full"),
        pytest.param(errno.EROFS, "once it can be written", id="turned-read-only"),
    ],
)
def test_a_later_epoch_that_cannot_be_saved_says_the_earlier_one_is_kept_and_how_to_go_on(
    tmp_path: Path,
    dataset: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    error: int,
    then: str,
) -> None:
    # The line named only the file ("No space left on device: run/last.pt"): whether epoch 1 survived, and
    # that --resume goes on from it (the same command is refused: "already holds a run"), went unsaid.
    out = tmp_path / "run"
    real_save = loop.save_checkpoint

    def full_at_epoch_2(path: Path, **kwargs: Any) -> None:
        if kwargs["meta"]["epoch"] == 2:
            raise OSError(error, os.strerror(error), str(path))
        real_save(path, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(loop, "save_checkpoint", full_at_epoch_2)
        assert main(_argv(dataset, out, "--epochs", "2")) == 2
    kept = f"the epochs saved before are kept: continue with --resume {out} {then}"
    file = f"{re.escape(str(out))}/(best|last)\\.pt"  # best.pt first when epoch 2 is better, else last.pt
    err = capsys.readouterr().err
    assert re.fullmatch(f"skin-train: error: {os.strerror(error)}: {file}; {re.escape(kept)}\n", err)
    assert load_checkpoint(out / "last.pt")["epoch"] == 1
    assert main(["--resume", str(out)]) == 0  # as the line says
    assert load_checkpoint(out / "last.pt")["epoch"] == 2


def test_an_overwrite_whose_checkpoints_would_not_fit_keeps_the_earlier_run(
    tmp_path: Path, dataset: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The earlier run's files went first, then the new run's larger last.pt found no room: neither run was
    # left ("No space left on device: run/last.pt", a folder holding only config.yaml).
    out = tmp_path / "run"
    assert main(_argv(dataset, out, "--epochs", "1")) == 0
    earlier = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()
    monkeypatch.setattr(shutil, "disk_usage", lambda path: SimpleNamespace(free=0))  # only the run's own room
    argv = _argv(dataset, out, "--epochs", "1", "--overwrite", "--arch", "test_resnet")  # 4x the weights
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"skin-train: error: no room for the new run's checkpoints in {out} (")
    assert err.endswith("the earlier run is kept: free some space, or pass another --out\n")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == earlier


def test_a_second_skin_train_on_a_folder_being_written_is_one_line(
    tmp_path: Path, dataset: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import fcntl

    out = tmp_path / "run"
    out.mkdir()
    first = os.open(out, os.O_RDONLY)  # as a run in its first epoch holds it (it has written no last.pt yet)
    fcntl.flock(first, fcntl.LOCK_EX | fcntl.LOCK_NB)
    argv = _argv(dataset, out, "--epochs", "1")
    try:
        assert main(argv) == 2
    finally:
        os.close(first)
    why = "wait for it to end, or pass another --out"
    assert capsys.readouterr().err == f"skin-train: error: another skin-train is writing to {out}; {why}\n"
    assert list(out.iterdir()) == []  # nothing of the first run's was written over
    assert main(argv) == 0  # once it has ended


def test_a_file_system_without_locks_does_not_stop_a_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno
    import fcntl

    def no_locks(fd: int, operation: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")  # some NFS mounts

    monkeypatch.setattr(fcntl, "flock", no_locks)
    lock = loop.FolderLock()
    lock.take(tmp_path)  # no error: the run goes on unguarded, as before there was a lock
    assert lock.fd is None


def test_the_folder_is_let_go_when_the_run_ends_though_its_loader_workers_live_on(
    tmp_path: Path, dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def stop(*args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt  # after the training loader's workers have started

    monkeypatch.setattr(loop, "evaluate_sharded", stop)
    out = tmp_path / "run"
    lock = loop.FolderLock()
    with pytest.raises(KeyboardInterrupt) as stopped:
        train(**{**TINY, "workers": 1}, data=str(dataset), out=str(out), epochs=2)
    assert stopped.traceback and multiprocessing.active_children()  # its frames keep the loaders' workers
    lock.take(out)  # the workers (forked holding the lock) do not hold it: --resume may start
    assert lock.fd is not None
    lock.release()


def _comparable(rows: list[dict[str, float]]) -> list[dict[str, float]]:
    return [{k: v for k, v in row.items() if k != "time_s"} for row in rows]


@pytest.mark.parametrize(
    "scheduler", [pytest.param("plateau", id="plateau"), pytest.param("cosine", id="cosine")]
)
def test_resume_repeats_the_uninterrupted_run(
    tmp_path: Path, dataset: Path, monkeypatch: pytest.MonkeyPatch, scheduler: str
) -> None:
    # Weighted sampler, augmentation, dropout, accumulation and an lr that moves every epoch: all must resume.
    options: dict[str, Any] = {
        **TINY,
        "data": str(dataset),
        "epochs": 3,
        "accum_steps": 2,
        "drop_rate": 0.2,
        "scheduler": scheduler,
        "plateau_patience": 0,
    }
    whole = train(**options, out=str(tmp_path / "whole"))

    epochs_started = 0
    real_train_epoch = loop.train_epoch

    def interrupted(*args: Any, **kwargs: Any) -> dict[str, Any]:
        nonlocal epochs_started
        epochs_started += 1
        if epochs_started == 3:
            raise KeyboardInterrupt  # Ctrl-C during the third epoch
        return real_train_epoch(*args, **kwargs)

    monkeypatch.setattr(loop, "train_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(**options, out=str(tmp_path / "part"))
    monkeypatch.undo()
    part = tmp_path / "part"
    assert load_checkpoint(part / "last.pt")["epoch"] == 2 and len(read_metrics(part / "metrics.csv")) == 2

    # The options come back from the checkpoint; other loader workers see the same augmented pixels.
    train(resume=str(part), workers=1)
    expected = _comparable(read_metrics(whole / "metrics.csv"))
    got = _comparable(read_metrics(part / "metrics.csv"))
    assert len({r["lr"] for r in expected}) > 1  # the schedule really moved
    assert got == [pytest.approx(row, rel=1e-5) for row in expected]
    a = load_checkpoint(whole / "last.pt")["model"]
    b = load_checkpoint(part / "last.pt")["model"]
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-5) for k in a)
    # The resumed run remembers its best epoch: the same best.pt and report as the uninterrupted run's.
    assert load_checkpoint(part / "best.pt")["epoch"] == load_checkpoint(whole / "best.pt")["epoch"]
    reports = [json.loads((run / "report.json").read_text()) for run in (whole, part)]
    assert [(r["best_epoch"], r["val_macro_f1"]) for r in reports] == [
        (reports[0]["best_epoch"], pytest.approx(reports[0]["val_macro_f1"], rel=1e-5))
    ] * 2


def _empty_class(root: Path) -> None:
    (root / "train" / "Warts").mkdir()
    (root / "test" / "Warts").mkdir()


def _classes_differ(root: Path) -> None:
    shutil.copytree(root / "train" / "Acne", root / "train" / "Lupus")


def _one_class(root: Path) -> None:
    for split in ("train", "test"):
        for name in CLASSES[1:]:
            shutil.rmtree(root / split / name)


def _one_image_per_class(root: Path) -> None:  # nothing left to hold out for validation
    for folder in (root / "train").iterdir():
        for image in sorted(folder.iterdir())[1:]:
            image.unlink()


def _unreadable(split: str) -> Callable[[Path], None]:
    def breakage(root: Path) -> None:
        for image in (root / split).glob("*/*"):
            image.write_bytes(b"not an image")

    return breakage


def _unreadable_class(root: Path) -> None:  # every training image of one class, its test images fine
    for image in (root / "train" / "Eczema").iterdir():
        image.write_bytes(b"")


def _unreadable_validation(root: Path) -> None:  # the images held out of train/ (the CLI's split)
    for image, _ in load_splits(root).val:
        image.write_bytes(b"not an image")


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        pytest.param(_empty_class, "holds no .jpg/.jpeg/.png/.webp images", id="empty-class"),
        pytest.param(_classes_differ, "only in train: Lupus", id="class-sets-differ"),
        pytest.param(_one_class, "needs at least 2 class folders", id="one-class"),
        pytest.param(_one_image_per_class, "no validation images", id="no-validation"),
        pytest.param(_unreadable("train"), "no training image could be read", id="train-unreadable"),
        pytest.param(_unreadable_validation, "no validation image could be read", id="val-unreadable"),
        pytest.param(
            _unreadable_class, "training images of class 'Eczema' can be read", id="class-unreadable"
        ),
        pytest.param(_unreadable("test"), "no test image could be read", id="test-unreadable"),
    ],
)
def test_bad_dataset_stops_before_anything_is_written(
    tmp_path: Path, dataset: Path, capsys: pytest.CaptureFixture[str], breakage, message: str
) -> None:
    root = tmp_path / "data"
    shutil.copytree(dataset, root)
    breakage(root)
    out = tmp_path / "out"
    assert (
        main(["--data", str(root), "--out", str(out), "--arch", "test_efficientnet", "--device", "cpu"]) == 2
    )
    err = capsys.readouterr().err
    assert message in err and err.startswith("skin-train: error: ") and err.count("\n") == 1
    assert not out.exists()


def test_a_run_without_a_validation_macro_f1_reports_none(
    tmp_path: Path, dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = loop.epoch_metrics
    monkeypatch.setattr(loop, "epoch_metrics", lambda *args: {**real(*args), "f1": float("nan")})
    run = train(**TINY, data=str(dataset), out=str(tmp_path / "run"), epochs=1)
    report = json.loads((run / "report.json").read_text())
    assert report["best_epoch"] is None and report["val_macro_f1"] is None  # not 0 and -1.0
    assert not (run / "best.pt").exists()


def test_a_validation_macro_f1_of_0_is_a_best_epoch_all_the_same(
    tmp_path: Path, dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every validation image wrong is a number, unlike a NaN: best.pt is that epoch's, and the report says so.
    real = loop.epoch_metrics
    monkeypatch.setattr(loop, "epoch_metrics", lambda *args: {**real(*args), "f1": 0.0})
    run = train(**TINY, data=str(dataset), out=str(tmp_path / "run"), epochs=1)
    report = json.loads((run / "report.json").read_text())
    assert report["best_epoch"] == 1 and report["val_macro_f1"] == 0.0
    assert load_checkpoint(run / "best.pt")["epoch"] == 1


def test_the_report_is_best_pts_whose_epoch_neither_a_tie_nor_a_resume_moves(
    tmp_path: Path, dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """best.pt: the first epoch of the highest validation macro-F1 (a later tie does not replace it; a resumed
    run remembers it); report.json: that epoch, that F1 and the test numbers of best.pt's weights."""
    f1 = iter([0.5, 0.5, 0.3])  # epochs 1 and 2, then 3 after a resume
    real_metrics, real_summary = loop.epoch_metrics, loop.classification_summary
    monkeypatch.setattr(loop, "epoch_metrics", lambda *args: {**real_metrics(*args), "f1": next(f1)})
    reported: list[np.ndarray] = []

    def summary(probs: np.ndarray, *args: Any, **kwargs: Any) -> dict[str, Any]:
        reported.append(probs)
        return real_summary(probs, *args, **kwargs)

    monkeypatch.setattr(loop, "classification_summary", summary)
    run = train(**TINY, data=str(dataset), out=str(tmp_path / "run"), epochs=2)
    train(resume=str(run), epochs=3)
    rows = read_metrics(run / "metrics.csv")
    assert [r["val_f1"] for r in rows] == [0.5, 0.5, 0.3]
    report = json.loads((run / "report.json").read_text())
    assert load_checkpoint(run / "best.pt")["epoch"] == report["best_epoch"] == 1
    assert report["val_macro_f1"] == max(r["val_f1"] for r in rows)

    def test_probs(checkpoint: str) -> np.ndarray:
        model = model_from_checkpoint(load_checkpoint(run / checkpoint))
        return evaluate(model, eval_loader(load_splits(dataset).test, TINY["img_size"]), "cpu").probs

    np.testing.assert_allclose(reported[-1], test_probs("best.pt"), atol=1e-5)
    assert not np.allclose(reported[-1], test_probs("last.pt"), atol=1e-3)  # epoch 3's: other numbers


def test_the_report_counts_byte_identical_copies(tmp_path: Path, dataset: Path) -> None:
    root = tmp_path / "data"
    shutil.copytree(dataset, root)
    shutil.copyfile(root / "train" / "Moles" / "0003.png", root / "test" / "Moles" / "x.png")
    run = train(**TINY, data=str(root), out=str(tmp_path / "run"), epochs=1)
    report = json.loads((run / "report.json").read_text())
    assert report["identical_copies"] == {"test_of_train": 1, "across_classes": 0, "val_of_train": 0}


def test_classes_without_images_are_named(
    tmp_path: Path, dataset: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "data"
    shutil.copytree(dataset, root)
    for image in (root / "test" / "Moles").iterdir():
        image.write_bytes(b"not an image")
    for image, label in load_splits(root, val_fraction=0.2, seed=42).val:
        if label == CLASSES.index("Acne"):
            image.write_bytes(b"not an image")
    run = train(**TINY, data=str(root), out=str(tmp_path / "run"), epochs=1, val_fraction=0.2)
    report = json.loads((run / "report.json").read_text())
    assert report["Moles"]["support"] == 0 and report["classes_without_images"] == ["Moles"]
    assert report["classes_without_images_by_split"] == {"val": ["Acne"], "test": ["Moles"]}
    # The macro average is over the classes with images or predictions (the confusion matrix's columns).
    counted = [name for i, name in enumerate(CLASSES) if np.array(report["confusion_matrix"])[:, i].sum()]
    counted = sorted(set(counted) | {"Acne", "Eczema"})
    mean = np.mean([report[name]["f1-score"] for name in counted])
    assert report["macro avg"]["f1-score"] == pytest.approx(mean)
    warning = "warning: no readable image of some classes (val: Acne; test: Moles); macro averages"
    assert capsys.readouterr().out.count(warning) == 1


def test_missing_pretrained_weights_name_both_options(
    tmp_path: Path, dataset: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import huggingface_hub.constants

    # No network here; offline mode makes the hub fail at once instead of after retries.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    argv = ["--data", str(dataset), "--out", str(tmp_path / "out"), "--arch", "test_efficientnet"]
    assert main([*argv, "--device", "cpu", "--pretrained"]) == 2
    err = capsys.readouterr().err
    assert "--pretrained" in err and "--init-weights" in err and err.count("\n") == 1
    assert main([*argv, "--init-weights", str(tmp_path / "nope.pt")]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and err.count("\n") == 1


def test_local_init_weights_keep_backbone_and_renew_head(tmp_path: Path) -> None:
    from training.model import build_model

    donor = build_model("test_efficientnet", 5, drop_rate=0.0)
    torch.save(donor.state_dict(), tmp_path / "donor.pt")
    model = build_model("test_efficientnet", 3, init_weights=tmp_path / "donor.pt")
    own, theirs = model.state_dict(), donor.state_dict()
    assert torch.equal(own["conv_stem.weight"], theirs["conv_stem.weight"])
    assert own["classifier.weight"].shape == (3, theirs["classifier.weight"].shape[1])


def test_mlflow_is_optional(tmp_path: Path, dataset: Path, capsys: pytest.CaptureFixture[str]) -> None:
    try:
        import mlflow  # noqa: F401

        pytest.skip("mlflow is installed here")
    except ImportError:
        pass
    argv = ["--data", str(dataset), "--out", str(tmp_path / "o"), "--arch", "test_efficientnet", "--mlflow"]
    assert main(argv) == 2
    assert "needs the mlflow package" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("arch", "mean", "std"),
    [
        pytest.param("test_efficientnet", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), id="imagenet"),
        pytest.param("test_vit", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), id="vit-half"),
        pytest.param("vit_tiny_patch16_224.augreg_in21k", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), id="with-tag"),
    ],
)
def test_each_arch_is_fed_as_its_weights_were_trained(
    tmp_path: Path, dataset: Path, arch: str, mean: tuple[float, ...], std: tuple[float, ...]
) -> None:
    # ViTs (and Inception, MaxViT, …) were pretrained on (x - 0.5) / 0.5: with ImageNet's mean and std, a
    # fine-tuned one saw inputs about twice as large as in pretraining.
    from training.config import TrainConfig
    from training.model import normalization

    assert normalization(arch) == (mean, std)
    cfg = TrainConfig(data=str(dataset), arch=arch, workers=0)
    splits = load_splits(dataset)
    meta = loop.checkpoint_meta(cfg, splits)
    assert (meta["mean"], meta["std"]) == (list(mean), list(std))
    train_loader, _, val_loader = loop.make_loaders(
        cfg, splits, loop.Cluster(0, 1, torch.device("cpu"), False)
    )
    assert (train_loader.dataset.mean, train_loader.dataset.std) == (mean, std)
    assert (val_loader.dataset.dataset.mean, val_loader.dataset.dataset.std) == (mean, std)  # rank's Subset


def test_loader_workers_are_at_most_the_cpus_this_process_may_use(
    dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The default --workers 4 on a 2-CPU machine: torch warned that the loader might freeze.
    from training.config import TrainConfig

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    cfg = TrainConfig(data=str(dataset), arch="test_efficientnet", workers=4)
    cpu = loop.Cluster(0, 1, torch.device("cpu"), False)
    train_loader, _, val_loader = loop.make_loaders(cfg, load_splits(dataset), cpu)
    assert train_loader.num_workers == val_loader.num_workers == 2
    cfg.workers = 1
    assert loop.make_loaders(cfg, load_splits(dataset), cpu)[0].num_workers == 1


def test_loader_workers_are_at_most_the_containers_cpu_quota(monkeypatch: pytest.MonkeyPatch) -> None:
    # docker run --cpus 2 on a 16-core host: the affinity mask alone let the default 4 start.
    from runtime import engine
    from training.cluster import loader_workers

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    monkeypatch.setattr(engine, "_cgroup_quota", lambda: 2.0)
    assert loader_workers(4) == 2
    assert loader_workers(1) == 1


def test_a_run_normalized_otherwise_than_its_arch_now_is_is_not_resumed(
    tmp_path: Path, dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = train(**TINY, data=str(dataset), out=str(tmp_path / "run"), epochs=1)
    half = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # as if the arch's weights had been trained on 0.5/0.5
    monkeypatch.setattr(loop, "normalization", lambda arch: half)
    with pytest.raises(
        ConfigError, match=r"cannot resume: the run's inputs were normalized with mean \[0\.485"
    ):
        train(resume=str(run), epochs=2)


def test_a_run_that_diverges_stops_in_one_line_and_keeps_no_nan_model(tmp_path: Path, dataset: Path) -> None:
    # Its NaN weights predict one class: saved as best.pt and reported (accuracy 0.333, exit 0) as a model.
    out = tmp_path / "run"
    diverged = r"^training diverged in epoch 1: its weights are no longer finite"
    with pytest.raises(ConfigError, match=diverged) as e:
        train(**TINY, data=str(dataset), out=str(out), epochs=2, weight_decay=1e308)
    # The options to lower are those a resumed run refuses to change: the message said only "lower --lr, ...".
    assert str(e.value).endswith(
        "start a new run with a lower --lr, --backbone-lr-scale or --weight-decay (a resumed run keeps them)"
    )
    assert not (out / "best.pt").exists() and not (out / "last.pt").exists()


def _why(path: Path) -> str:
    from runtime.preprocess import ImageError, preprocess

    with pytest.raises(ImageError) as info:
        preprocess(path, (8, 8))
    return info.value.message
