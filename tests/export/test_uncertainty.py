"""Thresholds for abstaining and flagging foreign images: the numpy pieces, the graph, one real model."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from export import uncertainty as unc
from runtime import bundle
from training.synthetic import FOREIGN_KINDS, foreign_images


def test_risk_coverage_treats_ties_as_one_threshold() -> None:
    curve = unc.risk_coverage(np.array([0.5, 0.9, 0.8, 0.9]), np.array([1, 1, 1, 0], bool))
    np.testing.assert_array_equal(curve.thresholds, [0.9, 0.8, 0.5])
    np.testing.assert_allclose(curve.coverage, [0.5, 0.75, 1.0])
    np.testing.assert_allclose(curve.precision, [0.5, 2 / 3, 0.75])


CONF = np.array([0.99, 0.95, 0.9, 0.8, 0.7, 0.6])
RIGHT = np.array([1, 1, 1, 1, 0, 0], bool)


@pytest.mark.parametrize(
    ("target", "threshold", "coverage", "precision"),
    [
        pytest.param(0.9, 0.8 - unc.EDGE, 4 / 6, 1.0, id="90%: a hair below 0.8, the last one kept"),
        pytest.param(0.8, 0.7 - unc.EDGE, 5 / 6, 0.8, id="80%: one mistake allowed in five"),
        pytest.param(0.6, 0.6 - unc.EDGE, 1.0, 4 / 6, id="60%: everything"),
        pytest.param(1.0, 0.8 - unc.EDGE, 4 / 6, 1.0, id="100%"),
    ],
)
def test_confidence_threshold_is_the_largest_coverage_meeting_the_target(
    target: float, threshold: float, coverage: float, precision: float
) -> None:
    chosen = unc.confidence_threshold(CONF, RIGHT, target)
    assert chosen == {"min_probability": pytest.approx(threshold), "reached": True}
    at = unc.at_threshold(CONF, RIGHT, chosen["min_probability"])
    assert at["coverage"] == pytest.approx(coverage) and at["precision"] == pytest.approx(precision)


def test_a_served_value_a_little_off_the_validation_value_keeps_its_side() -> None:
    """The runtime compares float32 outputs of the graph: ~1e-6 from export's float64 values either way."""
    conf = np.array([0.9737555553113654, 0.5])
    chosen = unc.confidence_threshold(conf, np.array([True, False]), 0.9)
    assert chosen["min_probability"] < 0.97375554  # the first image, served rounded down, is still confident
    # A value closer than twice that cannot be kept apart once served: both are decided together (here the
    # pair is right half the time, under the target: neither is confident).
    near = unc.confidence_threshold(np.array([0.8, 0.8 - 4e-6]), np.array([True, False]), 0.9)
    assert near == {"min_probability": pytest.approx(1 + unc.EDGE), "reached": False}
    # Distances (lower is familiar): a hair above the last one accepted, relative to its size.
    t = unc.acceptance_threshold(np.array([1.0, 2.0, 3.0]), 0.5, higher_is_familiar=False)
    assert t == pytest.approx(2.0 * (1 + unc.EDGE))
    t = unc.acceptance_threshold(np.array([1.0, 2.0, 77.15365858134166]), 1.0, higher_is_familiar=False)
    assert t > 77.15365858134166 + 1e-4  # accepted even when served a little higher


@pytest.mark.parametrize(
    ("n", "accepted", "enough"),
    [
        pytest.param(39, 38, True, id="39: the 38th of 39 (ceil(40 * 0.95))"),
        pytest.param(40, 39, True, id="40: the 39th of 40 (ceil(41 * 0.95), not ceil(40 * 0.95))"),
        pytest.param(19, 19, True, id="19: the smallest n with the guarantee, accepts all"),
        pytest.param(18, 18, False, id="18: too few, the least familiar is used"),
        pytest.param(5, 5, False, id="5"),
    ],
)
def test_acceptance_threshold_is_the_split_conformal_rank(n: int, accepted: int, enough: bool) -> None:
    distances = np.random.default_rng(n).permutation(np.arange(1.0, n + 1))
    t = unc.acceptance_threshold(distances, 0.95, higher_is_familiar=False)
    assert (distances <= t).sum() == accepted
    similarity = -distances
    t = unc.acceptance_threshold(similarity, 0.95, higher_is_familiar=True)
    assert (similarity >= t).sum() == accepted
    assert unc.conformal_enough(n, 0.95) is enough


