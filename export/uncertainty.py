"""Decision thresholds set on the validation split: abstain when unsure, flag inputs unlike the training data.

Confidence: keep a prediction when its top-1 calibrated probability is at least ``min_probability``, the
lowest value at which the kept validation predictions still reach the target precision (the largest coverage
that does). Out of distribution: every score of ``runtime.uncertainty.SCORES`` is measured by AUROC,
validation images against generated foreign images; the best is kept, its threshold set at a fixed
validation acceptance rate.
The test split and a second, independent set of foreign images then say how both hold up.

numpy only (scikit-learn for AUROC, matplotlib for the plot, both imported where used); the score functions
are the runtime's own, so export measures exactly what serving computes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from runtime import bundle
from runtime import uncertainty as rt

PLOT_FILE = "risk_coverage.png"
CURVE_POINTS = 100  # risk–coverage points kept in report.json per split


@dataclass(frozen=True)
class Curve:
    """Risk–coverage curve: for each distinct confidence t (descending), accepting confidence >= t."""

    thresholds: np.ndarray
    coverage: np.ndarray  # fraction of all predictions accepted
    precision: np.ndarray  # fraction of the accepted ones that are right (1 - risk)


def risk_coverage(confidence: np.ndarray, correct: np.ndarray, *, served: bool = False) -> Curve:
    """``served``: values the runtime cannot tell apart (``apart``) count as ties, as equal ones always do."""
    conf = np.asarray(confidence, dtype=np.float64)
    right = np.asarray(correct, dtype=bool)
    if conf.shape != right.shape or conf.ndim != 1:
        raise ValueError("confidence and correct must be 1-D arrays of the same length")
    order = np.argsort(-conf, kind="stable")
    sorted_conf = conf[order]
    hits = np.cumsum(right[order])
    # The last index of every run of tied confidences: a threshold accepts all of a tie or none of it.
    cut = apart(sorted_conf[:-1], sorted_conf[1:]) if served else sorted_conf[1:] != sorted_conf[:-1]
    last = np.flatnonzero(np.append(cut, True))
    accepted = last + 1
    return Curve(sorted_conf[last], accepted / len(conf), hits[last] / accepted)


def at_threshold(confidence: np.ndarray, correct: np.ndarray, min_probability: float) -> dict[str, Any]:
    """Coverage and precision of accepting confidence >= ``min_probability``."""
    keep = np.asarray(confidence, dtype=np.float64) >= min_probability
    right = np.asarray(correct, dtype=bool)
    n = len(keep)
    return {
        "n": n,
        "coverage": float(keep.mean()) if n else None,
        "precision": float(right[keep].mean()) if keep.any() else None,
        "accuracy_all": float(right.mean()) if n else None,
    }


# The runtime compares the graph's float32 outputs, which differ from these float64 values by up to ~1e-6
# (the parity check's bound): a threshold exactly on a validation value could land on either side of that
# image once served. So a threshold sits this far (relative) past the last value it accepts, and values closer
# than twice that are accepted or refused together: float32 cannot keep them apart (probabilities within 3e-8
# of 1, common at a small temperature, all serve as 1.0).
EDGE = 1e-5


def apart(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Whether a threshold fits between ``a`` and ``b`` with ``EDGE`` on either side of it."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return np.asarray(np.abs(a - b) > 2 * EDGE * np.maximum(1.0, np.maximum(np.abs(a), np.abs(b))))


def between(accepted: float, rejected: float | None, *, higher_is_familiar: bool) -> float:
    """Just past ``accepted`` towards ``rejected`` (the next value the other way, if any), which stays out."""
    step = EDGE * max(1.0, abs(accepted))
    if rejected is not None and rejected != accepted:
        step = min(step, abs(accepted - rejected) / 2)
    return accepted - step if higher_is_familiar else accepted + step


def confidence_threshold(
    confidence: np.ndarray, correct: np.ndarray, target_precision: float
) -> dict[str, Any]:
    """The lowest ``min_probability`` whose accepted predictions reach ``target_precision``.

    When no threshold reaches it (the most confident predictions are already too often wrong), the threshold
    sits just above 1, so every prediction is reported as low confidence: also a new image more confident than
    any validation image, which nothing says would be right more often. Otherwise the threshold lies just
    below the last accepted confidence (``between``); confidences too close to be told apart once served are
    accepted or refused together (``apart``).
    """
    if not 0.0 < target_precision <= 1.0:
        raise ValueError(f"target precision must be in (0, 1], not {target_precision}")
    curve = risk_coverage(confidence, correct, served=True)
    if len(curve.thresholds) == 0:
        raise ValueError("no predictions to choose a confidence threshold from")
    good = np.flatnonzero(curve.precision >= target_precision)
    if len(good) == 0:
        return {"min_probability": between(1.0, None, higher_is_familiar=False), "reached": False}
    best = good[-1]  # the lowest threshold, i.e. the largest coverage, that still meets the target
    below = float(curve.thresholds[best + 1]) if best + 1 < len(curve.thresholds) else None
    return {
        "min_probability": between(float(curve.thresholds[best]), below, higher_is_familiar=True),
        "reached": True,
    }


def acceptance_threshold(values: np.ndarray, acceptance: float, *, higher_is_familiar: bool) -> float:
    """The threshold that accepts ``acceptance`` of new images like ``values`` (split-conformal rank).

    Of the n values ordered from most to least familiar, the threshold is the ceil((n + 1) * acceptance)-th:
    then a new image from the same distribution is accepted with probability at least ``acceptance`` (for
    exchangeable images). With fewer than acceptance / (1 - acceptance) values (19 for 95 %) that rank is past
    the end and the least familiar value is used: the guarantee no longer holds, the report says so. The
    threshold lies just past that value (``between``), and past any value too close to it to be told apart
    once served (``apart``): the same validation values are accepted, served or not.
    """
    if not 0.0 < acceptance <= 1.0:
        raise ValueError(f"acceptance must be in (0, 1], not {acceptance}")
    ranked = np.sort(np.asarray(values, dtype=np.float64))
    if len(ranked) == 0:
        raise ValueError("no values to set an acceptance threshold on")
    if higher_is_familiar:
        ranked = ranked[::-1]
    rank = min(len(ranked), math.ceil((len(ranked) + 1) * acceptance - 1e-9))  # 1e-9: float error
    while rank < len(ranked) and not apart(ranked[rank - 1], ranked[rank]):  # ties are accepted with it
        rank += 1
    last = float(ranked[rank - 1])
    beyond = float(ranked[rank]) if rank < len(ranked) else None
    return between(last, beyond, higher_is_familiar=higher_is_familiar)


def conformal_enough(n: int, acceptance: float) -> bool:
    """Whether n validation values are enough for the acceptance guarantee of ``acceptance_threshold``."""
    return math.ceil((n + 1) * acceptance - 1e-9) <= n


def auroc(inside: np.ndarray, outside: np.ndarray, *, higher_is_familiar: bool) -> float:
    """Probability that an in-distribution image looks more familiar than a foreign one (1 = perfect)."""
    from sklearn.metrics import roc_auc_score

    values = np.concatenate([np.asarray(inside, np.float64), np.asarray(outside, np.float64)])
    labels = np.concatenate([np.ones(len(inside)), np.zeros(len(outside))])
    return float(roc_auc_score(labels, values if higher_is_familiar else -values))


def softmax(logits: np.ndarray, temperature: float) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64) / temperature
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return np.asarray(e / e.sum(axis=1, keepdims=True))


def curve_points(curve: Curve) -> list[dict[str, float]]:
    """At most CURVE_POINTS points of the curve, evenly spread over its thresholds, both ends kept."""
    n = len(curve.thresholds)
    idx = np.unique(np.linspace(0, n - 1, min(n, CURVE_POINTS)).round().astype(int))
    return [
        {
            "threshold": round(float(curve.thresholds[i]), 6),
            "coverage": round(float(curve.coverage[i]), 6),
            "precision": round(float(curve.precision[i]), 6),
        }
        for i in idx
    ]


def fit_mahalanobis(features: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Class means [C, K] and W [K, K] with W W^T the inverse of the shared, Ledoit-Wolf shrunk covariance.

    Shrinkage keeps the covariance invertible when there are fewer images than features (and for dead
    channels); W is the Cholesky factor of the precision, so d_c(f) = ||(f - mu_c) W||^2.
    """
    from sklearn.covariance import LedoitWolf

    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels)
    classes = np.unique(y)
    if len(x) < 2:
        raise ValueError("need at least two training images to fit class means and a covariance")
    means = np.stack([x[y == c].mean(axis=0) for c in classes])
    centred = x - means[np.searchsorted(classes, y)]
    precision = LedoitWolf(assume_centered=True).fit(centred).precision_
    try:
        return means, np.linalg.cholesky((precision + precision.T) / 2)
    except np.linalg.LinAlgError:  # no spread at all around the means: numpy's words would not say why
        raise ValueError(
            "the training images' features do not vary around their class means (one image per class?), "
            "so no covariance can be fitted"
        ) from None


