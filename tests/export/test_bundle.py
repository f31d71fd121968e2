"""export_bundle and skin-export end to end on a tiny timm model and generated images."""

from __future__ import annotations

import json
import os
import pickle
import platform
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from export import bf16, cli, heatmap, place, quantize
from export.bundle import export_bundle
from export.errors import ExportError
from runtime import bundle, int8
from runtime.preprocess import preprocess
from tests.export.conftest import CLASSES, TINY_SIZE, write_checkpoint
from tests.openvino import needs_openvino

TRAINING_REPORT = {"accuracy": 0.5, "macro avg": {"f1-score": 0.4}, "best_epoch": 3}


@pytest.fixture(scope="module")
def exported(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One tiny bundle, int8 tried, with the training run's report.json beside the checkpoint."""
    work = tmp_path_factory.mktemp("export")
    checkpoint = write_checkpoint(work / "run" / "best.pt", data=dataset)
    (work / "run" / "report.json").write_text(json.dumps(TRAINING_REPORT))
    messages: list[str] = []
    out = export_bundle(checkpoint, work / "bundle", log=messages.append, parity_images=8)
    report = json.loads((out / bundle.REPORT_FILE).read_text())
    return {"work": work, "checkpoint": checkpoint, "out": out, "report": report, "messages": messages}


def test_bundle_loads_in_the_runtime_and_describes_itself(exported: dict[str, Any], dataset: Path) -> None:
    from runtime.engine import Engine

    engine = Engine(exported["out"])
    meta = engine.meta
    assert meta.class_names == CLASSES
    assert meta.display_names == [bundle.display_name(c) for c in CLASSES]
    assert meta.input_size == (TINY_SIZE, TINY_SIZE)
    assert (meta.model_name, meta.model_version, meta.architecture) == (
        "skin-test",
        "0.1",
        "test_efficientnet",
    )
    assert meta.demo is True and meta.trained_on == "generated images"
    assert meta.temperature == pytest.approx(exported["report"]["calibration"]["temperature"])
    assert meta.created == exported["report"]["export"]["created"] and meta.created.endswith("Z")
    assert engine.has_cam
    image = preprocess(sorted(dataset.glob("test/*/*"))[0], (TINY_SIZE, TINY_SIZE))
    out = engine.run(image[None])
    assert out.probabilities.shape == (1, 3) and out.cam is not None and out.cam.shape[:2] == (1, 3)
    assert out.probabilities.sum() == pytest.approx(1.0, abs=1e-5)


def test_probabilities_are_the_logits_scaled_by_the_fitted_temperature(
    exported: dict[str, Any], dataset: Path
) -> None:
    from export.infer import session

    sess = session(exported["out"] / bundle.MODEL_FILE)
    images = np.stack([preprocess(p, (TINY_SIZE, TINY_SIZE)) for p in sorted(dataset.glob("test/*/*"))[:5]])
    probs, logits = sess.run([bundle.PROBS_OUTPUT, bundle.LOGITS_OUTPUT], {bundle.INPUT_NAME: images})
    t = exported["report"]["calibration"]["temperature"]
    expected = np.exp(logits / t) / np.exp(logits / t).sum(1, keepdims=True)
    np.testing.assert_allclose(probs, expected, atol=1e-6)


def test_report_extends_the_training_report(exported: dict[str, Any]) -> None:
    report = exported["report"]
    assert any(m.startswith("parity: max") for m in exported["messages"])
    # The last line: where the bundle is and what is in it.
    files = ", ".join(sorted(p.name for p in exported["out"].iterdir()))
    assert exported["messages"][-1] == f"wrote bundle {exported['out']}: {files}"
    # 6 validation images are too few for the out-of-distribution threshold's guarantee; nothing else to say.
    assert [note.split(":")[0] for note in report["export"]["notes"]] == ["only 6 validation images"]
    for key, value in TRAINING_REPORT.items():
        assert report[key] == value
    cal = report["calibration"]
    assert set(cal) >= {"temperature", "ece_before", "ece_after", "nll_before", "nll_after", "n"}
    assert cal["nll_after"] <= cal["nll_before"] and cal["n"] == 6  # 2 of 6 train images per class held out
    assert cal["split"] == "validation" and cal["degenerate"] is False
    # The same measures on the test split, which the temperature never saw.
    assert (
        set(cal["test"]) == {"n", "ece_before", "ece_after", "nll_before", "nll_after"}
        and cal["test"]["n"] > 0
    )
    parity = report["parity"]
    assert parity["n"] == 6 and parity["max_abs_diff"] <= 1e-4 and parity["top1_agree"] == 1.0
    assert report["export"]["opset"] >= 17 and report["export"]["exporter"]
    assert report["export"]["onnx_sha256"] == bundle.sha256_file(exported["out"] / bundle.MODEL_FILE)
    assert report["export"]["cam"] == [2, 2]


def test_int8_decision_is_recorded_and_followed(exported: dict[str, Any]) -> None:
    entry = exported["report"]["int8"]
    assert entry["n_test"] == 12
    assert set(entry["latency"]) == {"fp32", "int8"} and entry["latency"]["int8"]["batch1_ms"] > 0
    # where it was measured: without VNNI, on onnxruntime's exact int8 kernels (runtime/int8.py)
    assert entry["cpu"] == {"machine": platform.machine(), "vnni": int8.cpu_has_vnni()}
    # the tiny graph has a heatmap: int8's is compared with fp32's on the same test images
    assert 0.0 <= entry["heatmap_agreement"] <= 1.0 and entry["heatmap_tolerance"] == heatmap.TOLERANCE
    ship, reason = quantize.decide(entry["agreement"], entry["speedup_batch1"], entry["heatmap_agreement"])
    flags = entry.get("flag_agreement")
    if ship:  # then the uncertainty flags of both graphs were compared too, and they must agree as well
        assert set(flags) == {"confidence", "in_distribution"}
        if min(flags.values()) < quantize.MIN_AGREEMENT:
            ship, reason = False, entry["reason"]
            assert "flags agree with fp32 on only" in reason
    else:
        assert flags is None
    assert entry["decision"] == ("shipped" if ship else "not shipped") and entry["reason"] == reason
    assert (exported["out"] / quantize.INT8_FILE).is_file() == ship


@needs_openvino
def test_bf16_is_measured_recorded_and_shown_by_the_runtime(
    exported: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from runtime.bf16 import cpu_has_bf16
    from runtime.engine import Engine
    from runtime.settings import Settings

    entry = exported["report"]["openvino_bf16"]
    if cpu_has_bf16() is False:  # OpenVINO would not really run bf16: nothing to measure
        assert (
            entry == {"measured": False, "reason": entry["reason"]}
            and "lacks AVX-512 BF16" in entry["reason"]
        )
        return
    assert entry["measured"] is True and entry["n_test"] == 12, entry
    assert 0.0 <= entry["agreement"] <= 1.0 and 0.0 <= entry["max_abs_diff"] <= 1.0
    assert set(entry["latency_batch1_ms"]) == {"fp32", "bf16"} and entry["speedup_batch1"] > 0
    assert set(entry["flag_agreement"]) == {"confidence", "in_distribution"}
    assert 0.0 <= entry["heatmap_agreement"] <= 1.0
    worst = min([entry["agreement"], entry["heatmap_agreement"], *entry["flag_agreement"].values()])
    assert entry["safe"] is (worst >= bf16.MIN_AGREEMENT) and entry["min_agreement"] == bf16.MIN_AGREEMENT
    assert any(m.startswith("bf16: top-1 agreement") for m in exported["messages"])
    engine = Engine(exported["out"], threads=1, openvino="bf16")
    assert engine.info()["onnxruntime"]["bf16_check"] == entry
    assert (engine.bf16_warning() is None) is entry["safe"]
    # SKIN_OPENVINO=auto reads the same entry: bf16 exactly where export measured it safe
    monkeypatch.setenv("SKIN_OPENVINO", "auto")
    chosen = Settings.from_env(bundle=str(exported["out"]))
    assert chosen.openvino == ("bf16" if entry["safe"] else "off"), chosen.openvino_auto


def test_bf16_without_openvino_says_so(
    exported: dict[str, Any], dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == bf16.PACKAGE else real(name, *a)
    )
    fp32 = (exported["out"] / bundle.MODEL_FILE).read_bytes()
    test = sorted(dataset.glob("test/*/*"))
    entry = bf16.measure(
        fp32, test=test, flags=None, size=(TINY_SIZE, TINY_SIZE), resize="stretch", resize_filter="bilinear"
    )
    assert entry == {"measured": False, "reason": "openvino is not installed (the openvino extra)"}


@needs_openvino
def test_a_failing_bf16_check_never_costs_the_export(
    exported: dict[str, Any], dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import runtime.bf16
    import runtime.engine

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("openvino exploded")

    monkeypatch.setattr(runtime.engine, "openvino_session", broken)
    monkeypatch.setattr(runtime.bf16, "cpu_has_bf16", lambda: True)
    fp32 = (exported["out"] / bundle.MODEL_FILE).read_bytes()
    view = {"size": (TINY_SIZE, TINY_SIZE), "resize": "stretch", "resize_filter": "bilinear"}
    entry = bf16.measure(fp32, test=sorted(dataset.glob("test/*/*")), flags=None, **view)  # type: ignore[arg-type]
    assert entry == {"measured": False, "reason": "the bf16 check failed: openvino exploded"}


OPENVINO_ERROR = (  # as OpenVINO words a model it cannot read: its source files first, the cause last
    "Exception from src/inference/src/cpp/core.cpp:105:\n"
    "Exception from src/inference/src/model_reader.cpp:188:\n"
    "Unable to read the model.\n\n"
)


@pytest.mark.parametrize(
    ("where", "reason"),
    [
        pytest.param(
            "compile",
            "OpenVINO could not compile the model: Unable to read the model.",
            marks=needs_openvino,
            id="compiling",
        ),
        pytest.param("run", "the bf16 check failed: Unable to read the model.", id="running"),
    ],
)
def test_a_bf16_check_failing_in_many_lines_records_its_cause_in_one(
    exported: dict[str, Any], dataset: Path, monkeypatch: pytest.MonkeyPatch, where: str, reason: str
) -> None:
    import importlib.util

    import runtime.bf16
    import runtime.engine
    import runtime.openvino_session

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError(OPENVINO_ERROR)

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: object() if name == bf16.PACKAGE else real(name, *a)
    )
    monkeypatch.setattr(runtime.bf16, "cpu_has_bf16", lambda: True)
    if where == "compile":
        monkeypatch.setattr(runtime.openvino_session, "OpenVINOSession", broken)
    else:
        monkeypatch.setattr(runtime.engine, "openvino_session", broken)
    fp32 = (exported["out"] / bundle.MODEL_FILE).read_bytes()
    view = {"size": (TINY_SIZE, TINY_SIZE), "resize": "stretch", "resize_filter": "bilinear"}
    entry = bf16.measure(fp32, test=sorted(dataset.glob("test/*/*")), flags=None, **view)  # type: ignore[arg-type]
    assert entry == {"measured": False, "reason": reason}


def test_bf16_not_measured_says_why_in_the_exports_output(
    dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As int8 says its decision: the reason was in report.json alone."""
    why = "this CPU lacks AVX-512 BF16 and AMX: OpenVINO would not run bf16"
    monkeypatch.setattr(bf16, "measure", lambda *args, **kwargs: {"measured": False, "reason": why})
    checkpoint = write_checkpoint(tmp_path / "run" / "best.pt", data=dataset)
    messages: list[str] = []
    export_bundle(checkpoint, tmp_path / "bundle", parity_images=1, int8="off", log=messages.append)
    assert f"bf16: not measured: {why}" in messages
    assert "int8: skipped (int8 off)" in messages  # said only when it was tried


@pytest.mark.parametrize(
    "moved", [pytest.param(False, id="same-heatmaps"), pytest.param(True, id="one-moved")]
)
def test_bf16_that_draws_another_heatmap_is_not_safe(
    exported: dict[str, Any], dataset: Path, monkeypatch: pytest.MonkeyPatch, moved: bool
) -> None:
    """bf16 cannot run on a CPU without bf16 units: a stand-in answers as fp32 does, with the heatmap of the
    first test image turned inside out (its hottest cell the coldest) when ``moved``."""
    import importlib.util

    import runtime.bf16
    import runtime.engine
    from export import infer

    class Session:
        def __init__(self, model: bytes, **kwargs: object) -> None:
            self.session = infer.session(model)

        def get_inputs(self) -> Any:
            return self.session.get_inputs()

        def run(self, outputs: list[str] | None, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
            results = self.session.run(outputs, feed)
            if moved and outputs and bundle.CAM_OUTPUT in outputs:
                results[outputs.index(bundle.CAM_OUTPUT)][0] *= -1
            return results

    real = importlib.util.find_spec
    monkeypatch.setattr(  # as if openvino were installed, whatever this machine has
        importlib.util, "find_spec", lambda name, *a: object() if name == bf16.PACKAGE else real(name, *a)
    )
    monkeypatch.setattr(runtime.bf16, "cpu_has_bf16", lambda: True)
    monkeypatch.setattr(runtime.engine, "openvino_session", Session)
    fp32 = (exported["out"] / bundle.MODEL_FILE).read_bytes()
    view = {"size": (TINY_SIZE, TINY_SIZE), "resize": "stretch", "resize_filter": "bilinear"}
    entry = bf16.measure(fp32, test=sorted(dataset.glob("test/*/*")), flags=None, **view)  # type: ignore[arg-type]
    assert entry["measured"] is True and entry["agreement"] == 1.0 and entry["n_test"] == 12
    assert entry["heatmap_agreement"] == (11 / 12 if moved else 1.0)
    assert entry["heatmap_tolerance"] == heatmap.TOLERANCE
    assert entry["safe"] is not moved
    # the runtime reads the verdict, and says which agreement fell short
    assert (runtime.bf16.concern(entry) is None) is not moved
    if moved:
        assert "heatmap 0.9167" in (runtime.bf16.concern(entry) or "")


@pytest.mark.parametrize(
    ("agreement", "speedup", "ship"),
    [(1.0, 1.5, True), (0.985, 1.5, False), (1.0, 1.05, False), (0.99, 1.10, True)],
)
def test_int8_ships_only_when_it_agrees_and_is_faster(agreement: float, speedup: float, ship: bool) -> None:
    assert quantize.decide(agreement, speedup)[0] is ship


def test_int8_whose_flags_disagree_with_fp32_is_not_shipped(
    dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """int8 that agrees on the top-1 class and is faster, but would flag other images low-confidence."""
    from export import bundle as exporter

    def shipping(fp32: bytes, **kwargs: Any) -> tuple[dict[str, Any], bytes]:
        entry = {"decision": "shipped", "reason": "faster", "agreement": 1.0, "file": quantize.INT8_FILE}
        return entry, fp32

    flags = {"confidence": 0.5, "in_distribution": 1.0}  # half the images judged otherwise
    monkeypatch.setattr(quantize, "try_int8", shipping)
    monkeypatch.setattr(exporter, "_flag_agreement", lambda *args: flags)
    monkeypatch.setattr(bf16, "measure", lambda *args, **kwargs: {"measured": False, "reason": "not here"})
    checkpoint = write_checkpoint(tmp_path / "run" / "best.pt", data=dataset)
    out = export_bundle(checkpoint, tmp_path / "bundle", parity_images=1)
    entry = json.loads((out / bundle.REPORT_FILE).read_text())["int8"]
    assert entry["flag_agreement"] == flags
    assert entry["decision"] == "not shipped" and entry["file"] is None
    assert "flags agree with fp32 on only 0.5000" in entry["reason"]
    assert not (out / quantize.INT8_FILE).exists()


def test_verify_refuses_a_graph_whose_probabilities_do_not_sum_to_1(tmp_path: Path) -> None:
    import onnx

    from export.bundle import verify
    from tests.bundle_factory import make_bundle

    directory = make_bundle(tmp_path / "bundle")
    assert verify(directory).num_classes == 5
    model = onnx.load(directory / bundle.MODEL_FILE)
    softmax = next(node for node in model.graph.node if node.op_type == "Softmax")
    softmax.op_type = "Sigmoid"  # per class, between 0 and 1, but no distribution
    del softmax.attribute[:]
    onnx.save(model, directory / bundle.MODEL_FILE)
    with pytest.raises(ExportError, match="does not return probabilities"):
        verify(directory)


def test_existing_bundle_is_kept_unless_overwrite(exported: dict[str, Any]) -> None:
    with pytest.raises(ExportError, match="--overwrite"):
        export_bundle(exported["checkpoint"], exported["out"])
    # Before any work: else only the check once the bundle is built refuses it (as "appeared while …").
    with pytest.raises(ExportError, match="already exists; pass --overwrite"):
        export_bundle(exported["work"] / "missing.pt", exported["out"])  # before the checkpoint is read


def test_overwrite_replaces_the_bundle_and_leaves_no_temporary_folders(dataset: Path, tmp_path: Path) -> None:
    checkpoint = write_checkpoint(
        tmp_path / "run" / "best.pt", data=dataset, model_version="2.0", data_fingerprint="0123456789abcdef"
    )
    out = tmp_path / "bundle"
    out.mkdir()
    (out / bundle.MODEL_FILE).write_text("old")
    (out / bundle.INT8_MODEL_FILE).write_text("old")  # an int8 graph the new export does not ship
    export_bundle(checkpoint, out, overwrite=True, int8="off", parity_images=2)
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o777 & ~umask  # readable by the serving image's own user
    assert sorted(p.name for p in out.iterdir()) == [
        bundle.MODEL_FILE,
        bundle.REPORT_FILE,
        "risk_coverage.png",
    ]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    report = json.loads((out / bundle.REPORT_FILE).read_text())
    assert report["int8"]["decision"] == "skipped"
    assert any("fingerprint mismatch" in note for note in report["export"]["notes"])


def test_overwrite_of_the_current_folder_replaces_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from export import bundle as exporter
    from tests.bundle_factory import make_bundle

    checkpoint = write_checkpoint(tmp_path / "run" / "best.pt", data=None)
    out = make_bundle(tmp_path / "bundle", report=False)
    old = (out / bundle.MODEL_FILE).read_bytes()
    # Writing the graph itself is not what is tested here: a valid bundle stands in for it.
    monkeypatch.setattr(exporter, "_build", lambda staging, *a, **kw: make_bundle(staging, temperature=2.0))
    monkeypatch.chdir(out)  # cd bundles/b && skin-export … --out . --overwrite: "." was staged inside itself
    assert export_bundle(checkpoint, ".", overwrite=True, no_data=True) == out
    assert (out / bundle.MODEL_FILE).read_bytes() != old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle", "run"]  # no staging or old folder left


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_folder_made_at_out_during_the_export_is_not_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, overwrite: bool
) -> None:
    """Out was free when the export began; another export (or a person) put something there meanwhile."""
    from export import bundle as exporter
    from tests.bundle_factory import make_bundle

    checkpoint = write_checkpoint(tmp_path / "run" / "best.pt", data=None)
    out = tmp_path / "bundle"

    def build(staging: Path, *args: Any, **kwargs: Any) -> None:
        make_bundle(staging)
        out.mkdir()
        (out / "notes.txt").write_text("mine")

    monkeypatch.setattr(exporter, "_build", build)
    expected = "is not a bundle folder" if overwrite else "appeared while the bundle was being built"
    with pytest.raises(ExportError, match=expected):
        export_bundle(checkpoint, out, overwrite=overwrite, no_data=True)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle", "run"]  # no staging folder left


def test_every_file_is_on_disk_before_the_bundle_is_renamed_into_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Renamed unsynced, a crash could leave empty files under the bundle's names; NFS or a disk quota may
    report a full disk only at fsync."""
    import errno
    import stat

    from export import bundle as exporter
    from tests.bundle_factory import make_bundle

    checkpoint = write_checkpoint(tmp_path / "run" / "best.pt", data=None)
    monkeypatch.setattr(exporter, "_build", lambda staging, *a, **kw: make_bundle(staging))
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.path.basename(os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    export_bundle(checkpoint, tmp_path / "b", no_data=True)
    files = sorted(p.name for p in (tmp_path / "b").iterdir())
    assert files and set(files) <= set(synced)

    def files_only(fd: int) -> None:  # SMB and some FUSE mounts refuse to fsync a folder
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "Invalid argument")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", files_only)
    export_bundle(checkpoint, tmp_path / "d", no_data=True)  # the files are synced: that is what counts

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match="No space left on device") as failed:
        export_bundle(checkpoint, tmp_path / "c", no_data=True)
    assert failed.value.filename.endswith(bundle.MODEL_FILE)  # the CLI's line names the file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "d", "run"]  # nothing half-written left


def test_folders_left_by_a_killed_export_are_named_and_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGKILL leaves the hidden staging folder (or, between the renames, the old bundle): said, not removed,
    since it may be another export's, still running."""
    from export import bundle as exporter
    from tests.bundle_factory import make_bundle

    checkpoint = write_checkpoint(tmp_path / "run" / "best.pt", data=None)
    monkeypatch.setattr(exporter, "_build", lambda staging, *a, **kw: make_bundle(staging))
    left = [tmp_path / ".b.old-k2", tmp_path / ".b.partial-x1", tmp_path / ".b2.partial-y"]
    for folder in left:
        folder.mkdir()
    said: list[str] = []
    export_bundle(checkpoint, tmp_path / "b", no_data=True, log=said.append)
    notes = [line for line in said if "was killed" in line]
    out = tmp_path / "b"
    assert notes == [
        f"note: {p} is left from an export to {out} that was killed (or is one still running)"
        for p in left[:2]
    ]
    assert all(p.is_dir() for p in left)


def test_overwrite_replaces_only_a_bundle(dataset: Path, tmp_path: Path) -> None:
    checkpoint = write_checkpoint(tmp_path / "run" / "best.pt", data=dataset)
    (tmp_path / "run" / "last.pt").write_bytes(b"the run's other checkpoint")
    with pytest.raises(ExportError, match="holds the checkpoint being exported"):
        export_bundle(checkpoint, tmp_path / "run", overwrite=True, int8="off", parity_images=2)
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / bundle.MODEL_FILE).write_text("old")
    (notes / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match="is not a bundle folder"):
        export_bundle(checkpoint, notes, overwrite=True, int8="off", parity_images=2)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["best.pt", "last.pt"]
    assert (notes / "notes.txt").read_text() == "mine"


def test_overwrite_refuses_a_folder_under_a_bundle_files_name(tmp_path: Path) -> None:
    # Only files go by the bundle's names: a folder called report.json is someone's, and would be deleted.
    out = tmp_path / "bundle"
    (out / bundle.REPORT_FILE).mkdir(parents=True)
    (out / bundle.REPORT_FILE / "mine.txt").write_text("mine")
    with pytest.raises(ExportError, match="is not a bundle folder"):
        place.check_replaceable(out, tmp_path / "run" / "best.pt")


def test_overwrite_refuses_a_symbolic_link(dataset: Path, tmp_path: Path) -> None:
    # Replacing "current -> v3" would replace the link (and leave a hidden link behind), not the bundle.
    checkpoint = write_checkpoint(tmp_path / "run" / "best.pt", data=dataset)
    (tmp_path / "v3").mkdir()
    (tmp_path / "v3" / bundle.MODEL_FILE).write_text("old")
    (tmp_path / "current").symlink_to("v3")
    with pytest.raises(ExportError, match="is a symbolic link; pass the folder it points to"):
        export_bundle(checkpoint, tmp_path / "current", overwrite=True, int8="off", parity_images=2)
    assert (tmp_path / "current").is_symlink() and (tmp_path / "v3" / bundle.MODEL_FILE).read_text() == "old"


def test_ctrl_c_sigterm_and_sighup_wait_while_the_old_bundle_is_swapped_out(tmp_path: Path) -> None:
    # Between the two renames no bundle is at out: a signal there must not stop them. The process has other
    # threads (numpy's, torch's), so a signal mask would not hold it off; real signals are sent here.
    import signal

    from export.place import move_into_place

    staging, out = tmp_path / ".b.partial-x", tmp_path / "b"
    staging.mkdir()
    out.mkdir()
    (staging / bundle.MODEL_FILE).write_text("new")
    (out / bundle.MODEL_FILE).write_text("old")
    real_rename = Path.rename

    def rename(self: Path, target: Any) -> Any:
        moved = real_rename(self, target)
        for signum in stops:
            os.kill(os.getpid(), signum)
        return moved

    stops = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    before = [signal.getsignal(signum) for signum in stops]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Path, "rename", rename)
        move_into_place(staging, out)
    assert [signal.getsignal(signum) for signum in stops] == before
    assert (out / bundle.MODEL_FILE).read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


