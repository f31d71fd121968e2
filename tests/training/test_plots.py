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


def test_each_curve_draws_its_own_column(tmp_path: Path, figures: list[Any]) -> None:
    history = [
        {column: float(i) + epoch / 100 for i, column in enumerate(METRIC_COLUMNS)} for epoch in (1, 2)
    ]
    for row, epoch in zip(history, (1, 2), strict=True):
        row["epoch"] = epoch
    plots.training_curves(history, tmp_path / "curves.png")
    drawn = [[list(line.get_ydata()) for line in ax.get_lines()] for ax in figures[0].axes]
    wanted = [["train_loss", "val_loss"], ["train_acc", "val_acc", "val_f1"], ["lr", "lr_backbone"]]
    assert drawn == [[[row[column] for row in history] for column in columns] for columns in wanted]


def test_the_confusion_matrix_has_true_classes_down_and_predictions_across(
    tmp_path: Path, figures: list[Any]
) -> None:
    matrix = [
        [5, 1],
        [0, 3],
    ]  # one "a" predicted as "b" (report.json's confusion_matrix: scikit-learn's rows)
    plots.confusion_matrix(matrix, ["a", "b"], tmp_path / "cm.png")
    ax = figures[0].axes[0]
    assert (ax.get_ylabel(), ax.get_xlabel()) == ("True label", "Predicted label")
    assert np.asarray(ax.images[0].get_array()).tolist() == matrix


def test_the_confidence_bars_count_right_and_wrong_predictions_apart(
    tmp_path: Path, figures: list[Any]
) -> None:
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.6, 0.4], [0.1, 0.9]])
    plots.mistake_confidence(probs, np.array([0, 0, 0, 1, 0]), tmp_path / "confidence.png")
    right, wrong = figures[0].axes[0].containers
    assert (sum(bar.get_height() for bar in right), sum(bar.get_height() for bar in wrong)) == (3, 2)
    legend = [text.get_text() for text in figures[0].axes[0].get_legend().get_texts()]
    assert legend == ["right (3)", "wrong (2)"]


def test_the_mistake_grid_shows_every_image(tmp_path: Path, figures: list[Any]) -> None:
    images = [np.full((4, 4, 3), 40 * i, np.uint8) for i in range(5)]  # a second, part-filled row of 4
    plots.mistake_grid(images, [f"image {i}" for i in range(5)], "mistakes", tmp_path / "grid.png")
    shown = [ax.get_title() for ax in figures[0].axes if ax.images]
    assert shown == [f"image {i}" for i in range(5)]


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs Linux's /dev/full")
def test_a_full_disk_leaves_no_cut_off_plot_and_names_it(tmp_path: Path) -> None:
    history = [{**dict.fromkeys(METRIC_COLUMNS, 0.5), "epoch": 1}]
    path = tmp_path / "curves.png"
    (tmp_path / "curves.png.tmp").symlink_to("/dev/full")  # every write there fails with ENOSPC
    with pytest.raises(OSError, match="No space left") as raised:
        plots.training_curves(history, path)
    assert raised.value.filename == str(path)  # the CLI's one line names it
    assert list(tmp_path.iterdir()) == []  # no part of a PNG that would pass for the plot
