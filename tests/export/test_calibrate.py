from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from export import calibrate


def test_ece_of_a_hand_computed_case() -> None:
    # Two bins used: conf 0.9 (2 samples, 1 right) and conf 0.6 (2 samples, 2 right).
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6], [0.4, 0.6]])
    labels = np.array([0, 1, 1, 1])
    expected = 0.5 * abs(0.5 - 0.9) + 0.5 * abs(1.0 - 0.6)
    assert calibrate.ece(probs, labels) == pytest.approx(expected)


def test_ece_is_zero_when_confidence_matches_accuracy() -> None:
    probs = np.tile([0.75, 0.25], (8, 1))
    labels = np.array([0, 0, 0, 1, 0, 0, 0, 1])  # 75 % right at 75 % confidence
    assert calibrate.ece(probs, labels) == pytest.approx(0.0)


def test_ece_keeps_each_bin_apart() -> None:
    # Bins 13 (0.9), 14 (1.0) and 8 (0.6); 25 % right at 0.775 mean confidence, so merged bins would differ.
    probs = np.array([[0.9, 0.1], [1.0, 0.0], [0.6, 0.4], [0.6, 0.4]])
    labels = np.array([0, 1, 1, 1])
    expected = 0.25 * abs(1.0 - 0.9) + 0.25 * abs(0.0 - 1.0) + 0.5 * abs(0.0 - 0.6)
    assert calibrate.ece(probs, labels) == pytest.approx(expected)


def test_ece_bins_are_closed_at_the_top() -> None:
    # Bin i is (i/n, (i+1)/n] (Guo et al.): with 4 bins, 0.75 shares bin 2 with 0.625 (exact in binary).
    probs = np.array([[0.75, 0.25], [0.625, 0.375]])
    labels = np.array([0, 1])
    assert calibrate.ece(probs, labels, n_bins=4) == pytest.approx(abs(0.5 - 0.6875))


def test_the_before_numbers_are_those_of_the_plain_softmax() -> None:
    logits, labels = np.array([[3.0, 0.0], [2.0, 1.0], [0.0, 1.0]]), np.array([0, 1, 1])
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)  # temperature 1
    measured = calibrate.measure(logits, labels, 2.0)
    assert measured["nll_before"] == pytest.approx(-np.log(probs[[0, 1, 2], labels]).mean())
    assert measured["ece_before"] == pytest.approx(calibrate.ece(probs, labels))


def test_nll_matches_scipy_free_formula() -> None:
    logits = np.array([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
    labels = np.array([0, 1])
    p = np.exp(logits / 2) / np.exp(logits / 2).sum(1, keepdims=True)
    assert calibrate.nll(logits, labels, 2.0) == pytest.approx(-np.log(p[[0, 1], labels]).mean())


def test_temperature_recovers_a_known_overconfidence() -> None:
    rng = np.random.default_rng(0)
    true_logits = rng.normal(0, 1.5, (4000, 5))
    labels = np.array([rng.choice(5, p=np.exp(r) / np.exp(r).sum()) for r in true_logits])
    result = calibrate.calibrate(true_logits * 3.0, labels)  # calibrated logits, made 3x too confident
    assert result["temperature"] == pytest.approx(3.0, rel=0.1)
    assert result["ece_after"] < result["ece_before"]
    assert result["nll_after"] < result["nll_before"]


def test_overconfident_tiny_model_gets_better_calibrated_and_keeps_its_accuracy() -> None:
    """A small MLP trained far past the point of fitting noisy labels is over-confident on held-out data."""
    import torch

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    centers = rng.normal(0, 1.2, (4, 8))

    def sample(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = rng.integers(0, 4, n)
        x = centers[y] + rng.normal(0, 1.0, (n, 8))
        return torch.tensor(x, dtype=torch.float32), torch.tensor(y)

    x_train, y_train = sample(120)
    x_val, y_val = sample(600)
    model = torch.nn.Sequential(torch.nn.Linear(8, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4))
    opt = torch.optim.Adam(model.parameters(), lr=3e-2)
    for _ in range(150):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x_train), y_train).backward()
        opt.step()
    with torch.no_grad():
        logits = model(x_val).numpy()
    labels = y_val.numpy()
    before = calibrate.softmax(logits)
    assert before.max(1).mean() > (before.argmax(1) == labels).mean() + 0.05  # really over-confident

    result = calibrate.calibrate(logits, labels)
    after = calibrate.softmax(logits, result["temperature"])
    assert result["temperature"] > 1.0
    assert result["ece_after"] <= result["ece_before"]
    assert result["nll_after"] < result["nll_before"]
    assert (after.argmax(1) == before.argmax(1)).all()
    assert result["accuracy"] == pytest.approx((before.argmax(1) == labels).mean())
    assert result["n"] == 600 and result["ece_bins"] == 15


def test_a_well_calibrated_model_keeps_a_temperature_near_one() -> None:
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 2.0, (3000, 4))
    labels = np.array([rng.choice(4, p=np.exp(r) / np.exp(r).sum()) for r in logits])
    assert calibrate.fit_temperature(logits, labels) == pytest.approx(1.0, abs=0.1)