def test_a_failed_swap_puts_the_old_bundle_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The old bundle is moved aside first: if the new one then cannot take its place, out must not be empty.
    staging, out = tmp_path / ".b.partial-x", tmp_path / "b"
    staging.mkdir()
    out.mkdir()
    (out / bundle.MODEL_FILE).write_text("old")
    real_rename = Path.rename

    def rename(self: Path, target: Any) -> Any:
        if self == staging:
            raise OSError(28, "No space left on device")
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", rename)
    with pytest.raises(OSError, match="No space left"):
        place.move_into_place(staging, out)
    assert (out / bundle.MODEL_FILE).read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".b.partial-x", "b"]


@pytest.mark.parametrize("overwrite", [False, True])
def test_an_out_that_is_a_file_is_refused_as_one_whatever_overwrite_says(
    tmp_path: Path, overwrite: bool
) -> None:
    """Not 'pass --overwrite' first and, once passed, 'is not a directory'."""
    (tmp_path / "model.onnx").write_text("x")
    with pytest.raises(ExportError, match="model.onnx' exists and is not a folder; pick another --out"):
        export_bundle(tmp_path / "missing.pt", tmp_path / "model.onnx", overwrite=overwrite)
    assert (tmp_path / "model.onnx").read_text() == "x"


@pytest.mark.parametrize("overwrite", [False, True])
def test_an_out_that_is_a_mount_point_is_refused_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, overwrite: bool
) -> None:
    """`docker run -v "$PWD/b3:/bundle" … --out /bundle`: the finished bundle could not be renamed onto it
    (EBUSY), so the export would fail at its end."""
    out = tmp_path / "bundle"
    out.mkdir()
    real = os.path.ismount
    monkeypatch.setattr(os.path, "ismount", lambda p: Path(p) == out or real(p))
    with pytest.raises(ExportError, match=r"is a mount point, .* \(--out .*/bundle/bundle\) or mount"):
        export_bundle(tmp_path / "missing.pt", out, overwrite=overwrite)  # before the checkpoint is read
    assert list(out.iterdir()) == []


