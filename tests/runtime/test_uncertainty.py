"""Uncertainty fields of predictions: present exactly when the bundle has thresholds, computed from them."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from starlette.testclient import TestClient

from runtime import bundle
from runtime.app import create_app
from runtime.settings import Settings
from runtime.uncertainty import SCORES, Policy
from tests.bundle_factory import make_bundle
from tests.images import COLOURS, encode

# In the tiny graph red is class 0 with a logit of 6.6 (energy -6.61, top probability 0.989); mid grey gets
# logits near 0 (energy -2.42, top probability 0.49). Both thresholds sit between the two.
THRESHOLDS = {
    "confidence": {"min_probability": 0.9, "target_precision": 0.9},
    "ood": {"score": "energy", "max_score": -5.0, "acceptance": 0.95},
}
GREY = (128, 128, 128)


def _client(directory: Path) -> TestClient:
    return TestClient(create_app(Settings(bundle=str(directory), threads=1)), raise_server_exceptions=False)


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    directory = make_bundle(tmp_path_factory.mktemp("thresholds"), with_logits=True, thresholds=THRESHOLDS)
    with _client(directory) as c:
        yield c


def _png(colour: str | tuple[int, int, int]) -> tuple[str, bytes, str]:
    from PIL import Image

    rgb = COLOURS[colour] if isinstance(colour, str) else colour
    return ("x.png", encode(Image.new("RGB", (96, 80), rgb), "PNG"), "image/png")


def test_confident_familiar_image_is_ok_and_in_distribution(client: TestClient) -> None:
    body = client.post("/api/predict", files={"file": _png("red")}).json()
    assert body["primary"]["label"] == "Acne"
    assert body["confidence"] == "ok" and body["in_distribution"] is True
    assert body["ood_score"] == pytest.approx(-6.61, abs=0.01)


def test_flat_grey_image_is_low_confidence_and_out_of_distribution(client: TestClient) -> None:
    body = client.post("/api/predict", files={"file": _png(GREY)}).json()
    assert body["confidence"] == "low" and body["in_distribution"] is False
    assert body["ood_score"] == pytest.approx(-2.42, abs=0.01)
    assert len(body["top"]) == 5  # the classes still come back; the flags say how far to trust them


def test_batch_results_carry_their_own_flags(client: TestClient) -> None:
    files = [
        ("files", _png("red")),
        ("files", ("bad.png", b"not an image", "image/png")),
        ("files", _png(GREY)),
    ]
    results = client.post("/api/predict/batch", files=files).json()["results"]
    assert [r.get("confidence") for r in results] == ["ok", None, "low"]
    assert [r.get("in_distribution") for r in results] == [True, None, False]
    assert "error" in results[1]


def test_info_says_which_fields_come_and_from_which_thresholds(client: TestClient) -> None:
    info = client.get("/api/info").json()
    unc = info["uncertainty"]
    assert unc["confidence"] is True and unc["ood"] is True
    assert unc["fields"] == ["confidence", "in_distribution", "ood_score"]
    assert unc["min_probability"] == 0.9
    assert unc["ood_score"]["name"] == "energy" and unc["ood_score"]["max_score"] == -5.0
    assert "notes" not in unc
    assert info["thresholds"] == THRESHOLDS


def test_without_thresholds_the_fields_are_absent_and_info_says_so(tiny_bundle: Path) -> None:
    with _client(tiny_bundle) as c:
        body = c.post("/api/predict", files={"file": _png(GREY)}).json()
        unc = c.get("/api/info").json()["uncertainty"]
    assert not {"confidence", "in_distribution", "ood_score"} & set(body)
    assert unc["confidence"] is False and unc["ood"] is False and unc["fields"] == []
    assert "no decision thresholds" in unc["notes"][0]


def test_a_score_the_graph_cannot_feed_is_left_out_with_a_note(
    tmp_path: Path, runtime_log: pytest.LogCaptureFixture
) -> None:
    # Energy needs the logits; this graph only has probabilities: confidence still works, OOD is left out.
    directory = make_bundle(tmp_path, with_logits=False, thresholds=THRESHOLDS)
    with runtime_log.at_level(logging.WARNING, logger="runtime"), _client(directory) as c:
        body = c.post("/api/predict", files={"file": _png(GREY)}).json()
        unc = c.get("/api/info").json()["uncertainty"]
    assert body["confidence"] == "low" and "in_distribution" not in body
    assert unc["confidence"] is True and unc["ood"] is False
    assert "'logits'" in unc["notes"][0]
    assert any("'logits'" in r.getMessage() for r in runtime_log.records)


def test_openapi_documents_the_fields(client: TestClient) -> None:
    props = client.get("/api/openapi.json").json()["components"]["schemas"]["Prediction"]["properties"]
    assert props["confidence"]["enum"] == ["ok", "low"]
    assert props["in_distribution"]["type"] == "boolean"
    assert "ood_score" in props


OUTPUTS = {
    "probabilities": np.array([[0.95, 0.05], [0.55, 0.45]]),
    "logits": np.array([[4.0, 1.0], [0.2, 0.0]]),
}


@pytest.mark.parametrize(
    ("thresholds", "fields", "note"),
    [
        pytest.param({}, [{}, {}], "no decision thresholds", id="none"),
        pytest.param(
            {"confidence": {"min_probability": 0.9}},
            [{"confidence": "ok"}, {"confidence": "low"}],
            None,
            id="confidence-only",
        ),
        pytest.param(
            {"confidence": {"min_probability": 0.55}},
            [{"confidence": "ok"}, {"confidence": "ok"}],
            None,
            id="confidence-inclusive",  # "low" only under min_probability (README)
        ),
        pytest.param(
            {"confidence": {"min_probability": "high"}},
            [{}, {}],
            "'min_probability' is not a number",
            id="bad",
        ),
        # JSON NaN / Infinity parse as floats; used, they would make every prediction "low".
        *(
            pytest.param(
                {"confidence": {"min_probability": value}},
                [{}, {}],
                "'min_probability' is not a number",
                id=f"confidence-{value}",
            )
            for value in (float("nan"), float("inf"), True)
        ),
        pytest.param({"ood": {"score": "knn", "max_score": 1}}, [{}, {}], "'knn' is not known", id="unknown"),
        pytest.param({"ood": {"score": "energy", "min_score": 1}}, [{}, {}], "'max_score'", id="wrong-side"),
        pytest.param({"ood": {"score": "energy", "max_score": True}}, [{}, {}], "'max_score'", id="bool"),
        pytest.param(
            {"ood": {"score": "max_logit", "min_score": 1.0}},
            [{"in_distribution": True, "ood_score": 4.0}, {"in_distribution": False, "ood_score": 0.2}],
            None,
            id="max-logit",
        ),
        pytest.param(
            {"ood": {"score": "max_prob", "min_score": 0.55}},
            [{"in_distribution": True, "ood_score": 0.95}, {"in_distribution": True, "ood_score": 0.55}],
            None,
            id="max-prob-inclusive",
        ),
    ],
)
def test_policy_reads_thresholds_and_judges_rows(
    thresholds: dict[str, Any], fields: list[dict[str, Any]], note: str | None
) -> None:
    policy = Policy.from_thresholds(thresholds, outputs={"probabilities", "logits"})
    assert policy.judge(OUTPUTS) == fields
    notes = policy.describe().get("notes", [])
    assert (note is None and notes == []) or (note is not None and note in notes[0])


def test_energy_is_minus_logsumexp_and_mahalanobis_reads_the_graph_output() -> None:
    logits = np.array([[1000.0, 1000.0], [0.0, np.log(3.0)]])  # large values must not overflow
    energy = SCORES["energy"].compute({"logits": logits})
    np.testing.assert_allclose(energy, [-(1000 + np.log(2)), -np.log(4)])
    assert SCORES["mahalanobis"].needs == bundle.OOD_OUTPUT
    policy = Policy.from_thresholds(
        {"ood": {"score": "mahalanobis", "max_score": 10.0}}, outputs={"ood_score"}
    )
    assert policy.needs == ["ood_score"]
    rows = policy.judge({"probabilities": OUTPUTS["probabilities"], "ood_score": np.array([3.0, np.nan])})
    # A score that is not a number is never "in distribution", and stays valid JSON.
    assert rows == [
        {"in_distribution": True, "ood_score": 3.0},
        {"in_distribution": False, "ood_score": None},
    ]


def test_policy_needs_nothing_extra_for_max_prob() -> None:
    policy = Policy.from_thresholds(
        {"ood": {"score": "max_prob", "min_score": 0.5}}, outputs={"probabilities"}
    )
    assert policy.needs == [] and dataclasses.asdict(policy)["threshold"] == 0.5


def test_a_max_score_is_inclusive_and_info_names_each_side() -> None:
    policy = Policy.from_thresholds(
        {"ood": {"score": "mahalanobis", "max_score": 10.0}}, outputs={"ood_score"}
    )
    rows = policy.judge({"probabilities": OUTPUTS["probabilities"], "ood_score": np.array([10.0, 10.5])})
    assert [row["in_distribution"] for row in rows] == [True, False]  # "past the threshold" is out (README)
    assert policy.describe()["ood_score"]["in_distribution_when"] == "<= 10.0"
    higher = Policy.from_thresholds(
        {"ood": {"score": "max_prob", "min_score": 0.5}}, outputs={"probabilities"}
    )
    assert higher.describe()["ood_score"]["in_distribution_when"] == ">= 0.5"
