"""PNG plots of a run (matplotlib's object API with the Agg canvas: no pyplot state, no display needed)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from training.files import write_atomically


def _save(fig: Any, path: Path, *, dpi: int) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    write_atomically(path, buffer.getvalue())  # a full disk leaves no cut-off PNG


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def training_curves(history: Sequence[dict[str, float]], path: Path, *, label_smoothing: float = 0.0) -> None:
    """Loss, accuracy / macro-F1 and learning rate per epoch."""
    from matplotlib.ticker import MaxNLocator

    epochs = [row["epoch"] for row in history]
    fig = _figure(13, 4)
    ax_loss, ax_score, ax_lr = fig.subplots(1, 3)
    # The training loss is taken against smoothed labels, the validation loss against plain ones: the
    # legend says so, since smoothing alone keeps the training curve above the other.
    smoothed = f" (label smoothing {label_smoothing:g})" if label_smoothing else ""
    ax_loss.plot(epochs, [r["train_loss"] for r in history], marker="o", label=f"train{smoothed}")
    plain = " (no smoothing)" if label_smoothing else ""
    ax_loss.plot(epochs, [r["val_loss"] for r in history], marker="o", label=f"validation{plain}")
    ax_loss.set(title="loss", xlabel="epoch", ylabel="cross-entropy")
    ax_loss.legend()
    ax_score.plot(epochs, [r["train_acc"] for r in history], marker="o", label="train accuracy")
    ax_score.plot(epochs, [r["val_acc"] for r in history], marker="o", label="val accuracy")
    ax_score.plot(epochs, [r["val_f1"] for r in history], marker="o", label="val macro-F1")
    ax_score.set(title="accuracy / macro-F1", xlabel="epoch", ylim=(0, 1))
    ax_score.legend()
    ax_lr.plot(epochs, [r["lr"] for r in history], marker="o", label="head")
    ax_lr.plot(epochs, [r["lr_backbone"] for r in history], marker="o", label="backbone")
    ax_lr.set(
        title="learning rate (epoch's first step)", xlabel="epoch", ylabel="learning rate", yscale="log"
    )
    ax_lr.legend()
    for ax in (ax_loss, ax_score, ax_lr):  # numbers exist per whole epoch: no tick at 1.5 in a short run
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    _save(fig, path, dpi=100)


def confusion_matrix(matrix: Sequence[Sequence[int]], names: Sequence[str], path: Path) -> None:
    from sklearn.metrics import ConfusionMatrixDisplay

    side = max(5.0, 0.45 * len(names) + 2.5)
    fig = _figure(side, side)
    ax = fig.subplots()
    ConfusionMatrixDisplay(np.asarray(matrix), display_labels=list(names)).plot(
        ax=ax, xticks_rotation="vertical", colorbar=False, cmap="Blues"
    )
    ax.set_title("confusion matrix (test split)")
    _save(fig, path, dpi=100)


def mistake_confidence(probs: np.ndarray, labels: np.ndarray, path: Path) -> None:
    """Histogram of the top probability of wrong predictions (against right ones, bars side by side)."""
    top = probs.max(axis=1) if len(labels) else np.zeros(0)
    wrong = probs.argmax(axis=1) != labels if len(labels) else np.zeros(0, dtype=bool)
    fig = _figure(7, 4)
    ax = fig.subplots()
    bins = np.linspace(0.0, 1.0, 21)
    legend = [f"right ({int((~wrong).sum())})", f"wrong ({int(wrong.sum())})"]
    ax.hist([top[~wrong], top[wrong]], bins=bins, label=legend)  # two datasets: bars side by side
    ax.set(title="confidence of predictions (test split)", xlabel="top probability", ylabel="images")
    ax.legend()
    _save(fig, path, dpi=100)


def mistake_grid(images: Sequence[np.ndarray], captions: Sequence[str], title: str, path: Path) -> None:
    """A grid of images (uint8 HWC) with captions, e.g. the most confident mistakes."""
    columns = 4
    rows = max(1, -(-len(images) // columns))
    fig = _figure(3 * columns, 3.3 * rows)
    axes = np.atleast_1d(fig.subplots(rows, columns, squeeze=False)).ravel()
    for ax in axes:
        ax.axis("off")
    for ax, image, caption in zip(axes, images, captions, strict=False):
        ax.imshow(image)
        ax.set_title(caption, fontsize=8)
    fig.suptitle(title)
    _save(fig, path, dpi=90)