def test_values_tied_with_the_last_accepted_one_are_accepted_with_it_and_the_next_stays_out() -> None:
    values = np.array([1.0, 2.0, 2.0, 2.1])  # the 2nd of 4 (ceil(5 * 0.4)), tied with the 3rd
    t = unc.acceptance_threshold(values, 0.4, higher_is_familiar=False)
    assert (values <= t).sum() == 3 and t == pytest.approx(2.0 * (1 + unc.EDGE))
    t = unc.acceptance_threshold(-values, 0.4, higher_is_familiar=True)
    assert (-values >= t).sum() == 3
    # 2.000001 serves as 2.0 give or take float32's error: it is a tie too.
    near = np.array([1.0, 2.0, 2.0, 2.000001])
    assert (near <= unc.acceptance_threshold(near, 0.4, higher_is_familiar=False)).sum() == 4
    # Nothing the other way but a tie: EDGE past it, never exactly on it.
    assert unc.between(2.0, 2.0, higher_is_familiar=False) == pytest.approx(2.0 * (1 + unc.EDGE))


def test_values_float32_cannot_tell_apart_are_decided_together() -> None:
    """At T = 0.05 export saw validation confidences 1 - 6.7e-13 (right) and 1 - 1.26e-12 (wrong): the
    threshold went between them, yet the graph serves both as 1.0: the served decisions were not the measured
    ones."""
    conf = np.array([1 - 6.7e-13, 1 - 1.26e-12, 0.97, 0.9, 0.8])
    right = np.array([True, False, True, True, False])
    served = conf.astype(np.float32).astype(np.float64)
    assert served[0] == served[1] == 1.0
    for target in (0.9, 0.75, 0.5):
        t = unc.confidence_threshold(conf, right, target)["min_probability"]
        np.testing.assert_array_equal(served >= t, conf >= t)
        assert unc.at_threshold(served, right, t) == unc.at_threshold(conf, right, t)
    # The same for a score with a set acceptance (top-1 probability as the out-of-distribution score).
    for acceptance in (0.2, 0.5, 0.9):
        t = unc.acceptance_threshold(conf, acceptance, higher_is_familiar=True)
        np.testing.assert_array_equal(served >= t, conf >= t)
    assert not unc.apart(1.0, 1 - 1e-12) and unc.apart(0.9, 0.8) and not unc.apart(1000.0, 1000.01)


@pytest.mark.parametrize("rate", [0.0, -0.5, 1.5])
def test_rates_outside_0_to_1_are_refused(rate: float) -> None:
    with pytest.raises(ValueError, match="acceptance must be in"):
        unc.acceptance_threshold(np.array([1.0, 2.0, 3.0]), rate, higher_is_familiar=False)
    with pytest.raises(ValueError, match="target precision must be in"):
        unc.confidence_threshold(CONF, RIGHT, rate)


def test_a_target_never_reached_leaves_every_prediction_low() -> None:
    wrong = np.zeros(len(CONF), bool)
    chosen = unc.confidence_threshold(CONF, wrong, 0.5)
    assert chosen["reached"] is False and chosen["min_probability"] > CONF.max()
    assert unc.at_threshold(CONF, wrong, chosen["min_probability"])["coverage"] == 0.0
    # New images more confident than every validation one (up to a probability of 1) are low as well.
    served = np.array([CONF.max() + 0.005, 1.0], dtype=np.float32)
    assert unc.at_threshold(served, np.ones(2, bool), chosen["min_probability"])["coverage"] == 0.0


