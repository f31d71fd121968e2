"""Wrap the trained network for serving, export it to ONNX, simplify it, append temperature + softmax.

The graph takes what the runtime's preprocessing yields (uint8 RGB NHWC) and returns
``probabilities`` (softmax of logits / T), ``cam`` (class activation maps), ``logits`` (before T) and, when
export chose a feature-based out-of-distribution score, ``ood_score`` (Mahalanobis distance, see
export/uncertainty.py). While exporting, the core graph also returns pooled features of every stage
(``skin_pool_*``) to choose that score from; the finished graph drops them.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
import os
import re
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from export.errors import ExportError
from runtime import bundle

# The dynamo exporter (torch.export) is the one torch maintains: the TorchScript exporter is deprecated and
# warns that it will be removed. Dynamo's native opset is 18; asking it for 17 makes it fall back to
# ONNX's version converter, which fails on ReduceMean with axes as an input. So 18 is our floor.
EXPORTER = "torch.onnx dynamo"
MIN_OPSET = 18
TEMPERATURE_INIT = "skin_temperature"
POOL_PREFIX = "skin_pool_"  # core-graph outputs: [batch, channels] feature means of one stage
OOD_PREFIX = "skin_ood_"  # names of the nodes and initializers of the Mahalanobis score (kept float by int8)
# torch 2.9 (Dockerfile.train's) warns at every export that torchvision's roi_align and roi_pool lack type
# hints, 4 lines that --quiet printed too; torch 2.14 logs them at debug level.
SCHEMA_LOGGER = "torch.onnx._internal.exporter._schemas"
DRAFT_EXPORT_FLAG = "TORCH_ONNX_ENABLE_DRAFT_EXPORT"


def check_opset(opset: int) -> None:
    """Before any work: the dynamo exporter's oldest opset up to the newest this onnx package knows."""
    import onnx

    if opset < MIN_OPSET:
        raise ExportError(
            f"opset {opset} is not supported: the dynamo exporter writes opset {MIN_OPSET} or newer"
        )
    if opset > onnx.defs.onnx_opset_version():
        raise ExportError(f"opset {opset} is newer than this onnx knows ({onnx.defs.onnx_opset_version()})")


class ServingModel(torch.nn.Module):
    """uint8 NHWC → (logits, cam, pooled stage features when asked). Normalization lives here, so the runtime
    sends raw pixels."""

    scale: torch.Tensor
    shift: torch.Tensor
    cam_weight: torch.Tensor

    def __init__(
        self,
        net: Any,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        cam_weight: Any,
        *,
        stages: bool = False,
        pooled: bool = False,
    ) -> None:
        super().__init__()
        self.net = net
        mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        # (x / 255 - mean) / std folded into one multiply and one subtract.
        self.register_buffer("scale", 1.0 / (255.0 * std_t))
        self.register_buffer("shift", mean_t / std_t)
        self.has_cam = cam_weight is not None
        if cam_weight is not None:
            self.register_buffer("cam_weight", cam_weight.detach().clone()[:, :, None, None])
        self.stages = stages  # forward_intermediates gives the same features plus every stage's map
        self.pooled = pooled

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = image.permute(0, 3, 1, 2).float() * self.scale - self.shift
        if self.stages:
            features, maps = self.net.forward_intermediates(x)
        else:
            features, maps = self.net.forward_features(x), []
        logits = self.net.forward_head(features)
        outputs = [logits]
        if self.has_cam:
            # CAM_c(x, y) = sum_k w_ck A_k(x, y): a 1x1 convolution of the last feature map with the head.
            outputs.append(torch.nn.functional.conv2d(features, self.cam_weight))
        if self.pooled:
            outputs += [m.mean(dim=(2, 3)) for m in maps]
            outputs.append(self.net.forward_head(features, pre_logits=True))
        return tuple(outputs)


