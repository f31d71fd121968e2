"""The bundle contract: what export writes and the runtime reads.

A bundle is a directory holding ``model.onnx`` and, optionally, ``model.int8.onnx``, ``report.json`` and
export's ``risk_coverage.png`` (for people; never read here). The ONNX file describes itself through
``metadata_props`` (string keys and values, defined below). This module is stdlib-only so
that export (torch side) and runtime (torch-free side) share it without dragging anything in.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shlex
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

CONTRACT_VERSION = 1
MODEL_FILE = "model.onnx"  # fp32, the graph that passed the parity check
INT8_MODEL_FILE = "model.int8.onnx"  # optional: written only when it agrees with fp32 and is faster
MODEL_VARIANTS = ("auto", "fp32", "int8")
REPORT_FILE = "report.json"

# Graph interface.
INPUT_NAME = "image"  # uint8 RGB, NHWC [batch, H, W, 3]
PROBS_OUTPUT = "probabilities"  # float32 [batch, num_classes], softmax with temperature applied
CAM_OUTPUT = "cam"  # optional, float32 [batch, num_classes, h, w]
LOGITS_OUTPUT = "logits"  # optional, float32 [batch, num_classes], before temperature
OOD_OUTPUT = "ood_score"  # optional, float32 [batch]: out-of-distribution score (runtime/uncertainty.py)

# A str's bytes that were not UTF-8 (a file or folder named in Latin-1), kept by Python as lone surrogates:
# JSON and onnxruntime's paths cannot carry them.
LONE_SURROGATE = re.compile("[\ud800-\udfff]")
RESIZE_MODES = ("stretch", "center_crop")
RESIZE_FILTERS = ("bilinear", "bicubic")

# metadata_props keys. Lists and dicts are JSON-encoded strings.
K_CONTRACT = "skin.contract_version"
K_CLASSES = "skin.class_names"
K_DISPLAY = "skin.display_names"
K_INPUT_SIZE = "skin.input_size"
K_RESIZE = "skin.resize"
K_NAME = "skin.model_name"
K_VERSION = "skin.model_version"
K_ARCH = "skin.architecture"
K_TEMPERATURE = "skin.temperature"
K_CREATED = "skin.created"
K_FINGERPRINT = "skin.data_fingerprint"
K_TRAINED_ON = "skin.trained_on"
K_DEMO = "skin.demo"
K_MEAN = "skin.mean"
K_STD = "skin.std"
K_THRESHOLDS = "skin.thresholds"
K_CAM_GRID = "skin.cam_grid"

# Folder names of the dataset mapped to names for people; unknown names fall back to underscores → spaces.
DISPLAY_NAMES = {
    "Acne": "Acne",
    "Actinic_Keratosis": "Actinic Keratosis",
    "Benign_tumors": "Benign Tumors",
    "Bullous": "Bullous Disease",
    "Candidiasis": "Candidiasis",
    "DrugEruption": "Drug Eruption",
    "Eczema": "Eczema",
    "Infestations_Bites": "Infestations & Bites",
    "Lichen": "Lichen Planus",
    "Lupus": "Lupus",
    "Moles": "Moles",
    "Psoriasis": "Psoriasis",
    "Rosacea": "Rosacea",
    "Seborrh_Keratoses": "Seborrheic Keratoses",
    "SkinCancer": "Skin Cancer",
    "Sun_Sunlight_Damage": "Sun/Sunlight Damage",
    "Tinea": "Tinea",
    "Unknown_Normal": "Unknown/Normal",
    "Vascular_Tumors": "Vascular Tumors",
    "Vasculitis": "Vasculitis",
    "Vitiligo": "Vitiligo",
    "Warts": "Warts",
}


class BundleError(Exception):
    """A bundle that cannot be served; the message is one line for people."""


def display_name(class_name: str) -> str:
    """The reference data set's name for people of one of its folders."""
    return DISPLAY_NAMES.get(class_name, class_name.replace("_", " "))