def test_the_plot_title_says_when_no_confidence_reaches_the_target() -> None:
    """The threshold export sets just above 1 is no operating point: "≥ 1.000" would read as one."""
    assert unc.plot_title(0.84) == "risk–coverage (accept top-1 probability ≥ 0.840: dots)"
    never = "risk–coverage (no confidence reaches the target: every prediction is low)"
    assert unc.plot_title(1.00001) == never


def test_at_threshold_accepts_a_confidence_equal_to_it_as_the_runtime_does() -> None:
    at = unc.at_threshold(CONF, RIGHT, 0.9)  # the runtime's "ok" is >= min_probability
    assert (at["n"], at["coverage"], at["precision"]) == (len(CONF), 0.5, 1.0)
    nothing = unc.at_threshold(CONF, RIGHT, CONF.max() + 1)
    assert (nothing["coverage"], nothing["precision"]) == (0.0, None)
    assert nothing["accuracy_all"] == pytest.approx(RIGHT.mean())


def test_class_means_are_each_class_own() -> None:
    features, labels = np.array([[0.0, 1.0], [2.0, 0.0], [10.0, 10.0], [12.0, 14.0]]), np.array([0, 0, 1, 1])
    means, _ = unc.fit_mahalanobis(features, labels)
    np.testing.assert_allclose(means, [[1.0, 0.5], [11.0, 12.0]])


def test_inputs_that_cannot_make_a_curve_or_a_covariance_are_refused() -> None:
    with pytest.raises(ValueError, match="same length"):
        unc.risk_coverage(np.array([0.9, 0.8]), np.array([True]))
    with pytest.raises(ValueError, match="at least two training images"):
        unc.fit_mahalanobis(np.ones((1, 3)), np.array([0]))
    means, whitening = unc.fit_mahalanobis(np.array([[0.0], [2.0]]), np.array([0, 0]))  # two are enough
    np.testing.assert_allclose((means, whitening), ([[1.0]], [[1.0]]))
    with pytest.raises(ValueError, match="do not vary around their class means"):  # one image per class
        unc.fit_mahalanobis(np.array([[0.0, 1.0], [2.0, 3.0]]), np.array([0, 1]))


def test_softmax_divides_the_logits_by_the_temperature_as_the_graph_does() -> None:
    from scipy.special import softmax

    logits = np.array([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
    np.testing.assert_allclose(unc.softmax(logits, 2.0), softmax(logits / 2.0, axis=1), rtol=1e-12)


def test_auroc_follows_the_direction_of_the_score() -> None:
    inside, outside = np.array([1.0, 2.0, 3.0]), np.array([10.0, 20.0])
    assert unc.auroc(inside, outside, higher_is_familiar=False) == 1.0
    assert unc.auroc(inside, outside, higher_is_familiar=True) == 0.0


def test_mahalanobis_matches_the_textbook_formula() -> None:
    from sklearn.covariance import LedoitWolf

    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], 30)
    features = rng.normal(size=(90, 6)) @ rng.normal(size=(6, 6)) + labels[:, None] * 3.0
    means, whitening = unc.fit_mahalanobis(features, labels)
    centred = features - means[labels]
    precision = np.linalg.inv(LedoitWolf(assume_centered=True).fit(centred).covariance_)
    np.testing.assert_allclose(whitening @ whitening.T, precision, rtol=1e-6, atol=1e-9)
    probe = rng.normal(size=(5, 6)) * 4
    expected = [min((f - m) @ precision @ (f - m) for m in means) for f in probe]
    np.testing.assert_allclose(unc.mahalanobis(probe, means, whitening), expected, rtol=1e-6)


def test_curve_points_are_bounded_and_keep_both_ends() -> None:
    rng = np.random.default_rng(1)
    curve = unc.risk_coverage(rng.random(1000), rng.random(1000) < 0.8)
    points = unc.curve_points(curve)
    assert len(points) == unc.CURVE_POINTS
    assert points[0]["coverage"] == pytest.approx(1 / 1000) and points[-1]["coverage"] == 1.0


