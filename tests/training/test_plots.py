"""What the plots say: read back from the matplotlib figures they draw."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from training import plots
from training.loop import METRIC_COLUMNS


@pytest.fixture
def figures(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    made: list[Any] = []
    real = plots._figure

    def keep(width: float, height: float) -> Any:
        made.append(real(width, height))
        return made[-1]

    monkeypatch.setattr(plots, "_figure", keep)
    return made


def test_curves_say_which_loss_is_smoothed_and_label_their_axes(tmp_path: Path, figures: list[Any]) -> None:
    history = [{**dict.fromkeys(METRIC_COLUMNS, 0.5), "epoch": epoch} for epoch in (1, 2)]
    plots.training_curves(history, tmp_path / "curves.png", label_smoothing=0.1)
    ax_loss, _, ax_lr = figures[0].axes
    legend = [text.get_text() for text in ax_loss.get_legend().get_texts()]
    assert legend == ["train (label smoothing 0.1)", "validation (no smoothing)"]
    assert ax_loss.get_ylabel() == "cross-entropy" and ax_lr.get_ylabel() == "learning rate"
    assert "first step" in ax_lr.get_title()


def test_curves_mark_whole_epochs_only(tmp_path: Path, figures: list[Any]) -> None:
    # A run of a few epochs had ticks at 1.5, 2.5, …: epochs that have no numbers.
    history = [{**dict.fromkeys(METRIC_COLUMNS, 0.5), "epoch": epoch} for epoch in (1, 2, 3, 4)]
    plots.training_curves(history, tmp_path / "curves.png")
    for ax in figures[0].axes:
        assert [tick % 1 for tick in ax.get_xticks()] == [0] * len(ax.get_xticks())


def test_right_and_wrong_confidence_bars_do_not_cover_each_other(tmp_path: Path, figures: list[Any]) -> None:
    # Right and wrong predictions at the same confidences: both bars of a bin must stay in sight.
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4], [0.1, 0.9]])
    plots.mistake_confidence(probs, np.array([0, 1, 0, 1, 1]), tmp_path / "confidence.png")
    right, wrong = figures[0].axes[0].containers
    drawn = 0
    for a, b in zip(right, wrong, strict=True):
        if a.get_height() and b.get_height():
            drawn += 1
            overlap = min(a.get_x() + a.get_width(), b.get_x() + b.get_width()) - max(a.get_x(), b.get_x())
            assert overlap <= 1e-9
    assert drawn == 2


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs Linux's /dev/full")
def test_a_full_disk_leaves_no_cut_off_plot_and_names_it(tmp_path: Path) -> None:
    history = [{**dict.fromkeys(METRIC_COLUMNS, 0.5), "epoch": 1}]
    path = tmp_path / "curves.png"
    (tmp_path / "curves.png.tmp").symlink_to("/dev/full")  # every write there fails with ENOSPC
    with pytest.raises(OSError, match="No space left") as raised:
        plots.training_curves(history, path)
    assert raised.value.filename == str(path)  # the CLI's one line names it
    assert list(tmp_path.iterdir()) == []  # no part of a PNG that would pass for the plot