def display_names(class_names: list[str]) -> list[str]:
    """Names for people: the reference data set's when every class is one of its 22 (all or some); another
    data set's folder names as they are, underscores as spaces (a clinic's "Lichen" folder, of lichen
    sclerosus, beside folders of its own, was served as "Lichen Planus")."""
    if set(class_names) <= DISPLAY_NAMES.keys():
        return [display_name(n) for n in class_names]
    return [n.replace("_", " ") for n in class_names]


@dataclass(frozen=True)
class BundleMeta:
    class_names: list[str]
    display_names: list[str]
    input_size: tuple[int, int]  # (height, width)
    model_name: str
    model_version: str
    architecture: str = ""
    resize: str = "stretch"
    resize_filter: str = "bilinear"
    temperature: float = 1.0
    created: str = ""
    data_fingerprint: str = ""
    trained_on: str = ""
    demo: bool = False
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    # Decision thresholds (e.g. confidence, out-of-distribution); empty when the bundle has none.
    thresholds: dict[str, Any] = field(default_factory=dict)
    # Where the CAM's cells sit on the input, traced at export (export/cam.py): {"stride": [sy, sx], "offset":
    # [oy, ox]} in input pixels, cell (r, c) centred at (oy + sy * r, ox + sx * c). Empty: not known, and
    # the cells are taken as spread evenly over the input.
    cam_grid: dict[str, Any] = field(default_factory=dict)
    contract_version: int = CONTRACT_VERSION

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def to_metadata(self) -> dict[str, str]:
        """The string map stored in the ONNX file's metadata_props."""
        validate(self)
        return {
            K_CONTRACT: str(self.contract_version),
            K_CLASSES: json.dumps(self.class_names),
            K_DISPLAY: json.dumps(self.display_names),
            K_INPUT_SIZE: json.dumps(list(self.input_size)),
            K_RESIZE: json.dumps({"mode": self.resize, "filter": self.resize_filter}),
            K_NAME: self.model_name,
            K_VERSION: self.model_version,
            K_ARCH: self.architecture,
            K_TEMPERATURE: repr(float(self.temperature)),
            K_CREATED: self.created,
            K_FINGERPRINT: self.data_fingerprint,
            K_TRAINED_ON: self.trained_on,
            K_DEMO: "true" if self.demo else "false",
            K_MEAN: json.dumps(list(self.mean)),
            K_STD: json.dumps(list(self.std)),
            K_THRESHOLDS: json.dumps(self.thresholds, sort_keys=True),
            K_CAM_GRID: json.dumps(self.cam_grid, sort_keys=True),
        }

    @classmethod
    def from_metadata(cls, props: dict[str, str]) -> BundleMeta:
        """Parse and validate metadata_props; raises BundleError naming the first problem."""
        version = _get(props, K_CONTRACT)
        # Compared as text: int() takes "²" as a digit it cannot read, and no more than 4300 digits.
        if version.lstrip("0") != str(CONTRACT_VERSION):
            raise BundleError(
                f"bundle contract version {version[:20]!r} is not understood"
                f" (this runtime reads {CONTRACT_VERSION})"
            )
        resize = _json(props, K_RESIZE, {"mode": "stretch", "filter": "bilinear"})
        if not isinstance(resize, dict):
            raise BundleError(f"metadata {K_RESIZE} must be a JSON object")
        try:
            temperature = float(props.get(K_TEMPERATURE, "1.0"))
        except ValueError:
            raise BundleError(f"metadata {K_TEMPERATURE} is not a number") from None
        size = _json(props, K_INPUT_SIZE)
        if not (isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) for v in size)):
            raise BundleError(f"metadata {K_INPUT_SIZE} must be [height, width], got {size!r}")
        classes = _json(props, K_CLASSES)
        display = _json(props, K_DISPLAY, None)
        if display is None and isinstance(classes, list):
            display = display_names([str(c) for c in classes])
        thresholds = _json(props, K_THRESHOLDS, {})
        cam_grid = _json(props, K_CAM_GRID, {})
        meta = cls(
            class_names=classes,
            display_names=display,
            input_size=(size[0], size[1]),
            model_name=props.get(K_NAME, ""),
            model_version=props.get(K_VERSION, ""),
            architecture=props.get(K_ARCH, ""),
            resize=str(resize.get("mode", "stretch")),
            resize_filter=str(resize.get("filter", "bilinear")),
            temperature=temperature,
            created=props.get(K_CREATED, ""),
            data_fingerprint=props.get(K_FINGERPRINT, ""),
            trained_on=props.get(K_TRAINED_ON, ""),
            demo=props.get(K_DEMO, "false").lower() == "true",
            mean=_vector(props, K_MEAN, (0.485, 0.456, 0.406)),
            std=_vector(props, K_STD, (0.229, 0.224, 0.225)),
            thresholds=thresholds if isinstance(thresholds, dict) else {},
            cam_grid=cam_grid,
            contract_version=CONTRACT_VERSION,
        )
        validate(meta)
        return meta

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def validate(meta: BundleMeta) -> None:
    names = meta.class_names
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
        raise BundleError("class names must be a non-empty list of strings")
    if len(set(names)) != len(names):
        raise BundleError("class names must be unique")
    if odd := [n for n in names if LONE_SURROGATE.search(n)]:  # a folder named in Latin-1
        raise BundleError(f"class name {odd[0]!r} is not UTF-8 text")
    display = meta.display_names
    if (
        not isinstance(display, list)
        or len(display) != len(names)
        or not all(isinstance(d, str) for d in display)
    ):
        raise BundleError(f"{len(names)} class names but display names {meta.display_names!r}")
    h, w = meta.input_size
    if not (16 <= h <= 4096 and 16 <= w <= 4096):
        raise BundleError(f"input size {h}x{w} is out of range")
    if meta.resize not in RESIZE_MODES:
        raise BundleError(f"resize mode {meta.resize!r} is not one of {', '.join(RESIZE_MODES)}")
    if meta.resize_filter not in RESIZE_FILTERS:
        raise BundleError(f"resize filter {meta.resize_filter!r} is not one of {', '.join(RESIZE_FILTERS)}")
    if not (math.isfinite(meta.temperature) and meta.temperature > 0):
        raise BundleError(f"temperature must be a positive number, got {meta.temperature!r}")
    if not meta.model_name:
        raise BundleError("model name is missing")
    for label, vec in (("mean", meta.mean), ("std", meta.std)):
        numbers = isinstance(vec, tuple | list) and len(vec) == 3
        if not numbers or not all(
            isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in vec
        ):
            raise BundleError(f"{label} must be three numbers, got {str(vec)[:60]}")
    if meta.cam_grid != {} and not _is_grid(meta.cam_grid):
        raise BundleError(
            f'metadata {K_CAM_GRID} must be {{}} or {{"stride": [y, x], "offset": [y, x]}} with positive '
            f"strides, got {str(meta.cam_grid)[:80]}"
        )