def _images(rng: np.random.Generator, n: int, *, far: bool = False, labelled: bool = True) -> unc.Images:
    """Two classes in an 8-d feature space; "far" images sit away from both; logits say nothing about it."""
    labels = rng.integers(0, 2, n)
    centre = np.where(labels[:, None] == 1, 2.0, -2.0) * np.ones(8)
    pool = centre + rng.normal(size=(n, 8)) + (12.0 if far else 0.0)
    logits = np.stack([-labels * 3.0, labels * 3.0], axis=1) + rng.normal(size=(n, 2))
    return unc.Images(logits, {"skin_pool_0": pool}, labels if labelled else None)


def test_analyse_chooses_the_feature_score_when_only_features_separate_foreign_images() -> None:
    rng = np.random.default_rng(2)
    check = _images(rng, 60, far=True, labelled=False)
    check.kinds = ["solid", "text"] * 30
    result = unc.analyse(
        temperature=1.0,
        train=_images(rng, 200),
        val=_images(rng, 100),
        test=_images(rng, 100),
        foreign_pick=_images(rng, 60, far=True, labelled=False),
        foreign_check=check,
        pool_descriptions={"skin_pool_0": "stage 0"},
    )
    ood = result.thresholds["ood"]
    assert ood["score"] == "mahalanobis" and ood["features"] == "stage 0" and "max_score" in ood
    assert result.graph_score is not None and result.graph_score[0] == "skin_pool_0"
    assert ood["test_acceptance"] >= 0.9 and ood["foreign_flagged"] == 1.0
    report = result.report
    assert [c["name"] for c in report["ood"]["candidates"]] == [
        "mahalanobis:skin_pool_0",
        "max_prob",
        "max_logit",
        "energy",
    ]
    assert report["ood"]["guarantee_holds"] is True
    assert report["ood"]["foreign"]["flagged_by_kind"] == {"solid": 1.0, "text": 1.0}
    assert report["summary"]["foreign_flagged"] == 1.0
    conf = result.thresholds["confidence"]
    assert conf["reached_on_validation"] and conf["val_precision"] >= 0.9
    assert set(result.curves) == {"validation", "test"}
    json.dumps(result.thresholds), json.dumps(report)  # both go into JSON as they are


def test_analyse_keeps_a_logit_score_when_it_separates_as_well() -> None:
    rng = np.random.default_rng(3)

    def flat(n: int) -> unc.Images:  # foreign images get flat logits and features like everyone's
        images = _images(rng, n, labelled=False)
        images.logits = rng.normal(scale=0.1, size=(n, 2))
        return images

    result = unc.analyse(
        temperature=1.0,
        train=_images(rng, 200),
        val=_images(rng, 100),
        test=_images(rng, 100),
        foreign_pick=flat(60),
        foreign_check=flat(60),
        pool_descriptions={"skin_pool_0": "stage 0"},
    )
    assert result.thresholds["ood"]["score"] in ("max_prob", "max_logit", "energy")
    assert result.graph_score is None