def test_an_out_under_a_file_is_refused_before_any_work(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ExportError, match="afile' is a file: the bundle folder .* cannot be made under it"):
        export_bundle(tmp_path / "missing.pt", tmp_path / "afile" / "b")  # before the checkpoint is read


def test_an_out_path_that_is_not_utf8_is_refused_before_any_work(tmp_path: Path) -> None:
    out = Path(os.fsdecode(bytes(tmp_path) + b"/Ecz\xe9ma"))  # a Latin-1 name; onnxruntime opens only UTF-8
    with pytest.raises(ExportError, match="is not a UTF-8 path, which onnxruntime cannot open"):
        export_bundle(tmp_path / "missing.pt", out)  # before the checkpoint is read
    assert list(tmp_path.iterdir()) == []


def test_an_opset_onnx_does_not_know_is_refused_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="opset 99 is newer than this onnx knows"):
        export_bundle(tmp_path / "missing.pt", tmp_path / "b", opset=99)  # before the checkpoint is read


def test_without_data_it_stops_unless_told_and_then_says_what_it_skipped(tmp_path: Path) -> None:
    checkpoint = write_checkpoint(tmp_path / "run" / "best.pt", data=None)
    # What --no-data costs is said where it is offered, the flags first (the page then never warns).
    with pytest.raises(ExportError, match=r"--no-data to export without it \(no confidence or out-of-dis"):
        export_bundle(checkpoint, tmp_path / "bundle")
    with pytest.raises(ExportError, match="does not exist.*--no-data"):
        export_bundle(checkpoint, tmp_path / "bundle", data=tmp_path / "missing")
    assert not (tmp_path / "bundle").exists()

    said: list[str] = []
    out = export_bundle(checkpoint, tmp_path / "bundle", no_data=True, parity_images=3, log=said.append)
    assert said[1].startswith("note: no dataset (--no-data): no confidence or out-of-distribution flags")
    report = json.loads((out / bundle.REPORT_FILE).read_text())
    assert report["calibration"]["temperature"] == 1.0 and "no dataset" in report["calibration"]["skipped"]
    assert report["parity"]["images"] == "generated images" and report["parity"]["n"] == 3
    assert report["int8"]["decision"] == "skipped"
    assert report["openvino_bf16"] == {"measured": False, "reason": "no dataset to compare on"}
    assert any("no dataset" in note for note in report["export"]["notes"])
    # No data, no thresholds: predictions carry no confidence fields, and the report says why.
    assert "no dataset" in report["uncertainty"]["skipped"]
    assert sorted(p.name for p in out.iterdir()) == [bundle.MODEL_FILE, bundle.REPORT_FILE]
    from runtime.engine import Engine

    engine = Engine(out, threads=1)
    assert engine.meta.thresholds == {} and engine.info()["uncertainty"]["fields"] == []
    assert engine.run(np.zeros((1, TINY_SIZE, TINY_SIZE, 3), np.uint8)).uncertainty == [{}]


