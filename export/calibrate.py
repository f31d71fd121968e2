"""Temperature scaling (Guo et al. 2017): one scalar T fitted on validation logits by minimising the NLL."""

from __future__ import annotations

from typing import Any

import numpy as np

ECE_BINS = 15
T_BOUNDS = (0.05, 100.0)


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of softmax(logits / T)."""
    from scipy.special import log_softmax

    logp = log_softmax(np.asarray(logits, dtype=np.float64) / temperature, axis=1)
    return float(-logp[np.arange(len(labels)), labels].mean())


def ece(probs: np.ndarray, labels: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """Expected calibration error of the top-1 confidence over equal-width bins."""
    probs = np.asarray(probs, dtype=np.float64)
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == np.asarray(labels)
    # Bin i holds confidences in (i/n, (i+1)/n]; the bottom edge is closed so 0 is not lost.
    bins = np.clip(np.ceil(confidence * n_bins).astype(int) - 1, 0, n_bins - 1)
    total = 0.0
    for b in range(n_bins):
        mask = bins == b
        if mask.any():
            total += mask.mean() * abs(correct[mask].mean() - confidence[mask].mean())
    return float(total)


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    from scipy.special import softmax as sp_softmax

    return np.asarray(sp_softmax(np.asarray(logits, dtype=np.float64) / temperature, axis=1))


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The T that minimises the validation NLL (searched on log T, bounded)."""
    from scipy.optimize import minimize_scalar

    lo, hi = np.log(T_BOUNDS[0]), np.log(T_BOUNDS[1])
    result = minimize_scalar(
        lambda log_t: nll(logits, labels, float(np.exp(log_t))), bounds=(lo, hi), method="bounded"
    )
    temperature = float(np.exp(result.x))
    # Never worse than leaving the model alone (bounded search can stop at a flat edge).
    return temperature if nll(logits, labels, temperature) <= nll(logits, labels, 1.0) else 1.0


def measure(logits: np.ndarray, labels: np.ndarray, temperature: float) -> dict[str, Any]:
    """ECE and NLL of ``logits`` before and after dividing by ``temperature`` (on any split)."""
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    return {
        "n": int(len(labels)),
        "ece_before": ece(softmax(logits), labels),
        "ece_after": ece(softmax(logits, temperature), labels),
        "nll_before": nll(logits, labels),
        "nll_after": nll(logits, labels, temperature),
    }


def calibrate(logits: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """Fit T and report NLL / ECE before and after; the top-1 prediction cannot change (T > 0)."""
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) == 0:
        raise ValueError("no validation samples to fit a temperature on")
    if not np.isfinite(logits).all():  # else the fit and every measure are NaN, and only a later step says so
        raise ValueError(
            "the model's logits are not all finite numbers (weights of a training run that diverged?)"
        )
    temperature = fit_temperature(logits, labels)
    before, after = softmax(logits), softmax(logits, temperature)
    accuracy_before = float((before.argmax(1) == labels).mean())
    accuracy_after = float((after.argmax(1) == labels).mean())
    if accuracy_before != accuracy_after:  # only possible through exact ties; refuse rather than hide it
        raise ValueError(
            f"temperature {temperature:.4g} changed the accuracy ({accuracy_before} → {accuracy_after})"
        )
    # No minimum inside the bounds: the NLL still falls towards one (typically every validation image is
    # right, and it falls as T shrinks, probabilities going to 0 and 1), so T says little about new images.
    measured = measure(logits, labels, temperature)
    degenerate = any(nll(logits, labels, bound) <= measured["nll_after"] + 1e-12 for bound in T_BOUNDS)
    return {
        "temperature": temperature,
        "split": "validation",  # the numbers below are measured on the images T was fitted on
        "degenerate": degenerate,
        **measured,
        "accuracy": accuracy_after,
        "ece_bins": ECE_BINS,
    }
