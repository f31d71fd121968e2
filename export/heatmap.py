"""Whether a variant graph (int8, bf16) draws the heatmap fp32 draws: the int8 and bf16 checks both use this.

The page shows one class's CAM scaled to 0..1 (its own min → 0, max → 1) in a colour map (runtime/app.py).
So each image's map of the class fp32 predicts is scaled that way in both graphs, and the picture counts as
the same when no cell moves by more than TOLERANCE of that scale (about a step of hue in the page's colours).
Every image counts, those whose top class differs too (top-1 agreement counts those already): the map
compared is always fp32's top class, so a variant that keeps the class but moves the picture is caught.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from runtime import bundle

TOLERANCE = 0.1  # on the 0..1 scale: bf16 rounding moved B3's maps up to 0.08, its int8 up to 0.67 (README)


def outputs(session: Any) -> list[str]:
    """What a variant check runs on both graphs: the probabilities, and the CAM where the graph has one."""
    has_cam = bundle.CAM_OUTPUT in {o.name for o in session.get_outputs()}
    return [bundle.PROBS_OUTPUT, *([bundle.CAM_OUTPUT] if has_cam else [])]


def compare(fp32: dict[str, Any], other: dict[str, Any]) -> dict[str, float]:
    """``agreement`` of two graphs' ``outputs`` (infer.run_many), or nothing for a graph without a CAM."""
    if bundle.CAM_OUTPUT not in fp32:
        return {}
    return agreement(fp32[bundle.PROBS_OUTPUT], fp32[bundle.CAM_OUTPUT], other[bundle.CAM_OUTPUT])


def agreement(probabilities: Any, cam: Any, other_cam: Any) -> dict[str, float]:
    """``heatmap_agreement``: share of images whose map of fp32's top class (``probabilities``: fp32's,
    [n, classes]; ``cam`` / ``other_cam``: [n, classes, h, w]) is the same picture in both graphs;
    ``heatmap_max_diff``: the largest cell difference seen, on the page's 0..1 scale; ``heatmap_tolerance``.
    At least one image."""
    top = np.asarray(probabilities).argmax(1)
    rows = np.arange(len(top))
    a, b = _scaled(np.asarray(cam)[rows, top]), _scaled(np.asarray(other_cam)[rows, top])
    diff = np.abs(a - b).reshape(len(top), -1).max(1)
    return {
        "heatmap_agreement": float(np.mean(diff <= TOLERANCE)),
        "heatmap_max_diff": round(float(diff.max()), 4),
        "heatmap_tolerance": TOLERANCE,
    }


def _scaled(maps: np.ndarray) -> np.ndarray:
    """[n, h, w] → each map scaled to 0..1 as the runtime sends it; a flat map is all zeros."""
    maps = maps.astype(np.float64)
    low = maps.min(axis=(1, 2), keepdims=True)
    span = maps.max(axis=(1, 2), keepdims=True) - low
    return np.where(span > 0, (maps - low) / np.where(span > 0, span, 1.0), 0.0)