def pooled_features(net: Any, size: tuple[int, int]) -> tuple[bool, list[tuple[str, str]]]:
    """Whether the net's stages can be exported, and the (output name, description) of each pooled feature.

    Stages come from timm's ``forward_intermediates`` when it gives the same final features as
    ``forward_features`` (checked numerically); the head's pre-logits features are always there.
    """
    names: list[tuple[str, str]] = []
    stages = False
    try:
        with torch.no_grad():
            x = torch.rand(1, 3, *size) * 2 - 1
            reference = net.forward_features(x)
            final, maps = net.forward_intermediates(x)
        info = getattr(net, "feature_info", [])
        if torch.allclose(final, reference, rtol=1e-4, atol=1e-5) and all(m.ndim == 4 for m in maps):
            stages = True
            for i, m in enumerate(maps):
                module = info[i].get("module", f"stage {i}") if i < len(info) else f"stage {i}"
                names.append((f"{POOL_PREFIX}{i}", f"{module} ({m.shape[1]} channels, image mean)"))
    except Exception:  # no forward_intermediates for this architecture: the head's features only
        stages, names = False, []
    with torch.no_grad():
        head = net.forward_head(net.forward_features(torch.rand(1, 3, *size) * 2 - 1), pre_logits=True)
    names.append((f"{POOL_PREFIX}head", f"pre-logits ({head.shape[-1]} features)"))
    return stages, names


def linear_head_weight(net: Any, size: tuple[int, int]) -> torch.Tensor | None:
    """The classifier weight [C, K] when the head is global-average-pool + linear, else None (no CAM)."""
    get = getattr(net, "get_classifier", None)
    classifier = get() if callable(get) else None
    if not isinstance(classifier, torch.nn.Linear):
        return None
    try:
        with torch.no_grad():
            features = net.forward_features(torch.rand(1, 3, *size) * 2 - 1)
            if features.ndim != 4:
                return None
            expected = classifier(features.mean(dim=(2, 3)))
            got = net.forward_head(features)
    except Exception:
        return None
    # Checked numerically, not by class names: then the CAM's spatial mean plus the bias is the logit.
    if got.shape != expected.shape or not torch.allclose(got, expected, rtol=1e-4, atol=1e-4):
        return None
    return classifier.weight.detach()


def export_core(
    net: Any,
    *,
    size: tuple[int, int],
    mean: tuple[float, ...],
    std: tuple[float, ...],
    opset: int = MIN_OPSET,
    pooled: bool = False,
) -> Any:
    """Export the wrapped network (outputs logits [+ cam] [+ pooled features]) into one simplified, checked
    ModelProto."""
    import onnx
    import onnxsim

    check_opset(opset)
    net = net.eval()
    stages, pools = pooled_features(net, size) if pooled else (False, [])
    wrapped = ServingModel(net, mean, std, linear_head_weight(net, size), stages=stages, pooled=pooled).eval()
    outputs = [bundle.LOGITS_OUTPUT] + ([bundle.CAM_OUTPUT] if wrapped.has_cam else [])
    outputs += [name for name, _ in pools]
    # Batch 2 in the example: torch.export specializes dimensions of size 0 and 1.
    example = torch.randint(0, 256, (2, *size, 3), dtype=torch.uint8)
    with _unfused_attention(net), _quiet(SCHEMA_LOGGER), _without_draft_export():
        try:
            program = torch.onnx.export(
                wrapped,
                (example,),
                dynamo=True,
                external_data=False,  # one self-contained file
                opset_version=opset,
                input_names=[bundle.INPUT_NAME],
                output_names=outputs,
                dynamic_shapes=({0: torch.export.Dim("batch")},),
                verbose=False,
            )
        except Exception as exc:
            raise ExportError(
                f"torch.onnx.export failed ({type(exc).__name__}): {_exporter_cause(exc)}"
            ) from None
    if program is None:
        raise ExportError("torch.onnx.export returned no program")
    model = program.model_proto
    got_opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if got_opset != opset:
        raise ExportError(f"asked for opset {opset}, the exporter wrote opset {got_opset}")
    try:
        simplified, ok = onnxsim.simplify(model)
    except Exception as exc:  # its messages run over lines (shape inference, the checker's node dumps)
        raise ExportError(f"onnxsim failed ({type(exc).__name__}): {_exporter_cause(exc)}") from None
    if not ok:
        raise ExportError("onnxsim could not validate the simplified graph")
    try:
        onnx.checker.check_model(simplified, full_check=True)
    except Exception as exc:
        raise ExportError(f"the simplified graph fails onnx.checker: {_exporter_cause(exc)}") from None
    for output in simplified.graph.output:  # say what each pooled feature is, for the report
        output.doc_string = dict(pools).get(output.name, output.doc_string)
    return simplified