def test_no_samples_is_an_error() -> None:
    with pytest.raises(ValueError, match="no validation samples"):
        calibrate.calibrate(np.zeros((0, 3)), np.zeros(0, dtype=int))


@pytest.mark.parametrize("bad", [pytest.param(np.nan, id="nan"), pytest.param(np.inf, id="inf")])
def test_logits_that_are_not_finite_are_an_error(bad: float) -> None:
    # NaN weights (a run that diverged): sklearn's "Input X contains NaN" came two steps later, as thresholds'
    logits = np.array([[2.0, 0.0], [0.0, bad], [1.0, 0.0]])
    with pytest.raises(ValueError, match="logits are not all finite"):
        calibrate.calibrate(logits, np.array([0, 1, 0]))


def test_a_fit_without_a_minimum_is_flagged_and_the_split_named() -> None:
    # Every validation image right: the NLL keeps falling as T shrinks, there is no minimum to find.
    logits = np.array([[4.0, 0.0], [0.0, 4.0], [5.0, 1.0], [1.0, 6.0]])
    result = calibrate.calibrate(logits, np.array([0, 1, 0, 1]))
    assert result["temperature"] < 0.2
    assert result["degenerate"] is True and result["split"] == "validation"
    mixed = np.array([[2.0, 0.0], [2.0, 0.0], [0.0, 1.0], [1.5, 0.0]])
    assert calibrate.calibrate(mixed, np.array([0, 1, 1, 0]))["degenerate"] is False


def test_a_fit_at_either_bound_is_explained_by_that_bound() -> None:
    from export.bundle import degenerate_note

    # Every validation image wrong: flatter is always better, and T runs to the upper bound.
    result = calibrate.calibrate(np.array([[4.0, 0.0], [0.0, 4.0], [5.0, 1.0]]), np.array([1, 0, 1]))
    assert result["degenerate"] is True and result["temperature"] > 50
    assert "rarely right" in degenerate_note(result["temperature"])
    assert "every validation image right?" in degenerate_note(0.05)


def test_a_search_that_ends_worse_than_t_1_keeps_t_1(monkeypatch: pytest.MonkeyPatch) -> None:
    import scipy.optimize

    rng = np.random.default_rng(2)
    logits = rng.normal(0, 2.0, (300, 4))
    labels = np.array([rng.choice(4, p=np.exp(r) / np.exp(r).sum()) for r in logits])  # calibrated at T = 1
    # The bounded search stopping at a flat edge far from the minimum (T = 50).
    stopped = SimpleNamespace(x=np.log(50.0))
    monkeypatch.setattr(scipy.optimize, "minimize_scalar", lambda *args, **kwargs: stopped)
    assert calibrate.nll(logits, labels, 50.0) > calibrate.nll(logits, labels, 1.0)
    assert calibrate.fit_temperature(logits, labels) == 1.0
