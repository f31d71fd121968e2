"""The heatmap agreement the int8 and bf16 checks share (export/heatmap.py): the picture the page draws."""

from __future__ import annotations

import numpy as np
import pytest

from export import heatmap

PROBS = np.array([[0.8, 0.2], [0.3, 0.7]])  # fp32 predicts class 0, then class 1


def _cams() -> np.ndarray:
    """[2 images, 2 classes, 3, 3]: each class's map hot in its own corner."""
    cams = np.zeros((2, 2, 3, 3))
    cams[:, 0, 0, 0] = 5.0
    cams[:, 1, 2, 2] = 5.0
    return cams


def test_the_same_maps_agree_whatever_their_offset_and_scale() -> None:
    cams = _cams()
    # The page scales each map to 0..1 itself: a map shifted and stretched is the same picture.
    assert heatmap.agreement(PROBS, cams, cams * 3 - 1) == {
        "heatmap_agreement": 1.0,
        "heatmap_max_diff": 0.0,
        "heatmap_tolerance": heatmap.TOLERANCE,
    }


@pytest.mark.parametrize(
    ("change", "agree"),
    [
        pytest.param(0.05, 1.0, id="a-faint-cell-within-tolerance"),
        pytest.param(0.5, 0.5, id="a-new-warm-region"),
    ],
)
def test_a_cell_that_changes_colour_is_another_picture(change: float, agree: float) -> None:
    cams, other = _cams(), _cams()
    other[1, 1, 0, 0] = 5.0 * change  # the second image's map of its top class, class 1
    result = heatmap.agreement(PROBS, cams, other)
    assert result["heatmap_agreement"] == agree
    assert result["heatmap_max_diff"] == pytest.approx(change)


def test_only_the_map_of_fp32s_top_class_counts() -> None:
    cams, other = _cams(), _cams()
    other[0, 1] = np.arange(9).reshape(3, 3)  # image 0's map of class 1, which the page does not show
    assert heatmap.agreement(PROBS, cams, other)["heatmap_agreement"] == 1.0


def test_a_flat_map_is_the_same_as_another_flat_one_and_not_as_a_hot_spot() -> None:
    flat = np.zeros((2, 2, 3, 3))
    assert heatmap.agreement(PROBS, flat, flat + 1.0)["heatmap_agreement"] == 1.0
    assert heatmap.agreement(PROBS, flat, _cams())["heatmap_agreement"] == 0.0