def _exporter_cause(exc: Exception) -> str:
    """One line: torch.onnx's errors open with advice in terminal colours; the cause follows its summary."""
    lines = [line.strip() for line in re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).splitlines() if line.strip()]
    if "## Exception summary" not in lines[:-1]:
        return (lines or [""])[0][:200]
    step = lines[0].split(". ")[0].rstrip(".")  # "Failed to decompose the FX graph for ONNX compatibility"
    cause = lines[lines.index("## Exception summary") + 1]
    cause = re.sub(r"^<class '(?:[\w.]*\.)?(\w+)'>", r"\1", cause)  # "<class 'a.b.ValueError'>" -> ValueError
    return f"{step}: {cause}"[:300]


@contextlib.contextmanager
def _quiet(name: str) -> Iterator[None]:
    """Only errors from this logger while inside."""
    log = logging.getLogger(name)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


@contextlib.contextmanager
def _without_draft_export() -> Iterator[None]:
    """torch.onnx's capture strategies less draft export, which DRAFT_EXPORT_FLAG=1 adds.

    Draft export exports a net that branches on its data as if the other branch did not exist; we rely on
    the exporter refusing such a net. torch reads the variable once, at import, into this tuple, which it
    reads again at every export: so the tuple is the place, not the environment.
    """
    try:
        capture: Any = importlib.import_module("torch.onnx._internal.exporter._capture_strategies")
        strategies = capture.CAPTURE_STRATEGIES
    except (ImportError, AttributeError):  # a torch laid out otherwise: then only the variable can tell
        if os.environ.get(DRAFT_EXPORT_FLAG) == "1":
            raise ExportError(
                f"{DRAFT_EXPORT_FLAG}=1 would let torch export a net that branches on its data as if one "
                "branch did not exist; unset it"
            ) from None
        yield
        return
    capture.CAPTURE_STRATEGIES = tuple(s for s in strategies if "Draft" not in s.__name__)
    try:
        yield
    finally:
        capture.CAPTURE_STRATEGIES = strategies


@contextlib.contextmanager
def _unfused_attention(net: Any) -> Iterator[None]:
    """timm's attention written out (matmul, softmax, matmul) instead of scaled_dot_product_attention.

    The exporter's decomposition of SDPA with a bias (MaxViT, relative-position ViTs) gives its output strides
    that the next reshape cannot view under a dynamic batch; ONNX has no fused attention at this opset anyway.
    """
    fused = [m for m in net.modules() if getattr(m, "fused_attn", None) is True]
    for module in fused:
        module.fused_attn = False
    try:
        yield
    finally:
        for module in fused:
            module.fused_attn = True


