"""Abstain when unsure, flag inputs unlike the training data: the scores and the decisions (numpy only).

Export sets the thresholds on its validation split and stores them in the bundle's metadata
(``skin.thresholds``); the runtime applies them with the same score functions, defined once here::

    {"confidence": {"min_probability": 0.62, "target_precision": 0.9, ...},
     "ood": {"score": "mahalanobis", "max_score": 41.7, "acceptance": 0.95, ...}}

Each prediction then carries ``"confidence": "ok" | "low"`` (top-1 calibrated probability against
``min_probability``) and ``"in_distribution": true | false`` with the ``"ood_score"`` it was decided on. A
bundle without (usable) thresholds serves predictions without those fields; ``describe()`` says why.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

import numpy as np

from runtime import bundle

log = logging.getLogger("runtime")

CONFIDENCE = "confidence"  # thresholds key and prediction field: "ok" | "low"
OOD = "ood"  # thresholds key
IN_DISTRIBUTION = "in_distribution"  # prediction field: true | false
OOD_SCORE = "ood_score"  # prediction field: the score in_distribution was decided on

Outputs = dict[str, np.ndarray]  # graph output name -> its array for the batch


@dataclass(frozen=True)
class Score:
    """An out-of-distribution score computed from one of the graph's outputs, for a batch."""

    name: str
    needs: str  # the graph output it is computed from
    higher_is_familiar: bool  # True: in distribution when score >= min_score; False: when <= max_score
    compute: Callable[[Outputs], np.ndarray]  # -> float64 [batch]
    description: str

    @property
    def threshold_key(self) -> str:
        return "min_score" if self.higher_is_familiar else "max_score"


def _logsumexp(logits: np.ndarray) -> np.ndarray:
    x = np.asarray(logits, dtype=np.float64)
    top = x.max(axis=1)
    return np.asarray(top + np.log(np.exp(x - top[:, None]).sum(axis=1)))


def _column(name: str) -> Callable[[Outputs], np.ndarray]:
    return lambda out: np.asarray(out[name], dtype=np.float64)


SCORES: dict[str, Score] = {
    s.name: s
    for s in (
        Score(
            "max_prob",
            bundle.PROBS_OUTPUT,
            True,
            lambda out: _column(bundle.PROBS_OUTPUT)(out).max(axis=1),
            "top-1 calibrated probability (Hendrycks & Gimpel 2017)",
        ),
        Score(
            "max_logit",
            bundle.LOGITS_OUTPUT,
            True,
            lambda out: _column(bundle.LOGITS_OUTPUT)(out).max(axis=1),
            "largest logit (Hendrycks et al. 2022)",
        ),
        Score(
            "energy",
            bundle.LOGITS_OUTPUT,
            False,
            lambda out: -_logsumexp(out[bundle.LOGITS_OUTPUT]),
            "energy = -logsumexp(logits), T = 1 (Liu et al. 2020)",
        ),
        Score(
            "mahalanobis",
            bundle.OOD_OUTPUT,
            False,
            lambda out: _column(bundle.OOD_OUTPUT)(out).reshape(-1),
            "squared Mahalanobis distance of one stage's pooled features to the nearest class mean, shared "
            "covariance (Lee et al. 2018); computed in the graph",
        ),
    )
}


def familiar(score: Score, values: np.ndarray, threshold: float) -> np.ndarray:
    """True where ``values`` of ``score`` are on the in-distribution side of ``threshold`` (inclusive)."""
    return np.asarray(values >= threshold if score.higher_is_familiar else values <= threshold)


@dataclass(frozen=True)
class Policy:
    """The bundle's usable thresholds; ``judge`` turns a batch of outputs into per-prediction fields."""

    min_probability: float | None = None
    score: Score | None = None
    threshold: float | None = None  # min_score or max_score of ``score``
    notes: tuple[str, ...] = ()

    @classmethod
    def from_thresholds(cls, thresholds: dict[str, Any], *, outputs: Collection[str]) -> Policy:
        """Read ``skin.thresholds``; what cannot be applied is left out, with a note saying why."""
        notes: list[str] = []
        min_probability = None
        conf = thresholds.get(CONFIDENCE)
        if conf is not None:
            value = conf.get("min_probability") if isinstance(conf, dict) else None
            if isinstance(value, int | float) and _number(value):
                min_probability = float(value)
            else:
                notes.append("confidence threshold unusable: 'min_probability' is not a number")
        score, threshold = None, None
        ood = thresholds.get(OOD)
        if ood is not None:
            name = ood.get("score") if isinstance(ood, dict) else None
            known = SCORES.get(name) if isinstance(name, str) else None
            if known is None:
                notes.append(f"out-of-distribution threshold unusable: score {name!r} is not known here")
            elif not _number(ood.get(known.threshold_key)):
                notes.append(f"out-of-distribution threshold unusable: {known.threshold_key!r} is no number")
            elif known.needs not in outputs:
                notes.append(f"out-of-distribution score {known.name!r} needs a {known.needs!r} graph output")
            else:
                score, threshold = known, float(ood[known.threshold_key])
        if conf is None and ood is None:
            notes.append("the bundle has no decision thresholds (exported without data, or by older export)")
        if thresholds:  # a bundle that meant to carry thresholds but cannot apply them: say so at start
            for note in notes:
                log.warning("uncertainty: %s", note)
        return cls(min_probability, score, threshold, tuple(notes))

    @property
    def needs(self) -> list[str]:
        """Graph outputs to fetch besides the probabilities."""
        if self.score is None or self.score.needs == bundle.PROBS_OUTPUT:
            return []
        return [self.score.needs]

    def judge(self, outputs: Outputs) -> list[dict[str, Any]]:
        """Per row: ``confidence`` and ``in_distribution`` + ``ood_score`` where the bundle has thresholds."""
        probs = np.asarray(outputs[bundle.PROBS_OUTPUT], dtype=np.float64)
        rows: list[dict[str, Any]] = [{} for _ in range(len(probs))]
        if self.min_probability is not None:
            ok = probs.max(axis=1) >= self.min_probability
            for row, good in zip(rows, ok, strict=True):
                row[CONFIDENCE] = "ok" if good else "low"
        if self.score is not None and self.threshold is not None:
            values = self.score.compute(outputs)
            inside = familiar(self.score, values, self.threshold)
            for row, value, good in zip(rows, values, inside, strict=True):
                row[IN_DISTRIBUTION] = bool(good)
                row[OOD_SCORE] = round(float(value), 6) if math.isfinite(value) else None
        return rows

    def describe(self) -> dict[str, Any]:
        """For /api/info: which fields predictions carry, from which thresholds, and why any are missing."""
        out: dict[str, Any] = {
            CONFIDENCE: self.min_probability is not None,
            OOD: self.score is not None,
            "fields": [
                *([CONFIDENCE] if self.min_probability is not None else []),
                *([IN_DISTRIBUTION, OOD_SCORE] if self.score is not None else []),
            ],
        }
        if self.min_probability is not None:
            out["min_probability"] = self.min_probability
        if self.score is not None:
            out["ood_score"] = {
                "name": self.score.name,
                "description": self.score.description,
                "in_distribution_when": f"{'>=' if self.score.higher_is_familiar else '<='} {self.threshold}",
                self.score.threshold_key: self.threshold,
            }
        if self.notes:
            out["notes"] = list(self.notes)
        return out


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