def test_text_quoting_a_path_that_is_not_utf8_gets_replacement_characters(tmp_path: Path) -> None:
    import onnx

    from export.bundle import _load, _meta

    # Python hands such a path's bytes on as lone surrogates; the ONNX metadata (protobuf) takes only UTF-8.
    trained_on = "SkinDisease ImageFolder at /data/Ecz\udce9ma"
    _, _, info = _load(write_checkpoint(tmp_path / "best.pt", data=None, trained_on=trained_on))
    assert info["trained_on"] == "SkinDisease ImageFolder at /data/Ecz\ufffdma"
    onnx.helper.set_model_props(onnx.ModelProto(), _meta(info, temperature=1.0, created="").to_metadata())


def test_the_dataset_must_have_the_checkpoints_classes_in_the_same_order(dataset: Path) -> None:
    from export.bundle import _splits
    from tests.export.conftest import VAL_FRACTION

    config = {"data": str(dataset), "val_fraction": VAL_FRACTION, "seed": 7}
    info = {"config": config, "class_names": CLASSES, "data_fingerprint": ""}
    assert _splits(info, None, []).class_names == CLASSES
    for names in ([CLASSES[1], CLASSES[0], CLASSES[2]], [*CLASSES, "Warts"]):
        with pytest.raises(ExportError, match="has classes Acne, Eczema, Moles, the checkpoint"):
            _splits({**info, "class_names": names}, None, [])


