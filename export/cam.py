"""Where the class-activation map's cells sit on the model's input.

A CAM cell is not a tile of an evenly divided image: it sits where the network's strided convolutions put it.
EfficientNet-B3 at 300 px gives 10x10 cells 32 px apart whose first centre is at the input's first pixel (its
convolutions pad symmetrically), so spreading them evenly (30 px tiles) put the top-left cell ~15 px off.
TensorFlow-style "same" padding (timm's ``tf_`` models) shifts them the other way.

The geometry is traced, not assumed: forward hooks follow the chain of convolutions, pools and padding layers
that change the feature map's size, composing each layer's stride and offset. Branches that start from
an earlier size (a residual's downsampling shortcut, a squeeze-excite on a pooled vector) do not match the
current size and are passed over. When the traced size does not end at the CAM's, the layout is unknown
(None) and consumers spread the cells evenly, as before.
"""

from __future__ import annotations

import math
from typing import Any


def cam_grid(features_fn: Any, net: Any, size: tuple[int, int]) -> dict[str, list[float]] | None:
    """``{"stride": [sy, sx], "offset": [oy, ox]}`` in input pixels: cell (r, c)'s centre lies at
    ``(oy + sy * r, ox + sx * c)`` measured from the input's top-left corner (pixel i spans [i, i + 1]).
    ``features_fn(x)`` returns the map the CAM is computed from; ``net`` holds the layers to trace."""
    import torch

    # Continuous position of index j of the current map: scale * j + offset (pixel i's centre is i + 0.5).
    state: dict[str, Any] = {"size": tuple(size), "scale": [1.0, 1.0], "offset": [0.5, 0.5]}

    def hook(module: Any, inputs: tuple[Any, ...], output: Any) -> None:
        x = inputs[0] if inputs else None
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or not isinstance(output, torch.Tensor):
            return
        if tuple(x.shape[-2:]) != state["size"]:  # a branch off an earlier (or pooled) map
            return
        shift_stride = _layer(module, (int(x.shape[-2]), int(x.shape[-1])))
        if shift_stride is None:
            return
        for axis, (shift, stride) in enumerate(shift_stride):
            # Output index j sits over input index stride * j + shift.
            state["offset"][axis] += state["scale"][axis] * shift
            state["scale"][axis] *= stride
        state["size"] = tuple(output.shape[-2:])

    kinds = (
        torch.nn.Conv2d,
        torch.nn.MaxPool2d,
        torch.nn.AvgPool2d,
        torch.nn.ZeroPad2d,
        torch.nn.ConstantPad2d,
    )
    # A "same" layer's own padding module (timm's Conv2dSameExport makes one) is part of that layer.
    inner = {id(c) for m in net.modules() if _same_padding(m) for c in m.modules() if c is not m}
    handles = [
        m.register_forward_hook(hook) for m in net.modules() if isinstance(m, kinds) and id(m) not in inner
    ]
    training = net.training
    net.eval()  # batch norm in training mode would fold this blank image into its running statistics
    try:
        with torch.no_grad():
            features = features_fn(torch.zeros(1, 3, *size))
    finally:
        net.train(training)
        for handle in handles:
            handle.remove()
    if not isinstance(features, torch.Tensor) or features.ndim != 4:
        return None
    if tuple(features.shape[-2:]) != state["size"]:
        return None
    values = [*state["scale"], *state["offset"]]
    if not all(math.isfinite(v) for v in values) or min(state["scale"]) <= 0:
        return None
    return {"stride": [float(v) for v in state["scale"]], "offset": [float(v) for v in state["offset"]]}


def _layer(module: Any, size: tuple[int, int]) -> list[tuple[float, int]] | None:
    """Per axis (rows, columns): (shift, stride) such that output index j sits over input index
    stride * j + shift; None for a layer whose geometry is not known."""
    import torch

    if isinstance(module, torch.nn.ZeroPad2d | torch.nn.ConstantPad2d):
        pad = module.padding  # (left, right, top, bottom)
        if len(pad) != 4:
            return None
        return [(-float(pad[2]), 1), (-float(pad[0]), 1)]
    kernel, stride, padding, dilation = (
        _pair(getattr(module, name, 1)) for name in ("kernel_size", "stride", "padding", "dilation")
    )
    if isinstance(module, torch.nn.AvgPool2d):
        dilation = (1, 1)
    if kernel is None or stride is None or dilation is None:
        return None
    same = _same_padding(module)
    result = []
    for axis in range(2):
        k, s, d = kernel[axis], stride[axis], dilation[axis]
        if same:
            # timm's pad_same / torch's padding="same": the total padding, its smaller half first.
            total = max((math.ceil(size[axis] / s) - 1) * s + (k - 1) * d + 1 - size[axis], 0)
            before = total // 2
        elif padding is not None:
            before = padding[axis]
        else:
            return None
        result.append((d * (k - 1) / 2 - before, s))
    return result


def _same_padding(module: Any) -> bool:
    """timm's Conv2dSame, Conv2dSameExport, StdConv2dSame, MaxPool2dSame, … pad in forward; torch's own
    convolution takes padding="same"."""
    return getattr(module, "padding", None) == "same" or "2dSame" in type(module).__name__


def _pair(value: Any) -> tuple[int, int] | None:
    if isinstance(value, int):
        return value, value
    if isinstance(value, tuple | list) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return int(value[0]), int(value[1])
    return None