def test_analyse_breaks_auroc_ties_by_the_foreign_images_flagged_then_by_the_later_candidate(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rng = np.random.default_rng(4)
    train, val, test = _images(rng, 200), _images(rng, 100), _images(rng, 100)

    def chosen(pick: unc.Images) -> tuple[str, list[dict[str, Any]]]:
        result = unc.analyse(
            temperature=1.0,
            train=train,
            val=val,
            test=test,
            foreign_pick=pick,
            foreign_check=pick,
            pool_descriptions={"skin_pool_0": "stage 0"},
        )
        return result.thresholds["ood"]["score"], result.report["ood"]["candidates"]

    # The validation images as the foreign ones: every AUROC 0.5, every score flags the same 4 of 100.
    score, candidates = chosen(unc.Images(val.logits, val.pools))
    assert {round(c["auroc"], 2) for c in candidates} == {0.5}
    assert {c["foreign_flagged_at_threshold"] for c in candidates} == {0.04}
    assert score == "energy"  # the last in the list
    # The same AUROC for all, but only the features flag the far images: the one flagging more is kept.
    monkeypatch.setattr(unc, "auroc", lambda *args, **kwargs: 0.9)
    score, candidates = chosen(_images(rng, 60, far=True, labelled=False))
    assert candidates[0]["foreign_flagged_at_threshold"] == 1.0
    assert max(c["foreign_flagged_at_threshold"] for c in candidates[1:]) < 0.5
    assert score == "mahalanobis"


def test_analyse_reports_held_out_kinds_and_foreign_images_flagged_or_of_low_confidence() -> None:
    rng = np.random.default_rng(5)
    # Far images with confident logits (the feature score flags them) and near ones with flat logits (only
    # low confidence tells them); the near ones are of a kind the score was not chosen on.
    far, near = _images(rng, 30, far=True, labelled=False), _images(rng, 30, labelled=False)
    near.logits = rng.normal(scale=0.1, size=(30, 2))
    check = unc.Images(
        np.concatenate([far.logits, near.logits]),
        {"skin_pool_0": np.concatenate([far.pools["skin_pool_0"], near.pools["skin_pool_0"]])},
        kinds=["solid", "text"] * 15 + ["stripes"] * 30,
    )
    pick = _images(rng, 60, far=True, labelled=False)
    pick.kinds = ["solid", "text"] * 30
    result = unc.analyse(
        temperature=1.0,
        train=_images(rng, 200),
        val=_images(rng, 100),
        test=_images(rng, 100),
        foreign_pick=pick,
        foreign_check=check,
        pool_descriptions={"skin_pool_0": "stage 0"},
    )
    assert result.graph_score is not None
    source, means, whitening = result.graph_score
    flagged = unc.mahalanobis(check.pools[source], means, whitening) > result.thresholds["ood"]["max_score"]
    low = unc.softmax(check.logits, 1.0).max(axis=1) < result.thresholds["confidence"]["min_probability"]
    assert flagged[:30].all() and low[30:].all() and not low[:30].all()
    foreign = result.report["ood"]["foreign"]
    assert foreign["held_out_kinds"] == ["stripes"]
    assert foreign["held_out_flagged"] == pytest.approx(flagged[30:].mean())
    assert foreign["flagged_or_low_confidence"] == pytest.approx((flagged | low).mean()) == 1.0


def test_foreign_images_are_deterministic_and_of_every_kind() -> None:
    first = foreign_images(12, seed=4, size=(40, 60))
    again = foreign_images(12, seed=4, size=(40, 60))
    assert [k for k, _ in first] == list(FOREIGN_KINDS) * 2
    assert all(a.shape == (40, 60, 3) and a.dtype == np.uint8 for _, a in first)
    assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(first, again, strict=True))
    text = first[0][1]
    assert text.std() > 10  # words were drawn on the page
    assert not np.array_equal(first[1][1], foreign_images(2, seed=5, size=(40, 60))[1][1])
    with pytest.raises(ValueError, match="unknown kind"):
        foreign_images(1, kinds=["selfie"])


