"""Metrics (scikit-learn) for one evaluation: per-epoch numbers and the final report.json."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def classes_without(labels: np.ndarray, class_names: Sequence[str]) -> list[str]:
    """The classes that have no image among ``labels`` (class indices)."""
    seen = set(np.asarray(labels).tolist())
    return [name for i, name in enumerate(class_names) if i not in seen]


def epoch_metrics(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Loss (plain cross-entropy, no smoothing), accuracy and macro precision / recall / F1.

    The macro averages are over the classes present in ``labels`` or the predictions (scikit-learn's default
    label set): a class with no image in the split would otherwise count as an F1 of 0.
    """
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support

    if len(labels) == 0:
        nan = float("nan")
        return {"loss": nan, "accuracy": nan, "precision": nan, "recall": nan, "f1": nan}
    z = logits.astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    log_probs = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    loss = float(-log_probs[np.arange(len(labels)), labels].mean())
    preds = logits.argmax(axis=1)
    p, r, f1, _ = precision_recall_fscore_support(labels, preds, average="macro", zero_division=0)
    return {
        "loss": loss,
        "accuracy": float(accuracy_score(labels, preds)),
        "precision": float(p),
        "recall": float(r),
        "f1": float(f1),
    }


def top_k_accuracy(probs: np.ndarray, labels: np.ndarray, k: int = 3) -> float:
    """Share of samples whose label is among the k most probable classes (1.0 when k >= classes)."""
    if len(labels) == 0:
        return float("nan")
    top = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return float((top == labels[:, None]).any(axis=1).mean())


def classification_summary(
    probs: np.ndarray,
    labels: np.ndarray,
    class_names: list[str],
    *,
    display_names: list[str] | None = None,
    skipped: int = 0,
) -> dict[str, Any]:
    """scikit-learn's classification_report (output_dict shape) plus confusion matrix and top-3 accuracy.

    Every class has its row (support 0 when the split has no image of it); the macro averages are over the
    classes present in ``labels`` or the predictions, as in ``epoch_metrics``; ``classes_without_images``
    names those with no image in ``labels``. The weighted averages need no change: such a class weighs 0.
    """
    from sklearn.metrics import classification_report, confusion_matrix, precision_recall_fscore_support

    indices = list(range(len(class_names)))
    preds = probs.argmax(axis=1) if len(labels) else np.zeros(0, dtype=np.int64)
    report: dict[str, Any] = classification_report(
        labels, preds, labels=indices, target_names=class_names, output_dict=True, zero_division=0
    )
    present = set(labels.tolist()) | set(preds.tolist())
    if len(labels) and present != set(indices):  # all present: scikit-learn's own numbers, unchanged
        p, r, f1, _ = precision_recall_fscore_support(labels, preds, average="macro", zero_division=0)
        report["macro avg"].update({"precision": p, "recall": r, "f1-score": f1})
    report["classes_without_images"] = classes_without(labels, class_names)
    report["confusion_matrix"] = confusion_matrix(labels, preds, labels=indices).tolist()
    report["class_names"] = list(class_names)
    if display_names is not None:
        report["display_names"] = list(display_names)
    report["top3_accuracy"] = top_k_accuracy(probs, labels, 3)
    report["skipped_images"] = int(skipped)
    report["split"] = "test"  # the split a run reports on (validation only picks the epoch)
    return plain(report)


def plain(value: Any) -> Any:
    """numpy scalars and arrays → Python types, so json and torch.load(weights_only=True) take them."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return plain(value.tolist())
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    return value
