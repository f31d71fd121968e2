"""Checkpoint → bundle: export, calibrate, verify parity, try int8, write metadata and report, rename.

The bundle is built in a hidden temporary folder next to ``out`` and renamed into place only after it has
been opened and checked the way the runtime opens it, so a failed export never leaves half a bundle.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from export import place
from export.errors import ExportError
from runtime import bundle as contract

INT8_MODES = ("auto", "off")
# Said first: without thresholds the served answers never say "not confident" or "not a skin photo".
NO_DATA_NOTE = (
    "no dataset (--no-data): no confidence or out-of-distribution flags on predictions, temperature not "
    "fitted (T = 1), parity on generated images, no int8"
)
NO_THRESHOLDS_NOTE = "no dataset (--no-data): no confidence or out-of-distribution thresholds"
# Generated foreign images (text, solid colours, …): one set picks the out-of-distribution score, another one,
# never used for a choice, measures how many of them get flagged.
FOREIGN_PER_SET = 120
FOREIGN_PICK_SEED, FOREIGN_CHECK_SEED = 1, 2
# The score is chosen on four kinds; the check set adds two it never saw (grey stripes, clip-art shapes).
FOREIGN_PICK_KINDS = ("text", "solid", "gradient", "noise")
OOD_GRAPH_TOLERANCE = 1e-3  # relative: float32 in the graph, float64 when the threshold was set
# Parity images: --no-data generates them (~0.1 MB each, in the temporary folder) before the first is
# compared, so a typo's 100000000 filled the disk for hours; from the dataset, the validation split's first.
MAX_PARITY_IMAGES = 1000
MAX_FIT_IMAGES = 2000  # training images the Mahalanobis means and covariance are fitted on (a seeded sample)
TEXT_FIELDS = (
    "resize",
    "resize_filter",
    "model_name",
    "model_version",
    "trained_on",
    "data_fingerprint",
    "train_fingerprint",
    "val_fingerprint",
)


def export_bundle(
    checkpoint: str | Path,
    out: str | Path,
    *,
    data: str | Path | None = None,
    no_data: bool = False,
    report: str | Path | None = None,
    parity_images: int = 16,
    int8: str = "auto",
    opset: int = 18,
    target_precision: float = 0.9,
    ood_acceptance: float = 0.95,
    overwrite: bool = False,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Write the bundle directory ``out`` from a training checkpoint and return its path.

    ``data``: the dataset root (default: the one in the checkpoint's config); the validation split is rebuilt
    from the checkpoint's val_fraction and seed. Without a reachable dataset the export stops, unless
    ``no_data`` says to go on with T = 1, parity on generated images, no int8 and no decision thresholds.

    On the validation split: the confidence threshold whose accepted predictions reach ``target_precision``,
    and the out-of-distribution threshold that accepts ``ood_acceptance`` of them (export/uncertainty.py).
    """
    say = log or (lambda _: None)
    out = Path(out)
    if out.name in ("", ".."):  # "." or "..": the staging folder beside it needs the folder's own name
        out = Path(os.path.abspath(out))
    if int8 not in INT8_MODES:
        raise ExportError(f"--int8 must be one of {', '.join(INT8_MODES)}, not {int8!r}")
    if parity_images < 1:
        raise ExportError(f"--parity-images must be at least 1, not {parity_images}")
    if parity_images > MAX_PARITY_IMAGES:
        raise ExportError(f"--parity-images must be at most {MAX_PARITY_IMAGES}, not {parity_images}")
    for label, value in (("--target-precision", target_precision), ("--ood-acceptance", ood_acceptance)):
        if not 0.0 < value <= 1.0:
            raise ExportError(f"{label} must be above 0 and at most 1, not {value}")
    place.check_out(out, overwrite=overwrite, checkpoint=Path(checkpoint))
    if no_data and data is not None:
        raise ExportError("pass either a dataset or --no-data, not both")
    from export.onnx import check_opset

    check_opset(opset)

    ckpt, net, info = _load(Path(checkpoint))
    notes: list[str] = []
    base_report = _base_report(Path(checkpoint), report, epoch=info["epoch"], notes=notes)
    splits = None if no_data else _splits(info, data, notes)
    if splits is not None and (split := splits.folder_holding(out)) is not None:
        # Its risk_coverage.png an image of the class it is in (or its folder a class): other data next time
        raise ExportError(
            f"--out {str(out)!r} is inside the dataset's {split.name}/ folder, where the bundle's plot would "
            "be read as an image (and its folder as a class); pick another --out"
        )
    for note in notes:
        say(f"note: {note}")
    for left in place.left_behind(out):  # hidden, so never found otherwise; never removed: it may be running
        say(f"note: {left} is left from an export to {out} that was killed (or is one still running)")
    staging, made = place.make_staging(out)
    try:
        _build(
            staging,
            net,
            info,
            splits,
            base_report,
            notes=notes,
            parity_images=parity_images,
            int8=int8,
            opset=opset,
            target_precision=target_precision,
            ood_acceptance=ood_acceptance,
            say=say,
        )
        place.sync(staging)
        verify(staging)
        if out.exists() or out.is_symlink():  # again: made while the bundle was built (another export to it?)
            if not overwrite:
                raise ExportError(
                    f"{str(out)!r} appeared while the bundle was being built (another export to it?); "
                    "pass --overwrite to replace it"
                )
            place.check_replaceable(out, Path(checkpoint))
        place.move_into_place(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        place.remove_folders(made)
        raise
    place.sync_folder(out.parent)  # the rename on disk too
    say(f"wrote bundle {out}: {', '.join(sorted(p.name for p in out.iterdir()))}")
    return out


@contextlib.contextmanager
def _scratch_full(scratch: str) -> Iterator[None]:
    """A full disk under the scratch folder names that disk: Python's writes name no file, and the CLI would
    blame --out's disk for a full /tmp."""
    try:
        yield
    except OSError as exc:
        if exc.filename is not None or exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        where = "in the scratch folder (TMPDIR picks another)"
        raise OSError(exc.errno, f"{exc.strerror or exc} {where}", str(Path(scratch).parent)) from None


def _build(
    staging: Path,
    net: Any,
    info: dict[str, Any],
    splits: Any,
    report: dict[str, Any],
    *,
    notes: list[str],
    parity_images: int,
    int8: str,
    opset: int,
    target_precision: float,
    ood_acceptance: float,
    say: Callable[[str], None],
) -> None:
    import torch

    from export import bf16, calibrate, cam, infer, onnx, parity, quantize, uncertainty

    img_size = info["img_size"]
    size = (img_size, img_size)
    view = {"size": size, "resize": info["resize"], "resize_filter": info["resize_filter"]}

    say(f"exporting {info['arch']} at {img_size} px (opset {opset})")
    # With data, the core graph also returns pooled features of every stage to choose an OOD score from.
    core = onnx.export_core(
        net, size=size, mean=info["mean"], std=info["std"], opset=opset, pooled=splits is not None
    )
    has_cam = any(o.name == contract.CAM_OUTPUT for o in core.graph.output)
    grid = cam.cam_grid(net.forward_features, net, size) if has_cam else None
    if not has_cam:
        notes.append("no CAM output: the head is not global-average-pool + linear")
    elif grid is None:
        notes.append("the CAM's cell layout could not be traced: the heatmap spreads its cells evenly")
    pools = {o.name: o.doc_string for o in core.graph.output if o.name.startswith(onnx.POOL_PREFIX)}

    analysis = None
    if splits is not None:
        val_files = [p for p, _ in splits.val]
        say(f"fitting the temperature on {len(val_files)} validation images")
        # The core graph's logits (onnxruntime is ~3x faster than torch eager here; parity below shows
        # they are the same numbers).
        core_session = infer.session(onnx.to_bytes(core))
        fetch = [contract.LOGITS_OUTPUT, *pools]
        val_out, kept = infer.run_many(core_session, val_files, fetch, **view)
        if not kept:
            raise ExportError("no validation image could be read; cannot fit the temperature")
        val_labels = np.array([splits.val[i][1] for i in kept])
        try:
            calibration = calibrate.calibrate(val_out[contract.LOGITS_OUTPUT], val_labels)
        except ValueError as exc:
            raise ExportError(f"temperature scaling: {exc}") from None
        say(
            f"temperature {calibration['temperature']:.3f}: "
            f"ECE {calibration['ece_before']:.4f} → {calibration['ece_after']:.4f}, "
            f"NLL {calibration['nll_before']:.4f} → {calibration['nll_after']:.4f} (validation)"
        )
        if calibration["degenerate"]:
            note = degenerate_note(calibration["temperature"])
            say(f"note: {note}")
            notes.append(note)
        val_images = uncertainty.Images(
            val_out[contract.LOGITS_OUTPUT], {k: val_out[k] for k in pools}, val_labels
        )
        analysis, test_logits, test_labels = _uncertainty(
            core_session,
            splits,
            val_images,
            pools,
            view,
            temperature=float(calibration["temperature"]),
            target_precision=target_precision,
            acceptance=ood_acceptance,
            say=say,
        )
        thresholds, uncertainty_report = analysis.thresholds, analysis.report
        # The same numbers on images the temperature never saw: how well it carries over.
        test_cal = calibrate.measure(test_logits, test_labels, float(calibration["temperature"]))
        calibration["test"] = test_cal
        say(
            f"on the test split: ECE {test_cal['ece_before']:.4f} → {test_cal['ece_after']:.4f}, "
            f"NLL {test_cal['nll_before']:.4f} → {test_cal['nll_after']:.4f}"
        )
        if not uncertainty_report["ood"]["guarantee_holds"]:
            note = (
                f"only {len(val_labels)} validation images: too few for the out-of-distribution threshold to "
                f"keep {ood_acceptance:.0%} of new in-distribution images (expect fewer)"
            )
            say(f"note: {note}")
            notes.append(note)
    else:
        say(f"note: {NO_DATA_NOTE}")
        notes.append(NO_DATA_NOTE)
        calibration = {"temperature": 1.0, "skipped": NO_DATA_NOTE}
        thresholds, uncertainty_report = {}, {"skipped": NO_THRESHOLDS_NOTE}
    temperature = float(calibration["temperature"])

    created = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    meta = _meta(info, temperature=temperature, created=created, thresholds=thresholds, cam_grid=grid)
    scored = core
    if analysis is not None and analysis.graph_score is not None:
        scored = onnx.add_mahalanobis(core, *analysis.graph_score)
    final = onnx.add_temperature(scored, temperature)
    onnx.set_metadata(final, meta)
    fp32 = onnx.to_bytes(final)
    if analysis is not None and analysis.graph_score is not None:
        uncertainty_report["ood"]["graph_check"] = _check_graph_score(
            fp32, [val_files[i] for i in kept], val_images, analysis.graph_score, view
        )

    with tempfile.TemporaryDirectory(prefix="skin-export-") as scratch, _scratch_full(scratch):
        if splits is not None:
            parity_files, parity_source = [p for p, _ in splits.val], "validation split"
        else:
            from training.synthetic import generate

            root = generate(
                Path(scratch) / "generated",
                class_names=info["class_names"],
                train_per_class=0,
                test_per_class=max(1, -(-parity_images // len(info["class_names"]))),
            )
            parity_files, parity_source = sorted((root / "test").glob("*/*")), "generated images"
        say(f"checking parity with torch on {min(parity_images, len(parity_files))} images ({parity_source})")
        parity_result = parity.check_parity(
            net,
            fp32,
            parity_files,
            n=parity_images,
            img_size=img_size,
            mean=info["mean"],
            std=info["std"],
            resize=info["resize"],
            resize_filter=info["resize_filter"],
            temperature=temperature,
        )
        parity_result["images"] = parity_source
        diff, agree = parity_result["max_abs_diff"], parity_result["top1_agree"]
        say(f"parity: max |Δp| {diff:.2e}, top-1 agreement {agree:.0%}")

        int8_bytes = None
        if int8 == "off":
            int8_entry: dict[str, Any] = {"decision": "skipped", "reason": "int8 off"}
        elif splits is None:
            int8_entry = {"decision": "skipped", "reason": "no dataset to calibrate on and to compare with"}
        else:
            work = Path(scratch) / "int8"
            work.mkdir()
            int8_entry, int8_bytes = quantize.try_int8(
                fp32,
                calibration=[p for p, _ in splits.val],
                test=[p for p, _ in splits.test],
                workdir=work,
                log=say,
                **view,
            )
            if int8_bytes is not None and thresholds:
                # The runtime serves int8 when it ships: its flags must match the ones measured on fp32.
                pair = (infer.session(fp32), infer.session(int8_bytes))
                flags = _flag_agreement(pair, [p for p, _ in splits.test], thresholds, view)
                int8_entry["flag_agreement"] = flags
                worst = min(flags.values())
                if worst < quantize.MIN_AGREEMENT:
                    int8_bytes = None
                    int8_entry["decision"], int8_entry["file"] = "not shipped", None
                    int8_entry["reason"] = (
                        f"its confidence / in-distribution flags agree with fp32 on only {worst:.4f} of the "
                        f"test and foreign images (needs {quantize.MIN_AGREEMENT})"
                    )
        say(f"int8: {int8_entry['decision']} ({int8_entry['reason']})")  # skipped too, as bf16 says its why

        if splits is None:
            bf16_entry: dict[str, Any] = {"measured": False, "reason": "no dataset to compare on"}
        else:
            test_files = [p for p, _ in splits.test]
            bf16_entry = bf16.measure(
                fp32,
                test=test_files,
                flags=(lambda a, b: _flag_agreement((a, b), test_files, thresholds, view))
                if thresholds
                else None,
                log=say,
                **view,
            )
        if not bf16_entry["measured"]:
            say(f"bf16: not measured: {bf16_entry['reason']}")

    # No onnxruntime-optimized copy: the simplified graph is already folded (BN in Conv, constants), and
    # loading a saved basic-level copy of B3 measured no faster than this file (both ~150-300 ms here).
    (staging / contract.MODEL_FILE).write_bytes(fp32)
    files = [contract.MODEL_FILE]
    if analysis is not None:
        conf = thresholds["confidence"]
        uncertainty.plot_risk_coverage(
            analysis.curves,
            min_probability=conf["min_probability"],
            target_precision=conf["target_precision"],
            path=staging / uncertainty.PLOT_FILE,
        )
    if int8_bytes is not None:
        (staging / quantize.INT8_FILE).write_bytes(int8_bytes)
        int8_entry["sha256"] = contract.sha256_file(staging / quantize.INT8_FILE)
        files.append(quantize.INT8_FILE)
    cam_shape = next(
        (
            [d.dim_value for d in o.type.tensor_type.shape.dim[2:]]
            for o in final.graph.output
            if o.name == contract.CAM_OUTPUT
        ),
        None,
    )
    report.update(
        {
            "calibration": calibration,
            "parity": parity_result,
            "int8": int8_entry,
            "openvino_bf16": bf16_entry,
            "uncertainty": uncertainty_report,
            "export": {
                "opset": opset,
                "exporter": onnx.EXPORTER,
                "torch": str(torch.__version__),
                "simplified": "onnxsim",
                "onnx_sha256": contract.sha256_file(staging / contract.MODEL_FILE),
                "created": created,
                "checkpoint_epoch": info["epoch"],
                "cam": cam_shape,
                "cam_grid": grid,
                "files": files,
                "notes": notes,
            },
        }
    )
    (staging / contract.REPORT_FILE).write_text(
        json.dumps(report, indent=2, default=_jsonable) + "\n", encoding="utf-8"
    )


def verify(directory: Path) -> contract.BundleMeta:
    """Open every graph of the bundle as the runtime does and check it against the contract."""
    from export.infer import session
    from export.quantize import INT8_FILE

    meta = None
    for name in (contract.MODEL_FILE, INT8_FILE):
        path = directory / name
        if name != contract.MODEL_FILE and not path.is_file():
            continue
        try:
            sess = session(path)
            meta = contract.BundleMeta.from_metadata(sess.get_modelmeta().custom_metadata_map)
            first = sess.get_inputs()[0]
            contract.check_graph(
                meta,
                input_name=first.name,
                input_type=first.type,
                input_shape=first.shape,
                outputs={o.name: o.shape for o in sess.get_outputs()},
            )
            h, w = meta.input_size
            probs = sess.run(
                [contract.PROBS_OUTPUT], {contract.INPUT_NAME: np.zeros((2, h, w, 3), np.uint8)}
            )[0]
        except contract.BundleError as exc:
            raise ExportError(f"the written {name} breaks the bundle contract: {exc}") from None
        if probs.shape != (2, meta.num_classes) or not np.allclose(probs.sum(axis=1), 1.0, atol=1e-4):
            raise ExportError(f"the written {name} does not return probabilities for a batch of 2")
    try:
        contract.load_report(directory)
    except contract.BundleError as exc:  # one line, as the graph's own checks above
        raise ExportError(f"the written {contract.REPORT_FILE} breaks the bundle contract: {exc}") from None
    assert meta is not None
    return meta


def _load(path: Path) -> tuple[dict[str, Any], Any, dict[str, Any]]:
    """The checkpoint, its network and its description with defaults for optional keys."""
    from training.model import IMAGENET_MEAN, IMAGENET_STD, ModelError, load_checkpoint, model_from_checkpoint

    try:
        with warnings.catch_warnings():
            # torch warns about the pickle protocol of a file it is about to refuse; the error says enough.
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            ckpt = load_checkpoint(path)
    except ModelError as exc:
        raise ExportError(str(exc)) from None
    where = f"checkpoint {str(path)!r}"
    names = ckpt["class_names"]
    if not all(isinstance(n, str) for n in names):
        raise ExportError(f"{where}: class_names must be a list of names, not {_brief(names)}")
    img_size = ckpt.get("img_size")
    if isinstance(img_size, list | tuple) and len(img_size) == 2 and img_size[0] == img_size[1]:
        img_size = img_size[0]
    if not isinstance(img_size, int) or isinstance(img_size, bool) or img_size < 16:
        raise ExportError(f"{where} has no usable img_size ({img_size!r})")
    if not isinstance(ckpt.get("arch"), str) or not isinstance(ckpt.get("model"), dict):
        raise ExportError(f"{where} lacks its architecture or weights")
    # Every field is checked for the type training writes: a file edited by hand (or by another tool) must
    # give one line naming the field, not a traceback or a wrong bundle.
    display = _field(ckpt, "display_names", list, "a list", where) or contract.display_names(names)
    if len(display) != len(names) or not all(isinstance(d, str) for d in display):
        raise ExportError(
            f"{where}: display_names must be a list of {len(names)} display names, one per class, "
            f"not {_brief(display)}"
        )
    # A path's bytes that are not UTF-8 (a dataset folder named in Latin-1) come as lone surrogates, which the
    # ONNX metadata cannot hold: trained_on quotes the path, so they become U+FFFD.
    fields = {key: _field(ckpt, key, str, "text", where) or "" for key in TEXT_FIELDS}
    text = _valid_text(fields)
    epoch = _field(ckpt, "epoch", int, "a whole number", where)
    info = {
        "arch": ckpt["arch"],
        "img_size": img_size,
        "class_names": list(names),
        "display_names": list(display),
        "mean": _vector(ckpt, "mean", IMAGENET_MEAN, where),
        "std": _vector(ckpt, "std", IMAGENET_STD, where, positive=True),  # divided by in the graph
        "resize": text["resize"] or "stretch",
        "resize_filter": text["resize_filter"] or "bilinear",
        "model_name": text["model_name"] or f"skin-{ckpt['arch']}",
        "model_version": text["model_version"] or f"epoch-{epoch or 0}",
        "trained_on": text["trained_on"],
        "demo": bool(_field(ckpt, "demo", bool, "true or false", where)),
        "data_fingerprint": text["data_fingerprint"],
        "train_fingerprint": text["train_fingerprint"],  # absent (empty) in checkpoints of earlier versions
        "val_fingerprint": text["val_fingerprint"],  # the same
        "epoch": epoch,
        "config": _field(ckpt, "config", dict, "a mapping of training options", where) or {},
    }
    try:
        _meta(info, temperature=1.0, created="")  # the contract's checks, before any slow work
    except contract.BundleError as exc:
        raise ExportError(f"{where}: {exc}") from None
    ckpt = {**ckpt, "model": _unwrapped(ckpt["model"])}
    try:
        net = model_from_checkpoint(ckpt)
    except ModelError as exc:
        raise ExportError(_mismatch(ckpt, path) or str(exc)) from None
    except Exception as exc:  # a timm constructor refusing odd values
        raise ExportError(
            f"cannot rebuild {ckpt['arch']!r} from {str(path)!r} ({type(exc).__name__})"
        ) from None
    return ckpt, net, info


def _unwrapped(state: dict[str, Any]) -> dict[str, Any]:
    """Weights saved from a wrapper, under the network's own names: skin-train saves the network unwrapped,
    a script of one's own may save DDP's (module.) or torch.compile's (_orig_mod.)."""
    for prefix in ("module.", "_orig_mod."):
        if state and all(isinstance(k, str) and k.startswith(prefix) for k in state):
            return _unwrapped({k.removeprefix(prefix): v for k, v in state.items()})
    return state


def _field(ckpt: dict[str, Any], key: str, kind: type, what: str, where: str) -> Any:
    """``ckpt[key]`` when it has the type training writes, None when absent; else one line naming it."""
    value = ckpt.get(key)
    # bool is an int to Python: a flag is never a number here, nor a number a flag.
    if value is None or (isinstance(value, kind) and isinstance(value, bool) == (kind is bool)):
        return value
    raise ExportError(f"{where}: {key} must be {what}, not {_brief(value)}")


def _vector(
    ckpt: dict[str, Any], key: str, default: tuple[float, ...], where: str, *, positive: bool = False
) -> tuple[float, ...]:
    """mean or std: three finite numbers (std above 0); the ImageNet values when the key is absent."""
    if key not in ckpt:
        return default
    value = ckpt[key]
    ok = isinstance(value, list | tuple) and len(value) == 3 and all(_finite(v) for v in value)
    if not ok or (positive and min(value) <= 0):
        raise ExportError(
            f"{where}: {key} must be three {'numbers above 0' if positive else 'finite numbers'}, "
            f"not {_brief(value)}"
        )
    return tuple(float(v) for v in value)


def _finite(value: Any) -> bool:
    """A real number float() takes as it is: not a flag, nan, inf or an int beyond float's range."""
    return isinstance(value, int | float) and not isinstance(value, bool) and abs(value) <= sys.float_info.max


def _brief(value: Any) -> str:
    """A value for a one-line message: short, on one line, whatever its type (tensors included)."""
    import reprlib

    return " ".join(reprlib.repr(value).split())


def _mismatch(ckpt: dict[str, Any], path: Path) -> str | None:
    """Say why the weights do not fit: a head for another class count, or another network."""
    from training.model import build_model

    names, arch = ckpt["class_names"], ckpt["arch"]
    try:
        fresh = build_model(arch, len(names), drop_rate=0.0)
    except Exception:
        return None
    own, theirs = fresh.state_dict(), ckpt["model"]
    if set(own) != set(theirs):
        return (
            f"checkpoint {str(path)!r} holds weights of another network than {arch} "
            f"({len(set(own) - set(theirs))} tensors missing, {len(set(theirs) - set(own))} unexpected)"
        )
    head = f"{getattr(fresh, 'pretrained_cfg', {}).get('classifier', 'classifier')}.weight"
    bad = [k for k, v in own.items() if getattr(theirs[k], "shape", None) != v.shape]
    if bad == [head, head.replace(".weight", ".bias")] or bad == [head]:
        return (
            f"checkpoint {str(path)!r} has a head for {theirs[head].shape[0]} classes "
            f"but lists {len(names)} class names"
        )
    if bad:
        return (
            f"checkpoint {str(path)!r}: {len(bad)} tensors have other shapes than {arch} expects ({bad[0]})"
        )
    return None


def _uncertainty(
    sess: Any,
    splits: Any,
    val: Any,
    pools: dict[str, str],
    view: dict[str, Any],
    *,
    temperature: float,
    target_precision: float,
    acceptance: float,
    say: Callable[[str], None],
) -> tuple[Any, np.ndarray, np.ndarray]:
    """Thresholds from the validation split, measured on the test split and on generated foreign images;
    also the test split's logits and labels."""
    from export import infer, uncertainty

    fetch = [contract.LOGITS_OUTPUT, *pools]
    order = sorted(np.random.default_rng(0).permutation(len(splits.train))[:MAX_FIT_IMAGES])
    train_items = [splits.train[i] for i in order]
    say(
        f"setting thresholds (target precision {target_precision:.0%}, in-distribution acceptance "
        f"{acceptance:.0%}) on the validation split: {len(pools)} feature scores fitted on "
        f"{len(train_items)} training images, checked on the test split and {FOREIGN_PER_SET} generated "
        "foreign images"
    )

    def images(items: list[tuple[Path, int]]) -> Any:
        out, kept = infer.run_many(sess, [p for p, _ in items], fetch, **view)
        labels = np.array([items[i][1] for i in kept], dtype=np.int64)
        return uncertainty.Images(out[contract.LOGITS_OUTPUT], {k: out[k] for k in pools}, labels)

    train, test = images(train_items), images(splits.test)
    if len(test.logits) == 0 or len(train.logits) < 2:
        raise ExportError("too few readable training or test images to set and check the thresholds")
    foreign = [
        _foreign(sess, fetch, view, FOREIGN_PICK_SEED, kinds=FOREIGN_PICK_KINDS),
        _foreign(sess, fetch, view, FOREIGN_CHECK_SEED),
    ]
    try:
        analysis = uncertainty.analyse(
            temperature=temperature,
            train=train,
            val=val,
            test=test,
            foreign_pick=foreign[0],
            foreign_check=foreign[1],
            pool_descriptions=pools,
            target_precision=target_precision,
            acceptance=acceptance,
        )
    except ValueError as exc:
        raise ExportError(f"thresholds: {exc}") from None
    say(_threshold_line(analysis.thresholds))
    return analysis, test.logits, test.labels


def _foreign_pixels(
    view: dict[str, Any], seed: int, kinds: tuple[str, ...] | None = None
) -> tuple[np.ndarray, list[str]]:
    """Generated foreign images as the graph sees them: PNG files through the runtime's decode and resize."""
    import io

    from PIL import Image

    from runtime.preprocess import preprocess
    from training.synthetic import FOREIGN_KINDS, foreign_images

    h, w = view["size"]
    # Not at the input size, so that resizing happens as it does for uploads.
    images = foreign_images(
        FOREIGN_PER_SET, seed=seed, size=(h * 5 // 4, w * 3 // 2), kinds=kinds or FOREIGN_KINDS
    )
    resize = {"resize_mode": view["resize"], "resize_filter": view["resize_filter"]}
    pixels = []
    for _, array in images:
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="PNG")
        pixels.append(preprocess(buffer.getvalue(), view["size"], **resize))
    return np.stack(pixels), [kind for kind, _ in images]


def _foreign(
    sess: Any, fetch: list[str], view: dict[str, Any], seed: int, kinds: tuple[str, ...] | None = None
) -> Any:
    from export import infer, uncertainty

    pixels, kinds_seen = _foreign_pixels(view, seed, kinds)
    out = infer.run_pixels(sess, pixels, fetch)
    pools = {k: v for k, v in out.items() if k != contract.LOGITS_OUTPUT}
    return uncertainty.Images(out[contract.LOGITS_OUTPUT], pools, kinds=kinds_seen)


def _flag_agreement(
    sessions: tuple[Any, Any], test: list[Path], thresholds: dict[str, Any], view: dict[str, Any]
) -> dict[str, float]:
    """Share of test and foreign images on which both sessions give the same confidence / OOD flag."""
    from export import infer
    from runtime.uncertainty import CONFIDENCE, IN_DISTRIBUTION, Policy

    outputs = {contract.PROBS_OUTPUT, contract.LOGITS_OUTPUT, contract.OOD_OUTPUT}
    policy = Policy.from_thresholds(thresholds, outputs=outputs)
    fetch = [contract.PROBS_OUTPUT, *policy.needs]
    foreign, _ = _foreign_pixels(view, FOREIGN_CHECK_SEED)
    judged = []
    for sess, out in zip(sessions, infer.run_each(sessions, test, fetch, **view)[0], strict=True):
        more = infer.run_pixels(sess, foreign, fetch)
        judged.append(policy.judge({k: np.concatenate([out[k], more[k]]) for k in fetch}))
    return {
        field: float(np.mean([a.get(field) == b.get(field) for a, b in zip(*judged, strict=True)]))
        for field in (CONFIDENCE, IN_DISTRIBUTION)
    }


def _check_graph_score(
    fp32: bytes, files: list[Path], val: Any, graph_score: tuple[str, Any, Any], view: dict[str, Any]
) -> dict[str, Any]:
    """The finished graph's ood_score against the float64 distances the threshold was set on."""
    from export import infer, uncertainty

    source, means, whitening = graph_score
    chosen = files[: infer.BATCH]
    got, kept = infer.run_many(infer.session(fp32), chosen, [contract.OOD_OUTPUT], **view)
    expected = uncertainty.mahalanobis(val.pools[source][kept], means, whitening)
    diff = np.abs(got[contract.OOD_OUTPUT] - expected) / np.maximum(np.abs(expected), 1.0)
    worst = float(diff.max()) if len(diff) else 0.0
    if worst > OOD_GRAPH_TOLERANCE:
        raise ExportError(
            f"the graph's ood_score is off the distances its threshold was set on ({worst:.2e} relative)"
        )
    return {"n": len(kept), "max_rel_diff": worst}


def degenerate_note(temperature: float) -> str:
    """What a temperature at a bound of its search means: it depends on which bound."""
    if temperature > 1:  # flatter was always better: the model's top class is mostly wrong on these images
        return (
            f"temperature {temperature:.3g} is no real fit: the validation NLL keeps falling as the "
            "probabilities flatten towards uniform (the model is rarely right on the validation images?), so "
            "they say little; a better-trained model would fix it"
        )
    return (
        f"temperature {temperature:.3g} is no real fit: the validation NLL keeps falling towards a bound "
        "(every validation image right?), so the probabilities are likely overconfident on new images; more "
        "or harder validation images would fix it"
    )


def _threshold_line(thresholds: dict[str, Any]) -> str:
    conf, ood = thresholds["confidence"], thresholds["ood"]
    reached = "" if conf["reached_on_validation"] else " (target not reached on validation: all low)"

    def pct(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.0%}"

    return (
        f"confidence: top-1 probability ≥ {conf['min_probability']:.3f}{reached} keeps "
        f"{pct(conf['test_coverage'])} of the test split at precision {pct(conf['test_precision'])}; "
        f"out of distribution: {ood['score']} accepts {pct(ood['test_acceptance'])} of the test split "
        f"and flags {pct(ood['foreign_flagged'])} of generated foreign images"
    )


def _meta(
    info: dict[str, Any],
    *,
    temperature: float,
    created: str,
    thresholds: dict[str, Any] | None = None,
    cam_grid: dict[str, Any] | None = None,
) -> contract.BundleMeta:
    meta = contract.BundleMeta(
        class_names=info["class_names"],
        display_names=info["display_names"],
        input_size=(info["img_size"], info["img_size"]),
        model_name=info["model_name"],
        model_version=info["model_version"],
        architecture=info["arch"],
        resize=info["resize"],
        resize_filter=info["resize_filter"],
        temperature=temperature,
        created=created,
        data_fingerprint=info["data_fingerprint"],
        trained_on=info["trained_on"],
        demo=info["demo"],
        mean=info["mean"],
        std=info["std"],
        thresholds=thresholds or {},
        cam_grid=cam_grid or {},
    )
    contract.validate(meta)
    return meta


def _splits(info: dict[str, Any], data: str | Path | None, notes: list[str]) -> Any:
    from training.config import SEEDS
    from training.data import DataError, load_splits

    config, class_names = info["config"], info["class_names"]
    root = data if data is not None else config.get("data")
    no_data = (
        "or --no-data to export without it (no confidence or out-of-distribution flags, T = 1, parity on "
        "generated images, no int8)"
    )
    hint = f"pass --data ROOT, {no_data}"
    if not root:
        raise ExportError(f"the checkpoint names no dataset; {hint}")
    if not isinstance(root, str | Path):
        raise ExportError(f"the checkpoint's config.data must be a folder path, not {_brief(root)}; {hint}")
    # The validation split is rebuilt from these two: checked as training checks them (no traceback).
    val_fraction, seed = config.get("val_fraction", 0.15), config.get("seed", 42)
    number = isinstance(val_fraction, int | float) and not isinstance(val_fraction, bool)
    if not (number and 0.0 < val_fraction < 1.0):
        raise ExportError(
            "the checkpoint's config.val_fraction must be a number between 0 and 1, "
            f"not {_brief(val_fraction)}"
        )
    if not isinstance(seed, int) or isinstance(seed, bool) or seed not in SEEDS:  # as training takes it
        raise ExportError(
            f"the checkpoint's config.seed must be a whole number in 0..{SEEDS[-1]}, not {_brief(seed)}"
        )
    try:
        splits = load_splits(root, val_fraction=float(val_fraction), seed=seed)
    except DataError as exc:  # one that names the folder to pass (the dataset above or below) says it once
        raise ExportError(f"{exc}, {no_data}" if " pass --data " in str(exc) else f"{exc}; {hint}") from None
    if splits.class_names != class_names:
        raise ExportError(
            f"the dataset at {str(root)!r} has classes {_short(splits.class_names)}, "
            f"the checkpoint {_short(class_names)}; {hint}"
        )
    if not splits.val or not splits.test:
        raise ExportError(f"the dataset at {str(root)!r} yields an empty validation or test split")
    trained = info.get("train_fingerprint", "")
    if trained and trained != splits.train_fingerprint():
        raise ExportError(
            f"images were added to or removed from the train folder of {str(root)!r} since the checkpoint "
            "was trained, so the validation split rebuilt from it would hold images the model trained on "
            "(the temperature and thresholds fitted there would be overconfident); put them back, or pass "
            "--data with the dataset as it was, or --no-data to export without it"
        )
    carved = info.get("val_fingerprint", "")
    if carved and carved != splits.val_fingerprint():
        raise ExportError(
            f"the validation split rebuilt from {str(root)!r} differs from the one the checkpoint was "
            "validated on, the file names being the same (another numpy, or files since linked to one "
            "another or copied apart), so it would hold images the model trained on; export where numpy and "
            "the files are as in training, or pass --no-data to export without it"
        )
    fingerprint = info["data_fingerprint"]
    if fingerprint and fingerprint != contract.fingerprint_files(splits.root, splits.files()):
        notes.append(
            "the dataset differs from the one the checkpoint was trained on (fingerprint mismatch)"
            + (
                ": in its test folder or in an image changed in place; the validation split is the one "
                "training held out"
                if trained
                else ""
            )
        )
    return splits


def _short(names: list[str]) -> str:
    return ", ".join(names[:5]) + (f" … ({len(names)} in all)" if len(names) > 5 else "")


def _base_report(
    checkpoint: Path, report: str | Path | None, *, epoch: int | None, notes: list[str]
) -> dict[str, Any]:
    """The training run's report.json (explicit path, or next to the checkpoint), else an empty one.

    A run's report describes its best epoch (best.pt). Found next to another checkpoint of the run (last.pt),
    it is left out, with a note: its test numbers would be shown as this model's. Given with --report, it is
    kept, with a note saying which epoch its numbers are from.
    """
    path = Path(report) if report is not None else checkpoint.parent / contract.REPORT_FILE
    if report is None and not path.exists():  # a checkpoint without its run's report: none is attached
        return {}
    if not path.is_file():  # a folder or a FIFO named report.json is no run's report, nor a missing one
        what = "does not exist" if not path.exists() else "is a folder" if path.is_dir() else "is not a file"
        raise ExportError(f"report {str(path)!r} {what}; pass --report with the run's report.json file")
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:  # a permission, not the file's contents
        reason = exc.strerror or type(exc).__name__
        raise ExportError(f"report {str(path)!r} cannot be read: {reason}") from None
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ExportError(f"report {str(path)!r} is not readable JSON ({exc})") from None
    if not isinstance(loaded, dict):
        raise ExportError(f"report {str(path)!r} must hold a JSON object")
    loaded = _valid_text(loaded)
    best = loaded.get("best_epoch")
    if isinstance(best, int) and not isinstance(best, bool) and isinstance(epoch, int) and best != epoch:
        if report is None:
            notes.append(
                f"the run's report.json describes epoch {best} (best.pt), not this checkpoint's epoch "
                f"{epoch}: its test numbers are left out (pass --report to attach them anyway)"
            )
            return {}
        notes.append(
            f"the attached report's test numbers are epoch {best}'s; this checkpoint is epoch {epoch}"
        )
    return loaded


def _valid_text(value: Any) -> Any:
    """``value`` with lone surrogates as U+FFFD (the metadata's text fields; a run's report.json, which keeps
    a --model-name given in bytes that are not UTF-8 so, and which the runtime refuses to send on)."""
    if isinstance(value, str):
        return contract.LONE_SURROGATE.sub("\ufffd", value)
    if isinstance(value, dict):
        return {_valid_text(k): _valid_text(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_valid_text(v) for v in value]
    return value


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")