def _core_graph() -> Any:
    """A stand-in core graph on 4x4 images: pooled colour means as the chosen "stage", a second stage nobody
    uses, a linear head for the logits."""
    from onnx import TensorProto, helper, numpy_helper

    head = np.array([[1.0, -1.0], [0.5, 0.5], [-1.0, 1.0]], np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["image"], ["f"], to=TensorProto.FLOAT),
            helper.make_node("ReduceMean", ["f", "axes"], ["skin_pool_0"], keepdims=0),
            helper.make_node("ReduceMax", ["f", "axes"], ["skin_pool_1"], keepdims=0),
            helper.make_node("MatMul", ["skin_pool_0", "head"], ["logits"]),
        ],
        "core",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, ["batch", 4, 4, 3])],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2]),
            helper.make_tensor_value_info("skin_pool_0", TensorProto.FLOAT, ["batch", 3]),
            helper.make_tensor_value_info("skin_pool_1", TensorProto.FLOAT, ["batch", 3]),
        ],
        initializer=[
            numpy_helper.from_array(np.array([1, 2], np.int64), "axes"),
            numpy_helper.from_array(head, "head"),
        ],
    )
    # opset 18's IR version: onnxruntime 1.20, the runtime's floor, refuses newer onnx's own (IR 11 and up)
    return helper.make_model_gen_version(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_mahalanobis_in_the_graph_matches_numpy_and_the_pooled_outputs_go() -> None:
    import onnx

    from export import onnx as export_onnx
    from export.infer import session

    core = _core_graph()
    rng = np.random.default_rng(6)
    pools = rng.uniform(0, 255, (40, 3))
    means, whitening = unc.fit_mahalanobis(pools, rng.integers(0, 2, 40))
    final = export_onnx.add_temperature(
        export_onnx.add_mahalanobis(core, "skin_pool_0", means, whitening), 2.0
    )
    assert [o.name for o in final.graph.output] == [
        bundle.PROBS_OUTPUT,
        bundle.LOGITS_OUTPUT,
        bundle.OOD_OUTPUT,
    ]
    assert "ReduceMax" not in {n.op_type for n in final.graph.node}  # the unused stage is pruned
    onnx.checker.check_model(final, full_check=True)
    images = rng.integers(0, 256, (5, 4, 4, 3), dtype=np.uint8)
    probs, score = session(export_onnx.to_bytes(final)).run(
        [bundle.PROBS_OUTPUT, bundle.OOD_OUTPUT], {bundle.INPUT_NAME: images}
    )
    expected = unc.mahalanobis(images.reshape(5, 16, 3).mean(axis=1), means, whitening)
    np.testing.assert_allclose(score, expected, rtol=1e-4)
    assert probs.shape == (5, 2) and score.shape == (5,)


def test_the_export_stops_when_the_graphs_ood_score_is_off_the_distances_of_its_threshold(
    dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from export import onnx as export_onnx
    from export.bundle import OOD_GRAPH_TOLERANCE, _check_graph_score
    from export.errors import ExportError
    from export.infer import run_many, session

    core = _core_graph()
    files = sorted(dataset.glob("train/*/*"))[:12]
    view: dict[str, Any] = {"size": (4, 4), "resize": "stretch", "resize_filter": "bilinear"}
    out, kept = run_many(session(export_onnx.to_bytes(core)), files, ["logits", "skin_pool_0"], **view)
    assert kept == list(range(len(files)))
    val = unc.Images(out["logits"], {"skin_pool_0": out["skin_pool_0"]})
    means, whitening = unc.fit_mahalanobis(val.pools["skin_pool_0"], np.arange(len(files)) % 2)
    score = ("skin_pool_0", means, whitening)
    fp32 = export_onnx.to_bytes(export_onnx.add_temperature(export_onnx.add_mahalanobis(core, *score), 1.0))
    check = _check_graph_score(fp32, files, val, score, view)
    assert check["n"] == len(files) and check["max_rel_diff"] < OOD_GRAPH_TOLERANCE
    # Thresholds set on other distances than the graph computes (here: twice them): the export stops.
    real = unc.mahalanobis
    monkeypatch.setattr(unc, "mahalanobis", lambda *args: 2 * real(*args))
    with pytest.raises(ExportError, match="the graph's ood_score is off the distances"):
        _check_graph_score(fp32, files, val, score, view)


# ---- one real model, end to end


CLASSES = ["Acne", "Moles", "Psoriasis", "Vitiligo"]
ACCEPTED_AT_LEAST = 0.90  # held-out images of the training classes accepted as in distribution
FLAGGED_AT_LEAST = 0.80  # generated foreign images (text, solid colours, gradients, grey textures) flagged


@pytest.fixture(scope="module")
def trained_bundle(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A tiny timm model trained 8 epochs on 4 generated classes (30 images each, 30 % for validation)."""
    import torch

    from export.bundle import export_bundle
    from tests.training.helpers import TINY
    from training.loop import train
    from training.synthetic import generate

    work = tmp_path_factory.mktemp("uncertainty")
    data = generate(work / "data", class_names=CLASSES, train_per_class=30, test_per_class=8, seed=0)
    # One thread: on a small shared machine two OpenMP threads make this tiny model ~10x slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run = train(
            **TINY,
            data=str(data),
            out=str(work / "run"),
            epochs=8,
            val_fraction=0.3,
            early_stop=0,
            scheduler="cosine",
            warmup_epochs=0.5,
            seed=0,
        )
        yield export_bundle(run / "best.pt", work / "bundle", data=data, int8="off", parity_images=4)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow
def test_exported_thresholds_accept_held_out_images_and_flag_foreign_ones(trained_bundle: Path) -> None:
    report = json.loads((trained_bundle / bundle.REPORT_FILE).read_text())
    summary = report["uncertainty"]["summary"]
    # The two figures, on the test split and on a generated foreign set the score was not chosen on.
    assert summary["test_in_distribution_accepted"] >= ACCEPTED_AT_LEAST
    assert summary["foreign_flagged"] >= FLAGGED_AT_LEAST
    # Two kinds were kept out of the choice of score as well: the flag must carry over to them.
    foreign = report["uncertainty"]["ood"]["foreign"]
    assert foreign["held_out_kinds"] == ["stripes", "shapes"]
    assert summary["foreign_held_out_flagged"] == foreign["held_out_flagged"] >= FLAGGED_AT_LEAST
    assert summary["test_confident_coverage"] > 0 and summary["test_confident_precision"] is not None
    ood = report["uncertainty"]["ood"]
    assert ood["guarantee_holds"] and ood["graph_check"]["max_rel_diff"] < 1e-3
    assert (trained_bundle / unc.PLOT_FILE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    from runtime.engine import Engine

    engine = Engine(trained_bundle, threads=1)
    assert set(engine.meta.thresholds) == {"confidence", "ood"}
    assert engine.meta.thresholds["ood"]["score"] == ood["score"]
    assert engine.info()["uncertainty"]["fields"] == ["confidence", "in_distribution", "ood_score"]


@pytest.mark.slow
def test_the_api_flags_foreign_uploads_of_the_trained_model(trained_bundle: Path, tmp_path: Path) -> None:
    from PIL import Image
    from starlette.testclient import TestClient

    from runtime.app import create_app
    from runtime.settings import Settings
    from training.synthetic import generate

    # Images none of the export's choices saw: new seeds for both the classes and the foreign kinds.
    held_out = sorted(
        (generate(tmp_path, class_names=CLASSES, train_per_class=0, test_per_class=10, seed=7)).glob(
            "test/*/*"
        )
    )
    foreign = []
    for _, array in foreign_images(36, seed=3, size=(96, 128)):
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="PNG")
        foreign.append(buffer.getvalue())

    def verdicts(client: TestClient, uploads: list[tuple[str, bytes]]) -> list[dict[str, Any]]:
        files = [("files", (name, data, "application/octet-stream")) for name, data in uploads]
        return [
            r
            for chunk in (files[i : i + 8] for i in range(0, len(files), 8))
            for r in client.post("/api/predict/batch?heatmap=false", files=chunk).json()["results"]
        ]

    with TestClient(create_app(Settings(bundle=str(trained_bundle), threads=1))) as client:
        familiar = verdicts(client, [(p.name, p.read_bytes()) for p in held_out])
        strange = verdicts(client, [(f"foreign-{i}.png", data) for i, data in enumerate(foreign)])
    accepted = np.mean([r["in_distribution"] for r in familiar])
    flagged = np.mean([not r["in_distribution"] for r in strange])
    assert accepted >= ACCEPTED_AT_LEAST, f"only {accepted:.0%} of held-out images accepted"
    assert flagged >= FLAGGED_AT_LEAST, f"only {flagged:.0%} of foreign images flagged"
    assert all(
        r["confidence"] in ("ok", "low") and isinstance(r["ood_score"], float) for r in familiar + strange
    )


@pytest.mark.parametrize("flag", ["--target-precision", "--ood-acceptance"])
def test_cli_refuses_rates_outside_0_to_1_in_one_line(
    flag: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from export import cli

    assert cli.main([str(tmp_path / "best.pt"), "--out", str(tmp_path / "b"), flag, "1.5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "must be above 0 and at most 1" in err[0]
    assert not (tmp_path / "b").exists()