@pytest.mark.parametrize("inside", ["train", "test"])
def test_data_inside_the_dataset_names_the_dataset_once(dataset: Path, inside: str) -> None:
    """skin-export --data SkinDisease/train: one folder to pass, then the way without a dataset."""
    from export.bundle import _splits

    info = {"config": {}, "class_names": CLASSES, "data_fingerprint": ""}
    with pytest.raises(ExportError) as caught:
        _splits(info, dataset / inside, [])
    said = str(caught.value)
    assert (
        said.count("pass --data") == 1 and f"pass --data {dataset}, or --no-data to export without it" in said
    )


def _trained_on(root: Path) -> dict[str, Any]:
    """What _splits reads of a checkpoint trained on ``root`` as it is now (its fingerprints included)."""
    from tests.export.conftest import VAL_FRACTION
    from training.data import load_splits

    splits = load_splits(root, val_fraction=VAL_FRACTION, seed=7)
    return {
        "config": {"data": str(root), "val_fraction": VAL_FRACTION, "seed": 7},
        "class_names": CLASSES,
        "data_fingerprint": bundle.fingerprint_files(splits.root, splits.files()),
        "train_fingerprint": splits.train_fingerprint(),
        "val_fingerprint": splits.val_fingerprint(),
        "val": splits.val,
    }


@pytest.mark.parametrize("change", ["added", "removed", "renamed"])
def test_a_train_folder_changed_since_training_is_refused(dataset: Path, tmp_path: Path, change: str) -> None:
    import shutil

    from export.bundle import _splits

    root = Path(shutil.copytree(dataset, tmp_path / "data"))
    info = _trained_on(root)
    first = sorted((root / "train" / "Acne").iterdir())[0]
    if change == "added":  # the rebuilt validation split would hold images the model trained on
        shutil.copy(first, first.with_name("new" + first.suffix))
    elif change == "removed":
        first.unlink()
    else:
        first.rename(first.with_name("renamed" + first.suffix))
    with pytest.raises(ExportError, match="added to or removed from the train folder .* --no-data") as caught:
        _splits(info, None, [])
    assert "\n" not in str(caught.value)
    # Older checkpoints carry no fingerprint of the train folder or of the split: only a note, as before.
    notes: list[str] = []
    _splits({**info, "train_fingerprint": "", "val_fingerprint": ""}, None, notes)
    assert notes == ["the dataset differs from the one the checkpoint was trained on (fingerprint mismatch)"]