def mahalanobis(features: np.ndarray, means: np.ndarray, whitening: np.ndarray) -> np.ndarray:
    """Squared distance to the nearest class mean, as ``export.onnx.add_mahalanobis`` computes it."""
    z = np.asarray(features, dtype=np.float64) @ whitening
    m = means @ whitening
    return np.asarray(((z[:, None, :] - m[None, :, :]) ** 2).sum(axis=2).min(axis=1))


@dataclass
class Images:
    """What the core graph gave for one set of images: logits and pooled features by output name."""

    logits: np.ndarray
    pools: dict[str, np.ndarray]
    labels: np.ndarray | None = None  # class indices (dataset splits)
    kinds: list[str] | None = None  # kind of each generated foreign image


@dataclass
class Analysis:
    thresholds: dict[str, Any]  # for the bundle's metadata
    report: dict[str, Any]  # report.json's "uncertainty"
    curves: dict[str, Curve]
    graph_score: (
        tuple[str, np.ndarray, np.ndarray] | None
    )  # (pooled output, means, W) to build into the graph


def analyse(
    *,
    temperature: float,
    train: Images,
    val: Images,
    test: Images,
    foreign_pick: Images,
    foreign_check: Images,
    pool_descriptions: dict[str, str],
    target_precision: float = 0.9,
    acceptance: float = 0.95,
) -> Analysis:
    """Choose the thresholds on ``val`` and measure them on ``test`` and ``foreign_check``.

    The out-of-distribution score is the candidate with the highest AUROC of ``val`` against ``foreign_pick``
    (ties, at two decimals: the one flagging more of ``foreign_pick`` at the threshold, then the later one in
    the list: deeper features, then the logit scores, which need nothing added to the graph). Mahalanobis
    candidates are fitted on ``train``, never on the images they are measured on.
    """
    if val.labels is None or test.labels is None or train.labels is None:
        raise ValueError("the dataset splits need their labels")

    def outputs(images: Images) -> rt.Outputs:
        return {
            bundle.PROBS_OUTPUT: softmax(images.logits, temperature),
            bundle.LOGITS_OUTPUT: np.asarray(images.logits, dtype=np.float64),
        }

    sets = {"val": val, "test": test, "pick": foreign_pick, "check": foreign_check}
    outs = {name: outputs(images) for name, images in sets.items()}

    # Confidence: the calibrated top-1 probability.
    val_probs, test_probs = outs["val"][bundle.PROBS_OUTPUT], outs["test"][bundle.PROBS_OUTPUT]
    val_conf, val_right = val_probs.max(axis=1), val_probs.argmax(axis=1) == val.labels
    test_conf, test_right = test_probs.max(axis=1), test_probs.argmax(axis=1) == test.labels
    chosen = confidence_threshold(val_conf, val_right, target_precision)
    t_conf = chosen["min_probability"]
    val_at, test_at = at_threshold(val_conf, val_right, t_conf), at_threshold(test_conf, test_right, t_conf)
    curves = {"validation": risk_coverage(val_conf, val_right), "test": risk_coverage(test_conf, test_right)}

    # Out of distribution: every candidate's values on every set.
    candidates: list[dict[str, Any]] = []
    for source, description in pool_descriptions.items():
        means, whitening = fit_mahalanobis(train.pools[source], train.labels)
        candidates.append(
            {
                "name": f"mahalanobis:{source}",
                "score": rt.SCORES["mahalanobis"],
                "features": description,
                "values": {k: mahalanobis(v.pools[source], means, whitening) for k, v in sets.items()},
                "graph": (source, means, whitening),
            }
        )
    for name in ("max_prob", "max_logit", "energy"):
        score = rt.SCORES[name]
        values = {k: score.compute(out) for k, out in outs.items()}
        candidates.append({"name": name, "score": score, "values": values, "graph": None})
    for rank, c in enumerate(candidates):
        score, values = c["score"], c["values"]
        c["auroc"] = auroc(values["val"], values["pick"], higher_is_familiar=score.higher_is_familiar)
        c["threshold"] = acceptance_threshold(
            values["val"], acceptance, higher_is_familiar=score.higher_is_familiar
        )
        c["pick_flagged"] = float((~rt.familiar(score, values["pick"], c["threshold"])).mean())
        c["key"] = (round(c["auroc"], 2), round(c["pick_flagged"], 2), rank)
    best = max(candidates, key=lambda c: c["key"])
    score, t_ood, values = best["score"], best["threshold"], best["values"]
    inside = {k: rt.familiar(score, v, t_ood) for k, v in values.items()}
    check_low = outs["check"][bundle.PROBS_OUTPUT].max(axis=1) < t_conf
    kinds = foreign_check.kinds or ["generated"] * len(inside["check"])
    by_kind = {
        kind: round(float((~inside["check"])[[k == kind for k in kinds]].mean()), 6)
        for kind in dict.fromkeys(kinds)
    }
    # Kinds in the check set that the choice of score never saw: the fairest stand-in for "anything else".
    held_out = [k for k in dict.fromkeys(kinds) if k not in set(foreign_pick.kinds or [])]
    held_mask = np.array([k in held_out for k in kinds], dtype=bool)
    held_flagged = float((~inside["check"])[held_mask].mean()) if held_mask.any() else None
    test_acceptance = float(inside["test"].mean()) if len(inside["test"]) else None
    flagged = float((~inside["check"]).mean()) if len(inside["check"]) else None
    ood_meta = {
        "score": score.name,
        score.threshold_key: t_ood,
        "acceptance": acceptance,
        "val_acceptance": float(inside["val"].mean()),
        "test_acceptance": test_acceptance,
        "foreign_flagged": flagged,
    }
    if "features" in best:
        ood_meta["features"] = best["features"]

    thresholds = {
        rt.CONFIDENCE: {
            "min_probability": t_conf,
            "target_precision": target_precision,
            "reached_on_validation": chosen["reached"],
            "val_coverage": val_at["coverage"],
            "val_precision": val_at["precision"],
            "test_coverage": test_at["coverage"],
            "test_precision": test_at["precision"],
        },
        rt.OOD: ood_meta,
    }
    report = {
        "summary": {
            "test_in_distribution_accepted": test_acceptance,
            "foreign_flagged": flagged,
            "foreign_held_out_flagged": held_flagged,
            "test_confident_coverage": test_at["coverage"],
            "test_confident_precision": test_at["precision"],
        },
        "confidence": {
            "score": "top-1 calibrated probability",
            "min_probability": t_conf,
            "target_precision": target_precision,
            "reached_on_validation": chosen["reached"],
            "rule": "largest validation coverage whose accepted predictions reach the target precision",
            "validation": val_at,
            "test": test_at,
            "risk_coverage": {split: curve_points(curve) for split, curve in curves.items()},
            "plot": PLOT_FILE,
        },
        "ood": {
            **ood_meta,
            "description": score.description,
            "chosen_by": (
                f"highest AUROC of {len(val.logits)} validation images against {len(foreign_pick.logits)} "
                f"generated foreign images; Mahalanobis fitted on {len(train.logits)} training images"
            ),
            "candidates": [
                {
                    "name": c["name"],
                    **({"features": c["features"]} if "features" in c else {}),
                    "auroc": round(c["auroc"], 6),
                    "foreign_flagged_at_threshold": round(c["pick_flagged"], 6),
                }
                for c in candidates
            ],
            "rule": "split-conformal rank on the validation split: a new in-distribution image is accepted "
            "with probability >= acceptance, if guarantee_holds (enough validation images)",
            "guarantee_holds": conformal_enough(len(inside["val"]), acceptance),
            "validation": {"n": len(inside["val"]), "accepted": float(inside["val"].mean())},
            "test": {"n": len(inside["test"]), "accepted": test_acceptance},
            "foreign": {
                "n": len(inside["check"]),
                "note": "a second generated set, not the one the score was chosen on; held_out_kinds were in "
                "neither the choice of score nor training",
                "flagged": flagged,
                "held_out_kinds": held_out,
                "held_out_flagged": held_flagged,
                "flagged_or_low_confidence": float((~inside["check"] | check_low).mean())
                if len(check_low)
                else None,
                "flagged_by_kind": by_kind,
            },
        },
    }
    return Analysis(thresholds, report, curves, best["graph"])