def _is_grid(grid: Any) -> bool:
    def pair(value: Any) -> bool:
        return (
            isinstance(value, list)
            and len(value) == 2
            and all(
                isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in value
            )
        )

    return (
        isinstance(grid, dict)
        and set(grid) == {"stride", "offset"}
        and pair(grid["stride"])
        and pair(grid["offset"])
        and min(grid["stride"]) > 0
    )


def cam_extent(meta: BundleMeta, height: int, width: int) -> dict[str, float]:
    """Where a height x width CAM lies, as fractions of the image the model saw: equal cells covering
    ``left``..``left + width`` (and ``top``..), which may reach past the image's edges."""
    if not meta.cam_grid:
        return {"left": 0.0, "top": 0.0, "width": 1.0, "height": 1.0}
    (sy, sx), (oy, ox) = meta.cam_grid["stride"], meta.cam_grid["offset"]
    h, w = meta.input_size
    return {
        "left": round((ox - sx / 2) / w, 6),
        "top": round((oy - sy / 2) / h, 6),
        "width": round(width * sx / w, 6),
        "height": round(height * sy / h, 6),
    }


def check_graph(
    meta: BundleMeta,
    *,
    input_name: str,
    input_type: str,
    input_shape: list[Any],
    outputs: dict[str, list[Any]],
) -> None:
    """Check the graph's declared interface against the metadata (types as onnxruntime prints them)."""
    if input_name != INPUT_NAME:
        raise BundleError(f"model input is {input_name!r}, the contract says {INPUT_NAME!r}")
    if input_type != "tensor(uint8)":
        raise BundleError(f"model input type is {input_type}, the contract says tensor(uint8)")
    h, w = meta.input_size
    if len(input_shape) != 4 or list(input_shape[1:]) != [h, w, 3]:
        raise BundleError(f"model input shape is {input_shape}, metadata says [batch, {h}, {w}, 3]")
    # onnxruntime reports a dynamic axis as its name (or None); a fixed one as an int.
    if isinstance(input_shape[0], int):
        raise BundleError(
            f"model input has a fixed batch of {input_shape[0]}; the contract needs a dynamic batch axis"
        )
    if PROBS_OUTPUT not in outputs:
        raise BundleError(f"model has no {PROBS_OUTPUT!r} output (outputs: {', '.join(outputs)})")
    probs = outputs[PROBS_OUTPUT]
    if len(probs) == 2 and isinstance(probs[0], int):
        raise BundleError(f"model output {PROBS_OUTPUT} has a fixed batch of {probs[0]}; it must be dynamic")
    if len(probs) != 2 or probs[1] != meta.num_classes:
        raise BundleError(
            f"model output {PROBS_OUTPUT} has shape {probs}, but metadata lists {meta.num_classes} classes"
        )
    cam = outputs.get(CAM_OUTPUT)
    if cam is not None and (len(cam) != 4 or cam[1] != meta.num_classes):
        raise BundleError(
            f"model output {CAM_OUTPUT} has shape {cam}, expected [batch, {meta.num_classes}, h, w]"
        )
    logits = outputs.get(LOGITS_OUTPUT)
    if logits is not None and (len(logits) != 2 or logits[1] != meta.num_classes):
        raise BundleError(
            f"model output {LOGITS_OUTPUT} has shape {logits}, expected [batch, {meta.num_classes}]"
        )
    ood = outputs.get(OOD_OUTPUT)
    if ood is not None and len(ood) != 1:
        raise BundleError(f"model output {OOD_OUTPUT} has shape {ood}, expected [batch]")


