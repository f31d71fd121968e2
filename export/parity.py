"""Parity over the whole request path: runtime preprocessing → onnxruntime against training's evaluation
path (training.data.EvalDataset → torch). The export fails when they disagree."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from export import infer
from export.errors import ExportError
from runtime import bundle

MAX_ABS_DIFF = 1e-4
MAX_LOGIT_DIFF = 1e-3  # relative to the largest logit (at least 1): the logit scores read them
MAX_CAM_DIFF = 1e-3  # relative to the largest activation (at least 1): the heatmap is scaled by its maximum


def pick(
    files: Sequence[Path], n: int, size: tuple[int, int], resize: str, resize_filter: str
) -> tuple[list[Path], np.ndarray]:
    """Up to ``n`` readable files spread over the list (it is sorted by class), and their pixels."""
    chosen: list[Path] = []
    images: list[np.ndarray] = []
    for i in np.random.default_rng(0).permutation(len(files)):
        if len(chosen) == n:
            break
        x, kept = infer.readable([files[i]], size, resize, resize_filter)
        if kept:
            chosen.append(files[i])
            images.append(x[0])
    return chosen, np.stack(images) if images else np.zeros((0, *size, 3), dtype=np.uint8)


def check_parity(
    net: Any,
    model: bytes,
    files: Sequence[Path],
    *,
    n: int,
    img_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    resize: str,
    resize_filter: str,
    temperature: float,
) -> dict[str, Any]:
    """Compare probabilities (and logits and class activation maps, where the graph has them) of the finished
    graph and of the torch model on up to ``n`` image files."""
    import torch

    from training.data import EvalDataset

    size = (img_size, img_size)
    chosen, pixels = pick(files, n, size, resize, resize_filter)
    if not chosen:
        raise ExportError("parity: none of the chosen images could be read")
    sess = infer.session(model)
    names = {o.name for o in sess.get_outputs()}
    fetch = [bundle.PROBS_OUTPUT] + [o for o in (bundle.LOGITS_OUTPUT, bundle.CAM_OUTPUT) if o in names]
    ort_out = dict(zip(fetch, sess.run(fetch, {bundle.INPUT_NAME: pixels}), strict=True))
    ort_probs = ort_out[bundle.PROBS_OUTPUT].astype(np.float64)

    dataset = EvalDataset([(f, 0) for f in chosen], img_size, mean, std)
    items = [dataset[i] for i in range(len(dataset))]
    if any(label < 0 for _, label in items):
        raise ExportError("parity: training's loader could not read an image that the runtime reads")
    with torch.no_grad():
        x = torch.stack([x for x, _ in items])
        net.eval()
        if bundle.CAM_OUTPUT in ort_out:
            # The graph's CAM is the last feature map through the classifier's weights (export.onnx).
            features = net.forward_features(x)
            logits = net.forward_head(features)
            torch_cam = torch.einsum("bkhw,ck->bchw", features, net.get_classifier().weight).double().numpy()
        else:
            logits = net(x)
        torch_probs = torch.softmax(logits / temperature, dim=1).double().numpy()

    diff, tol = float(np.abs(ort_probs - torch_probs).max()), MAX_ABS_DIFF
    # Classes within the tolerance of torch's top one are tied as far as parity can tell: which of them
    # float32 kernels rank first is noise (a barely trained net's two top logits, 2e-8 apart, failed export).
    graph_top = torch_probs[np.arange(len(torch_probs)), ort_probs.argmax(1)]
    agree = float((graph_top >= torch_probs.max(1) - tol).mean())
    result: dict[str, Any] = {"n": len(chosen), "max_abs_diff": diff, "top1_agree": agree, "tolerance": tol}
    if not (diff <= tol and agree == 1.0):
        raise ExportError(
            f"parity failed on {len(chosen)} images: max |Δp| = {diff:.3g} (limit {tol:g}), "
            f"top-1 agreement {agree:.3f} (must be 1; classes within the limit of the top one count as tied)"
        )
    compared = [(bundle.LOGITS_OUTPUT, "logit", logits.double().numpy(), MAX_LOGIT_DIFF)]
    if bundle.CAM_OUTPUT in ort_out:
        compared.append((bundle.CAM_OUTPUT, "cam", torch_cam, MAX_CAM_DIFF))
    for output, what, want, relative in compared:
        if output not in ort_out:
            continue
        got = ort_out[output].astype(np.float64)
        if got.shape != want.shape:
            raise ExportError(f"parity failed: the graph's {output} is {got.shape}, torch's {want.shape}")
        gap = float(np.abs(got - want).max())
        limit = relative * max(1.0, float(np.abs(want).max()))
        result[f"{output}_max_abs_diff"] = gap
        if not gap <= limit:  # a NaN anywhere fails too (NaN > limit would be False)
            raise ExportError(
                f"parity failed on {len(chosen)} images: max |Δ{what}| = {gap:.3g} (limit {limit:.3g})"
            )
    return result