def plot_title(min_probability: float) -> str:
    """The operating point, or, where no confidence reached the target (the threshold sits above 1), that none
    did: "≥ 1.000" would read as a threshold some answers meet."""
    if min_probability > 1:
        return "risk–coverage (no confidence reaches the target: every prediction is low)"
    return f"risk–coverage (accept top-1 probability ≥ {min_probability:.3f}: dots)"


def plot_risk_coverage(
    curves: dict[str, Curve], *, min_probability: float, target_precision: float, path: Path
) -> None:
    """Risk (1 - precision) against coverage per split, with the chosen operating point marked."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.5, 4.5), layout="constrained")
    ax = fig.subplots()
    for split, curve in curves.items():
        (line,) = ax.step(curve.coverage, 1 - curve.precision, where="post", label=split)
        keep = curve.thresholds >= min_probability
        if keep.any():
            i = int(np.flatnonzero(keep)[-1])
            ax.plot(curve.coverage[i], 1 - curve.precision[i], "o", color=line.get_color())
    target_risk = 1 - target_precision
    ax.axhline(target_risk, color="grey", linestyle="--", label=f"target risk {target_risk:.0%}")
    highest = max(
        [target_risk] + [float((1 - c.precision).max()) for c in curves.values() if len(c.precision)]
    )
    ax.set(
        title=plot_title(min_probability),
        xlabel="coverage (share of predictions kept)",
        ylabel="risk (share of kept predictions that are wrong)",
        xlim=(0, 1.02),
        ylim=(0, highest + 0.05),
    )
    ax.legend()
    fig.savefig(path, dpi=100)