def load_report(bundle_dir: str | Path) -> dict[str, Any] | None:
    """The stored evaluation report, or None when the bundle has none."""
    path = Path(bundle_dir) / REPORT_FILE
    if not path.is_file():
        return None
    try:
        report = _servable(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # ValueError: undecodable bytes, bad JSON, or JSON not to send on
        raise BundleError(f"{REPORT_FILE} is not readable JSON: {exc}") from None
    if not isinstance(report, dict):
        raise BundleError(f"{REPORT_FILE} must hold a JSON object")
    return report


def model_path(bundle_dir: str | Path, variant: str = "auto") -> Path:
    """The graph to serve: ``auto`` takes the int8 graph when export shipped one, else fp32 (the engine then
    asks runtime/int8.py whether this CPU computes it fast)."""
    directory = Path(bundle_dir)
    if variant not in MODEL_VARIANTS:
        raise BundleError(f"model variant {variant!r} is not one of {', '.join(MODEL_VARIANTS)}")
    try:  # is_file() raises, not answers False, where a folder on the way may not be searched
        if not directory.is_dir():
            why = "is a file, not a directory" if directory.exists() else "does not exist"
            if directory.suffix == ".onnx" and directory.is_file():
                why += f": pass the folder it is in, {str(directory.parent)!r}"
            elif directory.suffix in (".pt", ".pth") and directory.is_file():
                why += f": it is a training checkpoint; {_export_first(directory)}"
            raise BundleError(f"bundle directory {str(directory)!r} {why}")
        has_model, has_int8 = (directory / MODEL_FILE).is_file(), (directory / INT8_MODEL_FILE).is_file()
        run = not has_model and (directory / "best.pt").is_file()
    except OSError as exc:
        raise BundleError(f"bundle directory {str(directory)!r} cannot be read: {exc.strerror}") from None
    if not has_model:
        # skin-train's run folder, the step before a bundle: a new user's first guess at --bundle.
        hint = f": it is a training run; {_export_first(directory / 'best.pt')}" if run else ""
        raise BundleError(f"bundle {str(directory)!r} has no {MODEL_FILE}{hint}")
    if LONE_SURROGATE.search(str(directory.absolute())):
        raise BundleError(
            f"bundle directory {str(directory)!r} is not a UTF-8 path, which onnxruntime cannot open"
        )
    if variant == "int8" and not has_int8:
        raise BundleError(f"bundle {str(directory)!r} has no {INT8_MODEL_FILE} (export did not ship int8)")
    return directory / (INT8_MODEL_FILE if variant != "fp32" and has_int8 else MODEL_FILE)


def _export_first(checkpoint: Path) -> str:
    return f"make a bundle of it first: skin-export {shlex.quote(str(checkpoint))} --out bundles/NAME"


def sha256_file(path: str | Path) -> str:
    with open(path, "rb") as fh:
        return _sha256(fh)


def _sha256(fh: BinaryIO) -> str:
    digest = hashlib.sha256()
    for chunk in iter(lambda: fh.read(1 << 20), b""):
        digest.update(chunk)
    return digest.hexdigest()


_digests: dict[tuple[int, ...], str] = {}


def model_sha256(path: str | Path) -> str:
    """sha256_file, read once per process: start-up wanted the same graph's digest up to three times
    (SKIN_OPENVINO=auto's choice, the int8 graph's check, the served model's). Keyed by the file itself and
    its size and times, so a file replaced or rewritten since is read again. For the runtime, which writes
    no model: export rewrites files it has just hashed, maybe within one tick of the file times."""
    with open(path, "rb") as fh:  # the file read is the one whose identity keys it
        st = os.fstat(fh.fileno())
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        if key not in _digests:
            _digests[key] = _sha256(fh)
    return _digests[key]


def fingerprint_files(root: str | Path, files: list[Path]) -> str:
    """A stable fingerprint of a dataset: relative paths and sizes (cheap; no pixel reads)."""
    digest = hashlib.sha256()
    base = Path(root)
    for path in sorted(files):
        line = f"{path.relative_to(base).as_posix()}\0{path.stat().st_size}\n"
        digest.update(line.encode("utf-8", "surrogateescape"))  # a name not in UTF-8: its own bytes
    return digest.hexdigest()[:16]


def _get(props: dict[str, str], key: str) -> str:
    if key not in props:
        raise BundleError(
            f"model metadata has no {key!r}: not a skin-lesion bundle (or made by another tool)"
        )
    return props[key]


def _vector(props: dict[str, str], key: str, default: tuple[float, ...]) -> Any:
    """A JSON list as a tuple; anything else is passed on as it is, for validate() to name."""
    value = _json(props, key, list(default))
    return tuple(value) if isinstance(value, list) else value


def _json(props: dict[str, str], key: str, default: Any = ...) -> Any:
    if key not in props:
        if default is ...:
            return json.loads(_get(props, key))
        return default
    try:
        return _servable(props[key])
    except ValueError:
        raise BundleError(f"metadata {key} is not valid JSON") from None


def _servable(text: str) -> Any:
    """JSON the API can send on: /api/info and /api/report answer it again, in strict JSON.

    NaN and ±Infinity (Python's json writes them; JSON has none) are read as null; invalid JSON, a nesting too
    deep to parse or a lone surrogate (which cannot be encoded) is a ValueError.
    """
    try:
        value = json.loads(text, parse_constant=lambda _: None)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except (RecursionError, UnicodeEncodeError):
        raise ValueError("a string holds a lone surrogate, or the nesting is too deep") from None
    return value
