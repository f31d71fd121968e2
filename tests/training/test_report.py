"""Metrics when a class has no image in the split: per-class rows stay, macro averages leave it out."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import classification_report, precision_recall_fscore_support

from training.report import classification_summary, epoch_metrics, plain, top_k_accuracy

NAMES = ["a", "b", "c"]


def _one_hot(preds: list[int], classes: int) -> np.ndarray:
    return np.eye(classes, dtype=np.float32)[preds]


@pytest.mark.parametrize(
    ("preds", "macro_f1"),
    [
        pytest.param([0, 1, 1, 1], (2 / 3 + 0.8) / 2, id="never-predicted"),  # over a and b
        pytest.param([0, 2, 1, 1], (2 / 3 + 1.0 + 0.0) / 3, id="predicted-once"),  # a wrong guess counts
    ],
)
def test_a_class_without_images_is_kept_in_the_table_not_in_the_macro_average(
    preds: list[int], macro_f1: float
) -> None:
    labels = np.array([0, 0, 1, 1])
    report = classification_summary(_one_hot(preds, 3), labels, NAMES)
    assert report["c"]["support"] == 0 and set(report["c"]) == {"precision", "recall", "f1-score", "support"}
    assert report["classes_without_images"] == ["c"]
    assert report["macro avg"]["f1-score"] == pytest.approx(macro_f1)
    assert report["macro avg"]["support"] == 4
    # The weighted average weighs classes by their images: the one without any never counted there.
    expected = classification_report(labels, preds, labels=[0, 1, 2], output_dict=True, zero_division=0)
    assert report["weighted avg"] == expected["weighted avg"]
    logits = np.log(_one_hot(preds, 3) * 0.9 + 0.05)
    assert epoch_metrics(logits, labels)["f1"] == pytest.approx(macro_f1)


def test_with_every_class_present_the_numbers_are_scikit_learns() -> None:
    rng = np.random.default_rng(0)
    classes = 22
    labels = np.concatenate([np.arange(classes), rng.integers(0, classes, 300)])
    logits = rng.normal(size=(len(labels), classes)).astype(np.float32)
    logits[np.arange(len(labels)), labels] += 1.5
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    names = [f"class{i:02d}" for i in range(classes)]
    report = classification_summary(probs, labels, names)
    preds = probs.argmax(axis=1)
    expected = classification_report(
        labels, preds, labels=list(range(classes)), target_names=names, output_dict=True, zero_division=0
    )
    for key in [*names, "accuracy", "macro avg", "weighted avg"]:
        assert report[key] == expected[key], key  # exactly, not approximately
    assert report["classes_without_images"] == []
    p, r, f1, _ = precision_recall_fscore_support(
        labels, logits.argmax(axis=1), labels=list(range(classes)), average="macro", zero_division=0
    )
    got = epoch_metrics(logits, labels)
    assert (got["precision"], got["recall"], got["f1"]) == (p, r, f1)


def test_top_k_accuracy_takes_the_k_most_probable_classes() -> None:
    probs, label = np.array([[0.5, 0.3, 0.2]]), np.array([2])  # the label is the least probable class
    assert top_k_accuracy(probs, label, 1) == top_k_accuracy(probs, label, 2) == 0.0
    assert top_k_accuracy(probs, label, 3) == 1.0
    assert top_k_accuracy(probs, np.array([1]), 2) == 1.0
    # The report's top-3: the third most probable of four counts, the fourth does not.
    four = np.array([[0.4, 0.3, 0.2, 0.1]] * 2)
    report = classification_summary(four, np.array([2, 3]), [*NAMES, "d"])
    assert report["top3_accuracy"] == 0.5


def test_the_loss_is_the_cross_entropy_of_the_true_labels() -> None:
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    labels = np.array([1, 2])  # the first one wrong
    loss = epoch_metrics(np.log(probs), labels)["loss"]
    assert loss == pytest.approx(-(np.log(0.2) + np.log(0.8)) / 2)


def test_numpy_values_become_python_types() -> None:
    # report.json is written with json, and the checkpoint's copy read with torch.load(weights_only=True),
    # which refuses numpy scalars.
    value = plain({1: np.int64(2), "b": (np.float32(0.5), np.arange(2))})
    assert value == {"1": 2, "b": [0.5, [0, 1]]}
    assert (type(value["1"]), type(value["b"][0]), type(value["b"][1][0])) == (int, float, int)


def test_a_split_without_images_gives_no_numbers_and_large_logits_a_finite_loss() -> None:
    # A validation split whose every image was unreadable: nan, not a crash ("no macro-F1" for that epoch).
    empty = epoch_metrics(np.zeros((0, 3), np.float32), np.zeros(0, np.int64))
    assert set(empty) == {"loss", "accuracy", "precision", "recall", "f1"}
    assert all(np.isnan(v) for v in empty.values())
    loss = epoch_metrics(np.array([[1000.0, 0.0], [0.0, 1000.0]], np.float32), np.array([0, 0]))["loss"]
    assert loss == pytest.approx(500.0)  # exp(1000) would overflow without the max subtracted


def test_a_predicted_class_without_images_has_a_recall_of_0_in_the_macro_average() -> None:
    labels, names = np.array([0, 0, 1, 1]), [*NAMES, "d"]  # "c" predicted once, "d" not even that
    report = classification_summary(_one_hot([0, 2, 1, 1], 4), labels, names, skipped=2)
    assert report["macro avg"]["recall"] == pytest.approx((0.5 + 1.0 + 0.0) / 3)  # over a, b and c
    assert (report["class_names"], report["skipped_images"]) == (names, 2)


def test_a_class_never_predicted_has_a_precision_of_0_in_the_validation_macro_average() -> None:
    # "b" has images but no prediction: its precision is 0/0, counted as 0, not as a perfect 1
    numbers = epoch_metrics(_one_hot([0, 0, 0, 0], 2), np.array([0, 0, 1, 1]))
    assert numbers["precision"] == pytest.approx((0.5 + 0.0) / 2)
    assert numbers["recall"] == pytest.approx((1.0 + 0.0) / 2)


def test_the_confusion_matrix_has_a_row_per_true_class_and_a_column_per_prediction() -> None:
    # two "a" images, one predicted "b": row a, column b (the plot draws it with true classes down)
    report = classification_summary(_one_hot([0, 1, 2], 3), np.array([0, 0, 2]), NAMES)
    assert report["confusion_matrix"] == [[1, 1, 0], [0, 0, 0], [0, 0, 1]]
