"""Wrap the trained network for serving, export it to ONNX, simplify it, append temperature + softmax.

The graph takes what the runtime's preprocessing yields (uint8 RGB NHWC) and returns
``probabilities`` (softmax of logits / T), ``cam`` (class activation maps) and ``logits`` (before T).
"""

from __future__ import annotations

import io
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


class ServingModel(torch.nn.Module):
    """uint8 NHWC → (logits, cam). Normalization lives here, so the runtime sends raw pixels."""

    scale: torch.Tensor
    shift: torch.Tensor
    cam_weight: torch.Tensor

    def __init__(self, net: Any, mean: tuple[float, ...], std: tuple[float, ...], cam_weight: Any) -> None:
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

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = image.permute(0, 3, 1, 2).float() * self.scale - self.shift
        features = self.net.forward_features(x)
        logits = self.net.forward_head(features)
        if not self.has_cam:
            return (logits,)
        # CAM_c(x, y) = sum_k w_ck A_k(x, y): a 1x1 convolution of the last feature map with the head weights.
        cam = torch.nn.functional.conv2d(features, self.cam_weight)
        return logits, cam


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
) -> Any:
    """Export the wrapped network (outputs logits [+ cam]) into one simplified, checked ModelProto."""
    import onnx
    import onnxsim

    if opset < MIN_OPSET:
        raise ExportError(
            f"opset {opset} is not supported: the dynamo exporter writes opset {MIN_OPSET} or newer"
        )
    net = net.eval()
    wrapped = ServingModel(net, mean, std, linear_head_weight(net, size)).eval()
    outputs = [bundle.LOGITS_OUTPUT] + ([bundle.CAM_OUTPUT] if wrapped.has_cam else [])
    # Batch 2 in the example: torch.export specializes dimensions of size 0 and 1.
    example = torch.randint(0, 256, (2, *size, 3), dtype=torch.uint8)
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
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise ExportError(f"torch.onnx.export failed ({type(exc).__name__}): {first}") from None
    if program is None:
        raise ExportError("torch.onnx.export returned no program")
    model = program.model_proto
    got_opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if got_opset != opset:
        raise ExportError(f"asked for opset {opset}, the exporter wrote opset {got_opset}")
    try:
        simplified, ok = onnxsim.simplify(model)
    except Exception as exc:
        raise ExportError(f"onnxsim failed ({type(exc).__name__}): {str(exc)[:200]}") from None
    if not ok:
        raise ExportError("onnxsim could not validate the simplified graph")
    onnx.checker.check_model(simplified, full_check=True)
    return simplified


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
    kept = [o for o in graph.output]
    del graph.output[:]
    graph.output.extend([probs] + [o for o in kept if o.name == bundle.CAM_OUTPUT] + [logits])
    graph.doc_string = (
        "uint8 RGB NHWC image -> probabilities = softmax(logits / T), cam = class activation maps, logits"
    )
    onnx.checker.check_model(model, full_check=True)
    return model


def set_metadata(model: Any, meta: bundle.BundleMeta) -> None:
    import onnx

    del model.metadata_props[:]
    onnx.helper.set_model_props(model, meta.to_metadata())


def to_bytes(model: Any) -> bytes:
    import onnx

    buffer = io.BytesIO()
    onnx.save_model(model, buffer)  # small enough for one protobuf: no external data
    return buffer.getvalue()