def add_temperature(core: Any, temperature: float) -> Any:
    """A copy of ``core`` with probabilities = softmax(logits / T) as its first output."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.ModelProto()
    model.CopyFrom(core)
    graph = model.graph
    logits = next((o for o in graph.output if o.name == bundle.LOGITS_OUTPUT), None)
    if logits is None:
        raise ExportError(f"the exported graph has no {bundle.LOGITS_OUTPUT!r} output")
    taken = {i.name for i in graph.initializer} | {v for n in graph.node for v in n.output}
    if TEMPERATURE_INIT in taken or bundle.PROBS_OUTPUT in taken:
        raise ExportError("the exported graph already uses the names of the temperature step")
    graph.initializer.append(
        numpy_helper.from_array(np.array(temperature, dtype=np.float32), TEMPERATURE_INIT)
    )
    graph.node.extend(
        [
            helper.make_node(
                "Div",
                [bundle.LOGITS_OUTPUT, TEMPERATURE_INIT],
                ["skin_scaled_logits"],
                name="skin_temperature_div",
            ),
            helper.make_node(
                "Softmax", ["skin_scaled_logits"], [bundle.PROBS_OUTPUT], axis=1, name="skin_softmax"
            ),
        ]
    )
    probs = onnx.ValueInfoProto()
    probs.CopyFrom(logits)
    probs.name = bundle.PROBS_OUTPUT
    kept = {o.name: o for o in graph.output}
    del graph.output[:]
    # The served interface, in this order; the pooled features the core graph had for export go.
    order = [bundle.CAM_OUTPUT, bundle.LOGITS_OUTPUT, bundle.OOD_OUTPUT]
    graph.output.extend([probs] + [kept[name] for name in order if name in kept])
    _prune(graph)
    graph.doc_string = (
        "uint8 RGB NHWC image -> probabilities = softmax(logits / T), cam = class activation maps, logits"
        + (", ood_score = Mahalanobis distance of pooled features" if bundle.OOD_OUTPUT in kept else "")
    )
    onnx.checker.check_model(model, full_check=True)
    return model


def add_mahalanobis(core: Any, source: str, means: np.ndarray, whitening: np.ndarray) -> Any:
    """A copy of ``core`` with ``ood_score`` = min over classes of the Mahalanobis distance of ``source``.

    ``source`` is a pooled-feature output [batch, K]; d_c(f) = ||(f - mu_c) W||^2 with W the Cholesky factor
    of the shared precision matrix (W W^T = inverse covariance), so means are stored already whitened.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.ModelProto()
    model.CopyFrom(core)
    graph = model.graph
    feature = next((o for o in graph.output if o.name == source), None)
    if feature is None:
        raise ExportError(f"the exported graph has no {source!r} output")
    k = whitening.shape[0]
    if whitening.shape != (k, k) or means.ndim != 2 or means.shape[1] != k:
        raise ExportError(
            f"Mahalanobis parameters do not fit: means {means.shape}, whitening {whitening.shape}"
        )
    p = OOD_PREFIX
    graph.initializer.extend(
        [
            numpy_helper.from_array(whitening.astype(np.float32), p + "whitening"),
            numpy_helper.from_array((means @ whitening).astype(np.float32), p + "means"),
            numpy_helper.from_array(np.array([1], np.int64), p + "axis1"),
            numpy_helper.from_array(np.array([2], np.int64), p + "axis2"),
        ]
    )
    graph.node.extend(
        [
            helper.make_node("MatMul", [source, p + "whitening"], [p + "z"], name=p + "whiten"),
            helper.make_node("Unsqueeze", [p + "z", p + "axis1"], [p + "z3"], name=p + "unsqueeze"),
            helper.make_node("Sub", [p + "z3", p + "means"], [p + "diff"], name=p + "sub"),  # [N, C, K]
            helper.make_node("Mul", [p + "diff", p + "diff"], [p + "sq"], name=p + "square"),
            helper.make_node("ReduceSum", [p + "sq", p + "axis2"], [p + "dist"], keepdims=0, name=p + "sum"),
            helper.make_node(
                "ReduceMin", [p + "dist", p + "axis1"], [bundle.OOD_OUTPUT], keepdims=0, name=p + "min"
            ),
        ]
    )
    # The pooling that feeds the score stays float under int8 as well (the name marks it).
    producer = next(n for n in graph.node if source in n.output)
    producer.name = p + "pool"
    batch = feature.type.tensor_type.shape.dim[0]
    out = helper.make_tensor_value_info(bundle.OOD_OUTPUT, TensorProto.FLOAT, [batch.dim_param or None])
    graph.output.append(out)
    onnx.checker.check_model(model, full_check=True)
    return model


def _prune(graph: Any) -> None:
    """Drop nodes, initializers and value infos no graph output depends on."""
    needed = {o.name for o in graph.output}
    kept = []
    for node in reversed(graph.node):
        if any(name in needed for name in node.output):
            kept.append(node)
            needed.update(name for name in node.input if name)
    kept.reverse()
    del graph.node[:]
    graph.node.extend(kept)
    initializers = [i for i in graph.initializer if i.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(initializers)
    infos = [v for v in graph.value_info if v.name in needed]
    del graph.value_info[:]
    graph.value_info.extend(infos)


def set_metadata(model: Any, meta: bundle.BundleMeta) -> None:
    import onnx

    del model.metadata_props[:]
    onnx.helper.set_model_props(model, meta.to_metadata())


def to_bytes(model: Any) -> bytes:
    import onnx

    buffer = io.BytesIO()
    onnx.save_model(model, buffer)  # small enough for one protobuf: no external data
    return buffer.getvalue()
