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


def pick(
    files: Sequence[Path], n: int, size: tuple[int, int], resize: str, resize_filter: str, *, seed: int = 0
) -> tuple[list[Path], np.ndarray]:
    """Up to ``n`` readable files spread over the list (it is sorted by class), and their pixels."""
    chosen: list[Path] = []
    images: list[np.ndarray] = []
    for i in np.random.default_rng(seed).permutation(len(files)):
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
    tol: float = MAX_ABS_DIFF,
) -> dict[str, Any]:
    """Compare probabilities (and logits, where the graph has them) of the finished graph and of the torch
    model on up to ``n`` image files."""
    import torch

    from training.data import EvalDataset

    size = (img_size, img_size)
    chosen, pixels = pick(files, n, size, resize, resize_filter)
    if not chosen:
        raise ExportError("parity: none of the chosen images could be read")
    sess = infer.session(model)
    fetch = [bundle.PROBS_OUTPUT]
    if bundle.LOGITS_OUTPUT in {o.name for o in sess.get_outputs()}:
        fetch.append(bundle.LOGITS_OUTPUT)
    ort_out = sess.run(fetch, {bundle.INPUT_NAME: pixels})
    ort_probs = ort_out[0].astype(np.float64)

    dataset = EvalDataset([(f, 0) for f in chosen], img_size, mean, std)
    items = [dataset[i] for i in range(len(dataset))]
    if any(label < 0 for _, label in items):
        raise ExportError("parity: training's loader could not read an image that the runtime reads")
    with torch.no_grad():
        logits = net.eval()(torch.stack([x for x, _ in items]))
        torch_probs = torch.softmax(logits / temperature, dim=1).double().numpy()

    diff = float(np.abs(ort_probs - torch_probs).max())
    agree = float((ort_probs.argmax(1) == torch_probs.argmax(1)).mean())
    result: dict[str, Any] = {"n": len(chosen), "max_abs_diff": diff, "top1_agree": agree, "tolerance": tol}
    if not (diff <= tol and agree == 1.0):
        raise ExportError(
            f"parity failed on {len(chosen)} images: max |Δp| = {diff:.3g} (limit {tol:g}), "
            f"top-1 agreement {agree:.3f} (must be 1)"
        )
    if len(ort_out) > 1:
        torch_logits = logits.double().numpy()
        logit_diff = float(np.abs(ort_out[1].astype(np.float64) - torch_logits).max())
        limit = MAX_LOGIT_DIFF * max(1.0, float(np.abs(torch_logits).max()))
        result["logits_max_abs_diff"] = logit_diff
        if logit_diff > limit:
            raise ExportError(
                f"parity failed on {len(chosen)} images: max |Δlogit| = {logit_diff:.3g} (limit {limit:.3g})"
            )
    return result