def test_a_validation_split_carved_otherwise_than_in_training_is_refused(
    dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The same file names, another carve (another numpy's permutation): the temperature and thresholds would
    # be fitted on images the model trained on.
    from export.bundle import _splits
    from training import data

    info = _trained_on(dataset)
    real = data.split_class
    monkeypatch.setattr(data, "split_class", lambda files, f, seed, *more: real(files, f, seed + 1, *more))
    with pytest.raises(ExportError, match="validation split rebuilt from .* differs .* --no-data") as caught:
        _splits(info, None, [])
    assert "\n" not in str(caught.value)
    _splits({**info, "val_fingerprint": ""}, None, [])  # older checkpoints carry none: as before


def test_a_changed_test_folder_is_a_note_and_keeps_the_validation_split(
    dataset: Path, tmp_path: Path
) -> None:
    import shutil

    from export.bundle import _splits

    root = Path(shutil.copytree(dataset, tmp_path / "data"))
    info = _trained_on(root)
    notes: list[str] = []
    assert _splits(info, None, notes).val == info["val"] and notes == []
    extra = sorted((root / "test" / "Moles").iterdir())[0]
    shutil.copy(extra, extra.with_name("new" + extra.suffix))
    assert _splits(info, None, notes).val == info["val"]
    assert len(notes) == 1 and "fingerprint mismatch): in its test folder" in notes[0]


def test_an_export_against_a_changed_train_folder_writes_nothing(dataset: Path, tmp_path: Path) -> None:
    import shutil

    root = Path(shutil.copytree(dataset, tmp_path / "data"))
    info = _trained_on(root)
    checkpoint = write_checkpoint(
        tmp_path / "run" / "best.pt", data=root, net=_tiny_net(), train_fingerprint=info["train_fingerprint"]
    )
    sorted((root / "train" / "Eczema").iterdir())[0].unlink()
    with pytest.raises(ExportError, match="added to or removed from the train folder"):
        export_bundle(checkpoint, tmp_path / "bundle", int8="off")
    assert not (tmp_path / "bundle").exists()


@pytest.mark.parametrize("inside", ["train/Eczema/bundle", "test/bundle"])
def test_an_out_inside_the_dataset_is_refused(dataset: Path, tmp_path: Path, inside: str) -> None:
    # Its risk_coverage.png was then a training image of Eczema (or its folder a class of its own).
    import shutil

    root = Path(shutil.copytree(dataset, tmp_path / "data"))
    checkpoint = write_checkpoint(tmp_path / "run" / "best.pt", data=root)
    before = sorted(root.rglob("*"))
    with pytest.raises(ExportError, match=r"^--out .* is inside the dataset's (train|test)/ folder"):
        export_bundle(checkpoint, root / inside, int8="off", parity_images=1)
    assert sorted(root.rglob("*")) == before


def _tiny_net() -> Any:
    from tests.export.conftest import TINY_ARCH
    from training.model import build_model

    return build_model(TINY_ARCH, len(CLASSES), drop_rate=0.0)


def test_parity_failure_stops_the_export(dataset: Path, tmp_path: Path) -> None:
    # The checkpoint claims centre-cropping while training evaluated stretched images: the paths disagree.
    checkpoint = write_checkpoint(tmp_path / "best.pt", data=dataset, resize="center_crop")
    with pytest.raises(ExportError, match="parity failed"):
        export_bundle(checkpoint, tmp_path / "bundle", int8="off")
    assert list(tmp_path.iterdir()) == [checkpoint]


def test_a_failed_export_removes_the_folders_it_made_for_out(dataset: Path, tmp_path: Path) -> None:
    checkpoint = write_checkpoint(tmp_path / "best.pt", data=dataset, resize="center_crop")  # fails parity
    (tmp_path / "kept").mkdir()
    with pytest.raises(ExportError, match="parity failed"):
        export_bundle(checkpoint, tmp_path / "kept" / "new" / "deeper" / "bundle", int8="off")
    assert sorted(tmp_path.iterdir()) == [checkpoint, tmp_path / "kept"]
    assert list((tmp_path / "kept").iterdir()) == []  # only what the export made is gone


def test_a_folder_it_may_not_write_in_is_named_and_left_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Not the hidden staging folder that could not be made in it (a name the user never gave)."""
    import errno
    import tempfile

    checkpoint = write_checkpoint(tmp_path / "run" / "best.pt", data=None)

    def denied(*args: Any, dir: Any = None, **kwargs: Any) -> str:
        raise PermissionError(errno.EACCES, "Permission denied", os.path.join(dir, ".b.partial-x1y2"))

    monkeypatch.setattr(tempfile, "mkdtemp", denied)
    out = tmp_path / "shared" / "new" / "b"
    code = cli.main([str(checkpoint), "--out", str(out), "--no-data", "--quiet"])
    assert code == 2
    assert capsys.readouterr().err == f"skin-export: error: Permission denied: {out.parent}\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # the folders made for it are gone too


def test_a_full_scratch_disk_is_named_not_the_bundles(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Python's writes name no file: a full /tmp (int8's, parity's scratch files) was said to be --out's."""
    import errno
    import tempfile

    import training.synthetic

    checkpoint = write_checkpoint(tmp_path / "run" / "best.pt", data=None)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))

    def full(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(training.synthetic, "generate", full)  # --no-data's parity images, in scratch
    out = tmp_path / "b"
    assert cli.main([str(checkpoint), "--out", str(out), "--no-data", "--quiet"]) == 2
    said = "No space left on device in the scratch folder (TMPDIR picks another)"
    assert capsys.readouterr().err == f"skin-export: error: {said}: {scratch}\n"
    assert not out.exists() and list(scratch.iterdir()) == []


def test_parity_compares_the_logits_and_the_cam_too(exported: dict[str, Any], dataset: Path) -> None:
    import torch

    from export import parity
    from training.model import load_checkpoint, model_from_checkpoint

    ckpt = load_checkpoint(exported["checkpoint"])
    net = model_from_checkpoint(ckpt)

    class Changed(torch.nn.Module):
        """The same network with its logits shifted or its feature map scaled (the head undoes the scale)."""

        def __init__(self, shift: float = 0.0, scale: float = 1.0) -> None:
            super().__init__()
            self.inner, self.shift, self.scale = net, shift, scale

        def forward_features(self, x: Any) -> Any:
            return self.inner.forward_features(x) * self.scale

        def forward_head(self, features: Any) -> Any:
            return self.inner.forward_head(features / self.scale) + self.shift

        def forward(self, x: Any) -> Any:
            return self.forward_head(self.forward_features(x))

        def get_classifier(self) -> Any:
            return self.inner.get_classifier()

    files = sorted((dataset / "test").glob("*/*"))
    options = {
        "n": 3,
        "img_size": TINY_SIZE,
        "mean": ckpt["mean"],
        "std": ckpt["std"],
        "resize": "stretch",
        "resize_filter": "bilinear",
        "temperature": exported["report"]["calibration"]["temperature"],
    }
    model = (exported["out"] / bundle.MODEL_FILE).read_bytes()
    result = parity.check_parity(net, model, files, **options)
    assert result["logits_max_abs_diff"] < 1e-4 and result["cam_max_abs_diff"] < 1e-4
    # The same logits at another temperature: the top-1 class stays, the probabilities do not.
    with pytest.raises(ExportError, match="Δp"):
        parity.check_parity(net, model, files, **{**options, "temperature": options["temperature"] * 3})
    # Every logit 5 higher: the probabilities cannot tell, the logit scores (energy, max logit) can.
    with pytest.raises(ExportError, match="Δlogit"):
        parity.check_parity(Changed(shift=5.0), model, files, **options)
    # The same answers from a feature map twice as strong: only the heatmap can tell.
    with pytest.raises(ExportError, match="Δcam"):
        parity.check_parity(Changed(scale=2.0), model, files, **options)

    class NanMap(Changed):
        """Right answers from a feature map with a NaN in it: a difference of NaN must fail, not pass."""

        def forward_features(self, x: Any) -> Any:
            self.clean = self.inner.forward_features(x)
            return self.clean.index_put((torch.tensor([0]),), torch.tensor(float("nan")))

        def forward_head(self, features: Any) -> Any:
            return self.inner.forward_head(self.clean)

    with pytest.raises(ExportError, match=r"Δcam\| = nan"):
        parity.check_parity(NanMap(), model, files, **options)
    assert exported["report"]["parity"]["logits_max_abs_diff"] < 1e-4
    assert exported["report"]["parity"]["cam_max_abs_diff"] < 1e-4


class Payload:
    """Unpickling this would create a file: a weights_only load must refuse it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


def bad_checkpoints(tmp_path: Path, dataset: Path) -> dict[str, tuple[Path, str]]:
    import timm
    import torch

    from training.model import save_checkpoint

    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x80\x04not really a checkpoint" * 10)
    truncated = tmp_path / "truncated.pt"
    whole = write_checkpoint(tmp_path / "whole.pt", data=dataset, net=_tiny(3)).read_bytes()
    truncated.write_bytes(whole[: len(whole) // 2])
    pickled = tmp_path / "pickled.pt"
    torch.save(
        {"format": "skin-checkpoint/1", "class_names": CLASSES, "x": Payload(tmp_path / "pwned")}, pickled
    )
    other = tmp_path / "other.pt"
    resnet = timm.create_model("test_resnet", num_classes=3)
    save_checkpoint(
        other, model=resnet, meta={"arch": "test_efficientnet", "img_size": 64, "class_names": CLASSES}
    )
    unknown = write_checkpoint(tmp_path / "unknown.pt", data=dataset, arch="resnet", net=resnet)
    count = write_checkpoint(
        tmp_path / "count.pt", data=dataset, class_names=[*CLASSES, "Warts"], net=_tiny(3)
    )
    display = write_checkpoint(
        tmp_path / "display.pt", data=dataset, display_names=["only one"], net=_tiny(3)
    )
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    graph = tmp_path / "model.onnx"  # a bundle's graph, passed instead of the checkpoint
    graph.write_bytes(b"\x08\x08\x12\x07pytorch" * 10)
    weights = tmp_path / "weights.pt"
    torch.save(_tiny(3).state_dict(), weights)
    return {
        "missing": (tmp_path / "nope.pt", "does not exist"),
        "folder": (tmp_path, "is a folder; pass the checkpoint file in it"),
        "device": (Path("/dev/null"), "checkpoint '/dev/null' is not a regular file"),
        "corrupt": (corrupt, "not readable"),
        "truncated": (truncated, "is not readable: cut short"),
        "pickled-code": (pickled, "is not readable: it holds pickled Python objects"),
        "empty": (empty, "is empty (0 bytes)"),
        "onnx": (graph, "is an ONNX model, not a training checkpoint; pass the best.pt or last.pt"),
        "state-dict": (weights, "holds only weights (a state_dict), without the architecture"),
        "other-architecture": (other, "weights of another network than test_efficientnet"),
        "unknown-architecture": (unknown, "unknown architecture"),
        "class-count": (count, "has a head for 3 classes but lists 4 class names"),
        "display-names": (display, "display names"),
    }


def _tiny(num_classes: int) -> Any:
    from training.model import build_model

    return build_model("test_efficientnet", num_classes, drop_rate=0.0)


def test_bad_checkpoints_give_one_line_and_no_bundle(
    dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cases = bad_checkpoints(tmp_path, dataset)
    out = tmp_path / "bundles" / "b"
    for name, (path, expected) in cases.items():
        code = cli.main([str(path), "--out", str(out), "--quiet"])
        err = capsys.readouterr().err
        assert code == 2, name
        assert err.count("\n") == 1 and err.startswith("skin-export: error:") and expected in err, (name, err)
        assert not out.exists(), name
    assert not (tmp_path / "pwned").exists()  # the pickled payload never ran
    assert not (tmp_path / "bundles").exists() or list((tmp_path / "bundles").iterdir()) == []


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        pytest.param({"mean": "abc"}, "mean must be three finite numbers, not 'abc'", id="mean-text"),
        pytest.param({"mean": None}, "mean must be three finite numbers, not None", id="mean-none"),
        pytest.param({"mean": [0.5, float("nan"), 0.5]}, "mean must be three finite numbers", id="mean-nan"),
        pytest.param({"std": [0.2, 0.0, 0.2]}, "std must be three numbers above 0", id="std-zero"),
        pytest.param({"display_names": 5}, "display_names must be a list, not 5", id="display-int"),
        pytest.param({"display_names": [1, 2, 3]}, "display_names must be a list of 3", id="display-ints"),
        pytest.param({"class_names": [1, 2, 3]}, "class_names must be a list of names", id="class-ints"),
        pytest.param({"model_name": ["x"]}, "model_name must be text", id="model-name-list"),
        pytest.param({"epoch": "3"}, "epoch must be a whole number, not '3'", id="epoch-text"),
        pytest.param({"demo": "yes"}, "demo must be true or false", id="demo-text"),
        pytest.param({"config": "abc"}, "config must be a mapping", id="config-text"),
        pytest.param(
            {"config": {"val_fraction": "x"}}, "config.val_fraction must be a number", id="val-text"
        ),
        pytest.param({"config": {"val_fraction": 1.5}}, "config.val_fraction must be a number", id="val-big"),
        pytest.param({"config": {"seed": "x"}}, "config.seed must be a whole number", id="seed-text"),
        pytest.param({"config": {"seed": 1.0}}, "config.seed must be a whole number", id="seed-float"),
        pytest.param({"config": {"seed": -5}}, "config.seed must be a whole number", id="seed-negative"),
        pytest.param({"config": {"data": 5}}, "config.data must be a folder path, not 5", id="data-int"),
    ],
)
def test_checkpoint_fields_of_the_wrong_type_give_one_line_naming_the_field(
    fields: dict[str, Any],
    expected: str,
    dataset: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A checkpoint edited by hand or written by another tool: one line, no traceback, no bundle."""
    from tests.export.conftest import VAL_FRACTION

    if "config" in fields and isinstance(fields["config"], dict):
        fields = {
            "config": {"data": str(dataset), "val_fraction": VAL_FRACTION, "seed": 7, **fields["config"]}
        }
    checkpoint = write_checkpoint(tmp_path / "ck.pt", data=dataset, net=_tiny(3), **fields)
    out = tmp_path / "b"
    code = cli.main([str(checkpoint), "--out", str(out), "--quiet", "--int8", "off"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("skin-export: error:"), err
    assert expected in err and not out.exists(), err


def test_weights_saved_from_ddp_or_torch_compile_export(tmp_path: Path) -> None:
    """A script of one's own may save the wrapper's state_dict: the same network under prefixed names."""
    import torch

    checkpoint = write_checkpoint(tmp_path / "run" / "best.pt", data=None, net=_tiny(3))
    ckpt = torch.load(checkpoint, weights_only=True)
    plain = ckpt["model"]
    ckpt["model"] = {f"module._orig_mod.{k}": v for k, v in plain.items()}
    torch.save(ckpt, checkpoint)
    out = export_bundle(checkpoint, tmp_path / "b", no_data=True, parity_images=2)
    report = json.loads((out / bundle.REPORT_FILE).read_text())
    assert report["parity"]["top1_agree"] == 1.0
    # The network exported holds the checkpoint's weights, not a fresh network's.
    from export.bundle import _load

    _, net, _ = _load(checkpoint)
    assert all(torch.equal(net.state_dict()[k], v) for k, v in plain.items())


def test_pickle_payload_really_would_run(tmp_path: Path) -> None:
    """Guards the test above: plain unpickling of the payload does create the file."""
    pickle.loads(pickle.dumps(Payload(tmp_path / "ran")))
    assert (tmp_path / "ran").exists()


def test_cli_help_and_bad_arguments(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0 and "--no-data" in capsys.readouterr().out
    checkpoint = tmp_path / "x.pt"
    assert cli.main([str(checkpoint), "--out", str(tmp_path / "b"), "--parity-images", "0"]) == 2
    # The messages name the flag given: "(parity_images >= 1)" and "ood acceptance" were the code's words.
    assert capsys.readouterr().err == "skin-export: error: --parity-images must be at least 1, not 0\n"
    # --no-data generated every one of them first: 100000000 filled the disk, with nothing on screen
    assert cli.main([str(checkpoint), "--out", str(tmp_path / "b"), "--parity-images", "100000000"]) == 2
    err = capsys.readouterr().err
    assert err == "skin-export: error: --parity-images must be at most 1000, not 100000000\n"
    assert cli.main([str(checkpoint), "--out", str(tmp_path / "b"), "--ood-acceptance", "0"]) == 2
    assert (
        capsys.readouterr().err
        == "skin-export: error: --ood-acceptance must be above 0 and at most 1, not 0.0\n"
    )


def test_cli_exports_a_bundle_the_runtime_serves(
    dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """skin-export CHECKPOINT --out DIR --data ROOT: exit 0, and the bundle loads and predicts."""
    from runtime.engine import Engine

    checkpoint = write_checkpoint(tmp_path / "run" / "best.pt", data=dataset)
    out = tmp_path / "bundle"
    args = [
        str(checkpoint),
        "--out",
        str(out),
        "--data",
        str(dataset),
        "--int8",
        "off",
        "--parity-images",
        "4",
    ]
    assert cli.main(args) == 0
    assert "wrote" in capsys.readouterr().err.lower()
    report = json.loads((out / bundle.REPORT_FILE).read_text())
    assert report["parity"]["n"] == 4 and report["parity"]["top1_agree"] == 1.0
    engine = Engine(out)
    image = preprocess(sorted(dataset.glob("test/*/*"))[0], (TINY_SIZE, TINY_SIZE))
    assert engine.run(image[None]).probabilities.shape == (1, len(CLASSES))
    # Run again without --overwrite: refused in one line, and the bundle that is there stays intact.
    assert cli.main([*args, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("skin-export: error:") and err.count("\n") == 1
    assert Engine(out).sha256 == engine.sha256


def test_console_script_is_installed() -> None:
    from importlib.metadata import entry_points

    scripts = {e.name: e.value for e in entry_points(group="console_scripts")}
    assert scripts.get("skin-export") == "export.cli:main"


def test_quantize_can_be_limited_to_some_operator_types(tmp_path: Path) -> None:
    import onnx
    from PIL import Image

    from tests.bundle_factory import make_bundle
    from tests.images import COLOURS, encode

    directory = make_bundle(tmp_path / "tiny")
    images = []
    for i, rgb in enumerate(COLOURS.values()):
        path = tmp_path / f"c{i}.png"
        path.write_bytes(encode(Image.new("RGB", (40, 30), rgb), "PNG"))
        images.append(path)
    fp32 = (directory / "model.onnx").read_bytes()
    meta = onnx.load_from_string(fp32).metadata_props
    size = next(tuple(json.loads(m.value)) for m in meta if m.key == "skin.input_size")

    def quantized_ops(op_types: list[str] | None, name: str) -> set[str]:
        work = tmp_path / name
        work.mkdir()
        model = quantize.quantize(
            fp32, calibration=images, size=size, resize="stretch", resize_filter="bilinear",
            workdir=work, op_types=op_types,
        )  # fmt: skip
        # Ops with a DequantizeLinear output among their inputs run on quantized data.
        dq = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
        return {n.op_type for n in model.graph.node if n.op_type != "QuantizeLinear" and set(n.input) & dq}

    conv_only, every = quantized_ops(["Conv"], "conv"), quantized_ops(None, "all")
    assert "Conv" in conv_only and conv_only < every  # the others stay float


def test_a_run_report_about_another_epoch_is_not_attached_as_this_checkpoints(tmp_path: Path) -> None:
    from export.bundle import _base_report

    run = tmp_path / "run"
    run.mkdir()
    (run / "report.json").write_text(json.dumps({**TRAINING_REPORT, "best_epoch": 3}))
    notes: list[str] = []
    # last.pt of that run: epoch 5; the report's test numbers are best.pt's (epoch 3).
    assert _base_report(run / "last.pt", None, epoch=5, notes=notes) == {}
    assert notes == [
        "the run's report.json describes epoch 3 (best.pt), not this checkpoint's epoch 5: its test numbers "
        "are left out (pass --report to attach them anyway)"
    ]
    notes.clear()
    assert _base_report(run / "best.pt", None, epoch=3, notes=notes)["best_epoch"] == 3 and notes == []
    kept = _base_report(run / "last.pt", run / "report.json", epoch=5, notes=notes)
    assert kept["accuracy"] == TRAINING_REPORT["accuracy"]
    assert notes == ["the attached report's test numbers are epoch 3's; this checkpoint is epoch 5"]


def test_a_run_report_with_a_name_that_is_not_utf8_is_exported(
    dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # skin-train --model-name $'m\xff' keeps the lone surrogate in report.json (as "m\udcff"); copied into
    # the bundle's, the runtime's check of it failed export's verification with a traceback.
    checkpoint = write_checkpoint(tmp_path / "run" / "best.pt", data=dataset)
    (tmp_path / "run" / "report.json").write_text(json.dumps({**TRAINING_REPORT, "model_name": "m\udcff"}))
    out = tmp_path / "bundle"
    args = [str(checkpoint), "--out", str(out), "--no-data", "--parity-images", "1", "--quiet"]
    assert cli.main(args) == 0, capsys.readouterr().err
    assert json.loads((out / bundle.REPORT_FILE).read_text())["model_name"] == "m\ufffd"


def test_a_report_nested_too_deeply_to_parse_is_one_line(tmp_path: Path) -> None:
    from export.bundle import _base_report

    (tmp_path / "report.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ExportError, match="is not readable JSON"):
        _base_report(tmp_path / "best.pt", tmp_path / "report.json", epoch=3, notes=[])


def test_a_report_it_may_not_read_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from export.bundle import _base_report

    report = tmp_path / "report.json"
    report.write_text(json.dumps(TRAINING_REPORT))
    real = Path.read_text

    def read_text(self: Path, *args: Any, **kwargs: Any) -> str:
        if self == report:  # as a user other than root sees a file of mode 600 (root reads anything)
            raise PermissionError(13, "Permission denied", str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", read_text)
    for given in (report, None):  # with --report, and found beside the checkpoint
        with pytest.raises(ExportError) as caught:
            _base_report(tmp_path / "best.pt", given, epoch=3, notes=[])
        assert str(caught.value) == f"report {str(report)!r} cannot be read: Permission denied"  # no errno


@pytest.mark.parametrize("kind", ["folder", "fifo"])
def test_a_report_that_is_no_file_is_named_not_skipped(tmp_path: Path, kind: str) -> None:
    from export.bundle import _base_report

    report = tmp_path / "report.json"
    if kind == "folder":
        report.mkdir()
    else:
        os.mkfifo(report)  # never opened: that would wait for a writer
    what = "is a folder" if kind == "folder" else "is not a file"
    for given in (report, None):  # with --report, and found beside the checkpoint (was: no report, silently)
        with pytest.raises(ExportError, match=f"^report '{report}' {what}; pass --report"):
            _base_report(tmp_path / "best.pt", given, epoch=3, notes=[])
    assert _base_report(tmp_path / "other" / "best.pt", None, epoch=3, notes=[]) == {}  # none there: fine
